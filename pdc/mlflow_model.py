"""The model set as an MLflow pyfunc model: ``mlflow.pyfunc.load_model(uri).predict(images)``.

An edge module like :mod:`pdc.tracking` (it imports MLflow); the codec core never imports it.

    model = mlflow.pyfunc.load_model("models:/corrdiff@champion")
    out = model.predict(images, params={"rate": 0, "mode": "corrdiff"})
    out["reconstruction"]   # (N, H, W, 3) uint8, what the decoder of each written stream returns
    out["bpp"]              # (N,) float64, 8 × stream bytes / pixels

``images`` is a uint8 array (N, H, W, 3) (one size per call) or a list of (H, W, 3) arrays. The model set
travels as the artifact ``model_set`` (the same directory ``pdc compress --model`` reads); the model is
logged "from code" (:mod:`pdc.mlflow_entry`), so loading it unpickles nothing.
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc
import numpy as np

ARTIFACT = "model_set"
PARAMS = {"rate": 0, "mode": "corrdiff", "seed": 0}


def signature():
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ParamSchema, ParamSpec, Schema, TensorSpec

    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))]),
        outputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3), "reconstruction"),
                        TensorSpec(np.dtype(np.float64), (-1,), "bpp")]),
        params=ParamSchema([ParamSpec("rate", "long", 0), ParamSpec("mode", "string", "corrdiff"),
                            ParamSpec("seed", "long", 0)]),
    )


class CorrDiffPyfunc(mlflow.pyfunc.PythonModel):
    """Compress, write and decode each image with one rate point of the model set."""

    def load_context(self, context) -> None:
        from pdc.models.package import rate_packages

        self.members = rate_packages(context.artifacts[ARTIFACT])
        self._loaded: dict[int, Any] = {}

    def _model(self, rate: int):
        from pdc.errors import ModelPackageError
        from pdc.models.package import load_package

        if not 0 <= rate < len(self.members):
            raise ModelPackageError(f"rate {rate} out of range (the set has {len(self.members)} rate points)")
        if rate not in self._loaded:
            self._loaded[rate] = load_package(self.members[rate])
        return self._loaded[rate]

    def predict(self, context, model_input, params: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
        from pdc.bitstream import Mode
        from pdc.codec import compress, decompress
        from pdc.imageio import tensor_to_uint8
        from pdc.metrics import bpp

        p = {**PARAMS, **(params or {})}
        model, mode = self._model(int(p["rate"])), Mode.parse(str(p["mode"]))
        recs, rates = [], []
        for img in model_input:
            img = np.ascontiguousarray(np.asarray(img, dtype=np.uint8))
            data = compress(model, img, mode=mode, seed=int(p["seed"])).data
            recs.append(tensor_to_uint8(decompress(model, data)))
            rates.append(bpp(len(data), img.shape[0], img.shape[1]))
        return {"reconstruction": np.stack(recs), "bpp": np.asarray(rates, dtype=np.float64)}


def log_model_set(model_set, name: str = "corrdiff"):
    """Log ``model_set`` as a pyfunc model in the active run; returns MLflow's ``ModelInfo``."""
    from pathlib import Path

    return mlflow.pyfunc.log_model(
        name=name,
        python_model=str(Path(__file__).with_name("mlflow_entry.py")),  # model from code: no pickle
        artifacts={ARTIFACT: str(Path(model_set).resolve())},
        signature=signature(),
    )
