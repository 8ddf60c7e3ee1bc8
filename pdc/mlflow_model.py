"""The model set as an MLflow pyfunc model: ``mlflow.pyfunc.load_model(uri).predict(images)`` and
``mlflow models serve``.

An edge module like :mod:`pdc.tracking` (it imports MLflow); the codec core never imports it.

    model = mlflow.pyfunc.load_model("models:/corrdiff@champion")
    out = model.predict(image, params={"rate": 0, "mode": "corrdiff"})
    out["reconstruction"]   # (N, H, W, 3) uint8: what `pdc decompress` makes of each stream
    out["bpp"]              # (N,) float64: 8 × stream bytes / pixels
    out["stream"]           # (N,) bytes: the .pdc files (base64 strings in a served JSON answer)

``image`` is one RGB image (H, W, 3), a batch (N, H, W, 3), or images of several sizes as a 1-D object
array of (H, W, 3) arrays (a JSON list of images when served); uint8 values (any integer type holding
0..255; a served request sends them as JSON integers). Served::

    mlflow models serve -m models:/corrdiff@champion --env-manager local -p 5001
    curl -H 'Content-Type: application/json' -d '{"inputs": [[[0, 0, 0], ...]], "params": {"rate": 1}}' \\
        http://127.0.0.1:5001/invocations      # {"predictions": {"reconstruction": ..., "bpp": ..., "stream": ...}}

A request that is no image answers HTTP 400 with one line (the ``message`` of the JSON error), and the
server goes on serving.

What the logged model holds: the model set (artifact ``model_set``, the directory ``pdc compress --model``
reads), the ``pdc`` wheel of the code that logged it (artifact ``pdc_wheel``, see :mod:`pdc.distribution`)
with ``requirements.txt`` pointing at that file, constraints pinning the logging environment's versions
of pdc's dependencies, an input example, and a signature. The model is logged "from code"
(:mod:`pdc.mlflow_entry`), so loading it unpickles nothing. It runs on CUDA when there is a GPU
(``model_config={"device": "cpu"}`` at load time, or ``CUDA_VISIBLE_DEVICES=``, keeps it on the CPU); a
stream decodes on the same device class that wrote it (README, Devices).

The input signature is a ragged tensor (``object``, shape (-1,)): MLflow checks tensor ranks strictly, and
one signature could not admit both (H, W, 3) and (N, H, W, 3); :func:`as_images` checks shape, type and
range instead, with errors that name the problem.
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

ARTIFACT = "model_set"
WHEEL = "pdc_wheel"
PARAMS = {"rate": 0, "mode": "corrdiff", "seed": 0}
#: Load-time settings (``mlflow.pyfunc.load_model(uri, model_config={...})``).
CONFIG = {"device": "auto", "max_pixels": 16_000_000}


class RequestError(MlflowException):
    """A request the model cannot take: HTTP 400 whose message is this one line.

    MLflow's scoring server rewrites the message of an exception raised by ``predict`` into "Failed to
    predict data '<the whole request>'. \\nError: …"; a request error keeps the line it was raised with.
    """

    def __init__(self, message: str):
        self._line = " ".join(str(message).split())
        super().__init__(self._line, error_code=INVALID_PARAMETER_VALUE)

    @property
    def message(self) -> str:
        return self._line

    @message.setter
    def message(self, value: str) -> None:  # the server's rewrite (see the class docstring) is dropped
        pass


def signature():
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ParamSchema, ParamSpec, Schema, TensorSpec

    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(object), (-1,))]),  # (H, W, 3), (N, H, W, 3) or a list: see as_images
        outputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3), "reconstruction"),
                        TensorSpec(np.dtype(np.float64), (-1,), "bpp"),
                        TensorSpec(np.dtype(object), (-1,), "stream")]),
        params=ParamSchema([ParamSpec("rate", "long", PARAMS["rate"]), ParamSpec("mode", "string", PARAMS["mode"]),
                            ParamSpec("seed", "long", PARAMS["seed"])]),
    )


def input_example() -> np.ndarray:
    """A (1, 24, 32, 3) uint8 batch: smooth colour ramps with an edge (small: MLflow runs it at log time)."""
    h, w = 24, 32
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255 // (w - 1), yy * 255 // (h - 1), np.where(xx + yy < (h + w) // 2, 40, 210)], axis=-1)
    return img.astype(np.uint8)[None]


def _image(a: Any, max_pixels: int) -> np.ndarray:
    try:
        arr = np.asarray(a)
        if arr.dtype == object:
            arr = np.asarray(arr.tolist())
    except (ValueError, TypeError):
        raise RequestError("expected an RGB image: nested lists of integers shaped (H, W, 3)") from None
    if arr.ndim != 3 or arr.shape[-1] != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise RequestError(f"expected an RGB image shaped (H, W, 3) or a batch (N, H, W, 3), got shape {arr.shape}")
    if arr.dtype.kind not in "ui":
        raise RequestError(f"expected uint8 pixel values (integers 0..255), got {arr.dtype.name} values")
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise RequestError(f"pixel values must lie in 0..255, got {arr.min()}..{arr.max()}")
    if arr.shape[0] * arr.shape[1] > max_pixels:
        raise RequestError(f"{arr.shape[1]}x{arr.shape[0]} exceeds the server's limit of {max_pixels} pixels")
    return np.ascontiguousarray(arr, dtype=np.uint8)


def as_images(model_input: Any, max_pixels: int = CONFIG["max_pixels"]) -> list[np.ndarray]:
    """The (H, W, 3) uint8 images of a request: one image, a batch, or a list of images (sizes may differ).
    Anything else raises :class:`RequestError` with one line."""
    if isinstance(model_input, (list, tuple)):
        items: list[Any] = list(model_input)
    elif isinstance(model_input, np.ndarray):
        arr = model_input
        if arr.dtype == object and arr.ndim >= 3:  # a served request: JSON numbers in an object tensor
            try:
                arr = np.asarray(arr.tolist())
            except (ValueError, TypeError):
                raise RequestError("expected an RGB image: nested lists of integers shaped (H, W, 3)") from None
        if arr.ndim == 3:
            items = [arr]
        elif arr.ndim == 4 or (arr.ndim == 1 and arr.dtype == object):
            items = list(arr)
        else:
            what = f"shape {arr.shape}" if arr.ndim else f"a single {type(arr.item()).__name__}"
            raise RequestError(f"expected an RGB image shaped (H, W, 3) or a batch (N, H, W, 3), got {what}")
    else:
        raise RequestError(f"expected an RGB image array (H, W, 3) or (N, H, W, 3), got {type(model_input).__name__}")
    if not items:
        raise RequestError("expected at least one image, got none")
    return [_image(a, max_pixels) for a in items]


class CorrDiffPyfunc(mlflow.pyfunc.PythonModel):
    """Compress, write and decode each image with one rate point of the model set."""

    def load_context(self, context) -> None:
        from pdc.devices import codec_device
        from pdc.models.package import rate_packages

        config = {**CONFIG, **(getattr(context, "model_config", None) or {})}
        self.device = codec_device(str(config["device"]))
        self.max_pixels = int(config["max_pixels"])
        self.members = rate_packages(context.artifacts[ARTIFACT])
        self._loaded: dict[int, Any] = {}

    def _model(self, rate: int):
        from pdc.models.package import load_package

        if not 0 <= rate < len(self.members):
            raise RequestError(f"rate {rate} out of range (the set has {len(self.members)} rate points)")
        if rate not in self._loaded:
            self._loaded[rate] = load_package(self.members[rate]).to(self.device)
        return self._loaded[rate]

    def predict(self, context, model_input, params: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
        from pdc.bitstream import Mode
        from pdc.codec import compress, decompress
        from pdc.imageio import tensor_to_uint8
        from pdc.metrics import bpp

        p = {**PARAMS, **(params or {})}
        try:
            mode = Mode.parse(str(p["mode"]))
        except ValueError as exc:
            raise RequestError(str(exc)) from None
        images = as_images(model_input, getattr(self, "max_pixels", CONFIG["max_pixels"]))
        model = self._model(int(p["rate"]))
        recs, rates, streams = [], [], []
        for img in images:
            data = compress(model, img, mode=mode, seed=int(p["seed"])).data
            recs.append(tensor_to_uint8(decompress(model, data)))  # what any decoder of the stream returns
            rates.append(bpp(len(data), img.shape[0], img.shape[1]))
            streams.append(data)
        same = len({r.shape for r in recs}) == 1
        return {"reconstruction": np.stack(recs) if same else _objects(recs),
                "bpp": np.asarray(rates, dtype=np.float64), "stream": _objects(streams)}


def _objects(items: list[Any]) -> np.ndarray:
    """A 1-D object array of ``items`` (numpy would otherwise stack equal-shaped arrays)."""
    out = np.empty(len(items), dtype=object)
    for i, item in enumerate(items):
        out[i] = item
    return out


def _runtime_pins(wheel) -> list[str]:
    """``name==version`` in this environment of every core requirement of ``wheel`` (pip constraints)."""
    import re
    import zipfile
    from email.parser import Parser
    from importlib import metadata

    from packaging.requirements import Requirement

    with zipfile.ZipFile(wheel) as z:
        meta = Parser().parsestr(z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode())
    pins = []
    for line in meta.get_all("Requires-Dist") or []:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue  # an extra's requirement
        try:
            pins.append(f"{req.name}=={metadata.version(req.name)}")
        except metadata.PackageNotFoundError:
            continue
    return sorted(set(pins), key=lambda s: re.sub(r"[-_.]+", "-", s).lower())


def log_model_set(model_set, name: str = "corrdiff"):
    """Log ``model_set`` as a pyfunc model in the active run; returns MLflow's ``ModelInfo``.

    The pdc wheel travels as an artifact and ``requirements.txt`` names it by its path in the model
    (``artifacts/pdc-….whl``): ``mlflow models serve`` (any env manager) installs it from there, with
    the dependencies' versions pinned to this environment's as constraints.
    """
    import tempfile
    from pathlib import Path

    from pdc.distribution import build_wheel

    with tempfile.TemporaryDirectory(prefix="pdc-mlflow-") as tmp:
        wheel = build_wheel(Path(tmp) / "wheel")
        constraints = Path(tmp) / "constraints.txt"
        constraints.write_text("\n".join(_runtime_pins(wheel)) + "\n")
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=str(Path(__file__).with_name("mlflow_entry.py")),  # model from code: no pickle
            artifacts={ARTIFACT: str(Path(model_set).resolve()), WHEEL: str(wheel)},
            pip_requirements=[f"artifacts/{wheel.name}", f"-c {constraints}"],
            signature=signature(),
            input_example=input_example(),
            model_config=dict(CONFIG),
            metadata={"input": "uint8 RGB image (H, W, 3), batch (N, H, W, 3) or ragged batch of (H, W, 3)",
                      "output": "reconstruction (N, H, W, 3) uint8, bpp (N,), stream (N,) .pdc bytes"},
        )
