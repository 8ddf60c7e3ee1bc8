"""The shipped model (pdc/zoo/small) against its committed golden streams (written by tests/golden.py).

Decoding a golden stream gives the recorded image (bit for bit on the recording machine; within one code
value on a rare pixel elsewhere, see tests/golden.py); coding the crop again gives the golden
bytes (same model + same image ⇒ same stream); bpp and PSNR match the recorded figures; altered weights
are refused by their hash.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from tests.golden import CROP, GOLDEN, MAX_CHANGED_SHARE, MAX_PIXEL_STEP, code_all, pixels_digest

EXPECTED = json.loads((GOLDEN / "expected.json").read_text())


def test_golden_streams_decode_to_the_recorded_images():
    from pdc.codec import decompress
    from pdc.imageio import read_image, tensor_to_uint8
    from pdc.models.package import load_package
    from pdc.zoo import SHIPPED

    index = json.loads((SHIPPED / "index.json").read_text())
    assert sorted(EXPECTED) == sorted(e["name"] for e in index["packages"])
    for name, want in EXPECTED.items():
        decoded = tensor_to_uint8(decompress(load_package(SHIPPED / name), (GOLDEN / f"{name}.pdc").read_bytes()))
        recorded = read_image(GOLDEN / f"{name}_decoded.png")
        assert pixels_digest(recorded) == want["decoded_sha256"], f"{name}: the committed decode was altered"
        assert decoded.shape == recorded.shape == read_image(CROP).shape
        step = np.abs(decoded.astype(np.int16) - recorded.astype(np.int16))
        assert step.max() <= MAX_PIXEL_STEP and (step > 0).mean() <= MAX_CHANGED_SHARE, (
            f"{name}: {int((step > 0).sum())} values differ, by up to {int(step.max())}")


def test_coding_the_crop_again_gives_the_golden_bytes_and_figures():
    from pdc.imageio import read_image

    got = code_all(read_image(CROP))
    for name, want in EXPECTED.items():
        assert got[name]["stream"] == (GOLDEN / f"{name}.pdc").read_bytes(), name
        assert got[name]["bpp"] == pytest.approx(want["bpp"], abs=1e-9)
        assert got[name]["psnr"] == pytest.approx(want["psnr"], abs=0.01)
    rates = [EXPECTED[n]["bpp"] for n in sorted(EXPECTED)]
    assert rates == sorted(rates), "rate points must be ordered low rate first"


def test_altered_shipped_weights_are_refused_by_name(tmp_path):
    import torch

    from pdc.errors import ModelPackageError
    from pdc.models.package import load_package
    from pdc.zoo import SHIPPED

    name = sorted(EXPECTED)[0]
    copy = tmp_path / name
    shutil.copytree(SHIPPED / name, copy)
    parts = torch.load(copy / "weights.pt", weights_only=True)
    key = next(iter(parts["codec"]))
    parts["codec"][key] = parts["codec"][key] + 1e-3
    torch.save(parts, copy / "weights.pt")
    with pytest.raises(ModelPackageError, match=f"{copy}.*hash mismatch"):
        load_package(copy)


def test_evaluate_on_the_shipped_codec_only_set_runs_what_it_can_decode(tmp_path):
    """No --systems: the codec-only set is evaluated in codec mode (the rest listed as not decodable) and
    compared with JPEG on PSNR; naming a system it cannot decode is refused with the parts it holds."""
    from pdc.errors import PdcError
    from pdc.imageio import read_image, write_image
    from pdc.rd import evaluate_model_set
    from pdc.rd.classic import ClassicCodec
    from pdc.zoo import default_model

    crop = read_image(CROP)
    write_image(tmp_path / "imgs" / "a.png", np.ascontiguousarray(crop[:128, :128]))
    write_image(tmp_path / "imgs" / "b.png", np.ascontiguousarray(crop[128:, 128:]))
    jpeg = ClassicCodec("jpeg", "JPEG (Pillow)", "JPEG", "jpg", (10, 40), {"optimize": True})
    res = evaluate_model_set(default_model(), tmp_path / "imgs", tmp_path / "ev", progress=False, with_lpips=False,
                             classic=[jpeg], gammas=())
    assert set(res["systems"]) == {"codec", "jpeg"}
    assert {"corrdiff", "diffusion", "e2e"} <= set(res["systems_not_decodable"])
    bd = json.loads((tmp_path / "ev" / "bd_rate.json").read_text())["comparisons"]
    assert set(bd) == {"codec_vs_jpeg_psnr"} and bd["codec_vs_jpeg_psnr"]["anchor"] == "jpeg"
    with pytest.raises(PdcError, match="holds trained codec networks only; e2e cannot be decoded"):
        evaluate_model_set(default_model(), tmp_path / "imgs", tmp_path / "ev2", progress=False, with_lpips=False,
                           classic=[], systems=["e2e", "codec"])
