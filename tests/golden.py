"""Golden streams of the shipped model (pdc/zoo/small): a Kodak crop coded at every rate point.

``python -m tests.golden`` (re)writes ``tests/data/golden/``: the crop (kodim23, 256×256 from (128, 256)),
for every rate point one stream in ``codec`` mode (the hyperprior alone) and, where the package holds the
decoders, one in its best mode (CorrDiff): ``<rate>_<mode>.pdc``, what it decodes to here
(``<rate>_<mode>_decoded.png``) and ``expected.json`` (package, mode, bytes, bpp, PSNR and the SHA-256 of
the decoded pixels, keyed ``<rate>_<mode>``). Run it after the shipped weights change; tests/test_zoo.py
checks the committed files against the shipped model.

The entropy-coded symbols are exact on every machine; the synthesis transform is float convolution, whose
summation order depends on the CPU's vector width, so another CPU may decode a rare pixel one code value
apart (:data:`MAX_PIXEL_STEP`, :data:`MAX_CHANGED_SHARE`). The diffusion decoder runs several networks in
sequence on sampled noise, so there such differences may spread: its decodes are held to
:data:`MIN_DIFFUSION_AGREEMENT_DB` of PSNR against the recorded one instead.
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
MIN_DIFFUSION_AGREEMENT_DB = 45.0  # a diffusion-mode decode against the recorded one on another CPU
KODIM23 = Path(__file__).resolve().parents[2] / "shared" / "data" / "kodak" / "kodim23.png"


def pixels_digest(image: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()


def golden_modes(model) -> list:
    """The modes recorded for a package: codec, and its best mode where that is another."""
    from pdc.bitstream import Mode
    from pdc.codec import best_mode

    best = best_mode(model)
    return [Mode.CODEC] + ([best] if best != Mode.CODEC else [])


def code_all(crop: np.ndarray) -> dict[str, dict]:
    """Every rate point of the shipped set on ``crop`` in :func:`golden_modes`: bytes and what they decode to."""
    import torch

    from pdc.codec import compress, decompress
    from pdc.imageio import tensor_to_uint8
    from pdc.metrics import bpp, psnr
    from pdc.models.package import load_package, rate_packages
    from pdc.zoo import default_model

    out = {}
    ref = torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 255
    for member in rate_packages(default_model()):
        model = load_package(member)
        for mode in golden_modes(model):
            enc = compress(model, crop, mode=mode)
            dec = tensor_to_uint8(decompress(model, enc.data))
            out[f"{member.name}_{mode.name.lower()}"] = {
                "package": member.name, "mode": mode.name.lower(), "stream": enc.data, "bytes": len(enc.data),
                "bpp": bpp(len(enc.data), *crop.shape[:2]),
                "psnr": float(psnr(torch.from_numpy(dec).permute(2, 0, 1)[None].float() / 255, ref)),
                "decoded_sha256": pixels_digest(dec), "decoded": dec}
    return out


def main() -> None:
    from pdc.imageio import read_image, write_image

    GOLDEN.mkdir(parents=True, exist_ok=True)
    if not CROP.is_file():
        write_image(CROP, np.ascontiguousarray(read_image(KODIM23)[128:384, 256:512]))
    results = code_all(read_image(CROP))
    for stale in [*GOLDEN.glob("*.pdc"), *GOLDEN.glob("*_decoded.png")]:  # streams of the weights replaced
        stale.unlink()
    for name, r in results.items():
        (GOLDEN / f"{name}.pdc").write_bytes(r.pop("stream"))
        write_image(GOLDEN / f"{name}_decoded.png", r.pop("decoded"))
    (GOLDEN / "expected.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
