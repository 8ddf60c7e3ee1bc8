"""Golden streams of the shipped model (pdc/zoo/small): a Kodak crop coded at every rate point.

``python -m tests.golden`` (re)writes ``tests/data/golden/``: the crop (kodim23, 256×256 from (128, 256)),
one ``<rate>.pdc`` per rate point in ``codec`` mode (the mode every shipped package decodes), what it
decodes to here (``<rate>_decoded.png``) and ``expected.json`` (bytes, bpp, PSNR and the SHA-256 of the
decoded pixels). Run it after the shipped weights change; tests/test_zoo.py checks the committed files
against the shipped model.

The entropy-coded symbols are exact on every machine; the synthesis transform is float convolution, whose
summation order depends on the CPU's vector width, so another CPU may decode a rare pixel one code value
apart (:data:`MAX_PIXEL_STEP`, :data:`MAX_CHANGED_SHARE`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

GOLDEN = Path(__file__).resolve().parent / "data" / "golden"
CROP = GOLDEN / "kodim23_crop.png"
MAX_PIXEL_STEP = 1  # code values a pixel may differ from the recorded decode on another CPU …
MAX_CHANGED_SHARE = 1e-3  # … and the share of values that may
KODIM23 = Path(__file__).resolve().parents[2] / "shared" / "data" / "kodak" / "kodim23.png"


def pixels_digest(image: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()


def code_all(crop: np.ndarray) -> dict[str, dict]:
    """Every rate point of the shipped set on ``crop``: stream bytes and what decoding them gives."""
    import torch

    from pdc.bitstream import Mode
    from pdc.codec import compress, decompress
    from pdc.imageio import tensor_to_uint8
    from pdc.metrics import bpp, psnr
    from pdc.models.package import load_package, rate_packages
    from pdc.zoo import default_model

    out = {}
    for member in rate_packages(default_model()):
        model = load_package(member)
        enc = compress(model, crop, mode=Mode.CODEC)
        dec = tensor_to_uint8(decompress(model, enc.data))
        ref = torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 255
        out[member.name] = {"stream": enc.data, "bytes": len(enc.data), "bpp": bpp(len(enc.data), *crop.shape[:2]),
                            "psnr": float(psnr(torch.from_numpy(dec).permute(2, 0, 1)[None].float() / 255, ref)),
                            "decoded_sha256": pixels_digest(dec), "decoded": dec}
    return out


def main() -> None:
    from pdc.imageio import read_image, write_image

    GOLDEN.mkdir(parents=True, exist_ok=True)
    if not CROP.is_file():
        write_image(CROP, np.ascontiguousarray(read_image(KODIM23)[128:384, 256:512]))
    results = code_all(read_image(CROP))
    for name, r in results.items():
        (GOLDEN / f"{name}.pdc").write_bytes(r.pop("stream"))
        write_image(GOLDEN / f"{name}_decoded.png", r.pop("decoded"))
    (GOLDEN / "expected.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
