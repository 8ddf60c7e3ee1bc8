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

from tests.golden import (CROP, GOLDEN, MAX_CHANGED_SHARE, MAX_PIXEL_STEP, MIN_DIFFUSION_AGREEMENT_DB, code_all,
                          pixels_digest)

EXPECTED = json.loads((GOLDEN / "expected.json").read_text())


def test_golden_streams_decode_to_the_recorded_images():
    from pdc.bitstream import Mode
    from pdc.codec import decompress
    from pdc.imageio import read_image, tensor_to_uint8
    from pdc.models.package import load_package
    from pdc.zoo import SHIPPED

    index = json.loads((SHIPPED / "index.json").read_text())
    assert sorted({w["package"] for w in EXPECTED.values()}) == sorted(e["name"] for e in index["packages"])
    for name, want in EXPECTED.items():
        decoded = tensor_to_uint8(decompress(load_package(SHIPPED / want["package"]),
                                             (GOLDEN / f"{name}.pdc").read_bytes()))
        recorded = read_image(GOLDEN / f"{name}_decoded.png")
        assert pixels_digest(recorded) == want["decoded_sha256"], f"{name}: the committed decode was altered"
        assert decoded.shape == recorded.shape == read_image(CROP).shape
        if Mode[want["mode"].upper()].uses_diffusion:
            mse = float(np.mean((decoded.astype(np.float64) - recorded) ** 2))
            agreement = 10 * np.log10(255**2 / mse) if mse else float("inf")
            assert agreement >= MIN_DIFFUSION_AGREEMENT_DB, f"{name}: {agreement:.1f} dB from the recorded decode"
            continue
        step = np.abs(decoded.astype(np.int16) - recorded.astype(np.int16))
        assert step.max() <= MAX_PIXEL_STEP and (step > 0).mean() <= MAX_CHANGED_SHARE, (
            f"{name}: {int((step > 0).sum())} values differ, by up to {int(step.max())}")


def test_coding_the_crop_again_gives_the_golden_bytes_and_figures():
    from pdc.imageio import read_image

    got = code_all(read_image(CROP))
    assert sorted(got) == sorted(EXPECTED)
    for name, want in EXPECTED.items():
        assert got[name]["stream"] == (GOLDEN / f"{name}.pdc").read_bytes(), name
        assert got[name]["bpp"] == pytest.approx(want["bpp"], abs=1e-9)
        assert got[name]["psnr"] == pytest.approx(want["psnr"], abs=0.01)
    codec = [EXPECTED[n]["bpp"] for n in sorted(EXPECTED) if EXPECTED[n]["mode"] == "codec"]
    assert codec == sorted(codec), "rate points must be ordered low rate first"


def test_altered_shipped_weights_are_refused_by_name(tmp_path):
    import torch

    from pdc.errors import ModelPackageError
    from pdc.models.package import load_package
    from pdc.zoo import SHIPPED

    name = sorted(e["package"] for e in EXPECTED.values())[0]
    copy = tmp_path / name
    shutil.copytree(SHIPPED / name, copy)
    parts = torch.load(copy / "weights.pt", weights_only=True)
    key = next(iter(parts["codec"]))
    parts["codec"][key] = parts["codec"][key] + 1e-3
    torch.save(parts, copy / "weights.pt")
    with pytest.raises(ModelPackageError, match=f"{copy}.*hash mismatch"):
        load_package(copy)


def _codec_only(dest):
    """The shipped set with its codecs alone (what a codec stage writes), as a model set under ``dest``."""
    from pdc.models.package import load_package, rate_packages, read_metadata, save_package, write_model_set
    from pdc.zoo import default_model

    members = []
    for member in rate_packages(default_model()):
        model = load_package(member)
        model.trained = ("codec",)
        save_package(model, dest / "packages" / member.name, extra={"rate_point": read_metadata(member)["rate_point"]})
        members.append(dest / "packages" / member.name)
    write_model_set(dest / "set", members)
    return dest / "set"


def test_evaluate_on_a_codec_only_set_runs_what_it_can_decode(tmp_path):
    """No --systems: a codec-only set (the shipped codecs) is evaluated in codec mode (the rest listed as not
    decodable) and compared with JPEG on PSNR; naming a system it cannot decode is refused with the parts
    it holds."""
    from pdc.errors import PdcError
    from pdc.imageio import read_image, write_image
    from pdc.rd import evaluate_model_set
    from pdc.rd.classic import ClassicCodec

    codec_only = _codec_only(tmp_path / "codec-only")
    crop = read_image(CROP)
    write_image(tmp_path / "imgs" / "a.png", np.ascontiguousarray(crop[:128, :128]))
    write_image(tmp_path / "imgs" / "b.png", np.ascontiguousarray(crop[128:, 128:]))
    jpeg = ClassicCodec("jpeg", "JPEG (Pillow)", "JPEG", "jpg", (10, 40), {"optimize": True})
    res = evaluate_model_set(codec_only, tmp_path / "imgs", tmp_path / "ev", progress=False, with_lpips=False,
                             classic=[jpeg], gammas=())
    assert set(res["systems"]) == {"codec", "jpeg"}
    assert {"corrdiff", "diffusion", "e2e"} <= set(res["systems_not_decodable"])
    bd = json.loads((tmp_path / "ev" / "bd_rate.json").read_text())["comparisons"]
    assert set(bd) == {"codec_vs_jpeg_psnr"} and bd["codec_vs_jpeg_psnr"]["anchor"] == "jpeg"
    with pytest.raises(PdcError, match="holds trained codec networks only; e2e cannot be decoded"):
        evaluate_model_set(codec_only, tmp_path / "imgs", tmp_path / "ev2", progress=False, with_lpips=False,
                           classic=[], systems=["e2e", "codec"])
