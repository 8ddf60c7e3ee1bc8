"""`pdc evaluate --e2e-lpips`: the loss control decodes the e2e files with another set's D_e, on the same codec."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch


def _copy_set(model_set: Path, dest: Path, change: dict[int, str]) -> Path:
    """A copy of ``model_set`` whose rate point ``r`` has its ``change[r]`` part ("privileged" or "codec")
    perturbed; the others are the same weights, saved again."""
    from pdc.models.package import load_package, rate_packages, read_metadata, save_package, write_model_set

    packages = []
    for r, member in enumerate(rate_packages(model_set)):
        model = load_package(member)
        part = change.get(r)
        if part is not None:
            g = torch.Generator().manual_seed(r)
            with torch.no_grad():
                for p in getattr(model, part).parameters():
                    p.add_(0.05 * torch.randn(p.shape, generator=g))
        save_package(model, dest / member.name, extra={"rate_point": read_metadata(member)["rate_point"]})
        packages.append(dest / member.name)
    write_model_set(dest / "set", packages)
    return dest / "set"


def test_e2e_lpips_reuses_the_e2e_files_and_decodes_them_with_its_own_d_e(model_set, tiny_images, tmp_path):
    """r0's copy keeps the D_e (so e2e-lpips must reproduce e2e exactly), r1's has another one (so it must
    differ); either way the bytes are e2e's, and the BD-rates of diffusion against it are reported."""
    from typer.testing import CliRunner

    from pdc.cli.main import app

    alt = _copy_set(model_set, tmp_path / "alt", {1: "privileged"})
    out = tmp_path / "ev"
    res = CliRunner().invoke(app, ["evaluate", "--model", str(model_set), "--e2e-lpips", str(alt), "--images",
                                   str(tiny_images), "--out", str(out), "--crop", "64", "--limit", "2", "--no-fid",
                                   "--gammas", "none", "--no-lpips", "--classic", "none", "--no-decode",
                                   "--systems", "diffusion,e2e,e2e-lpips"],
                             env={"PDC_NO_PROGRESS": "1", "COLUMNS": "200"})
    assert res.exit_code == 0, (res.output, res.exception)
    summary = json.loads((out / "summary.json").read_text())
    systems = summary["systems"]
    assert set(systems) == {"diffusion", "e2e", "e2e-lpips"}
    assert systems["e2e-lpips"]["name"] == "E2E trained with the diffusion's loss"
    for r, (e2e, ctl) in enumerate(zip(systems["e2e"]["points"], systems["e2e-lpips"]["points"], strict=True)):
        assert ctl["label"] == e2e["label"] and len(ctl["per_image"]) == 2
        for a, b in zip(e2e["per_image"], ctl["per_image"], strict=True):
            assert b["bytes"] == a["bytes"] and b["lambda_bytes"] == 0
            assert b["stream"] == f"streams/e2e/{e2e['label']}/{a['image']}.pdc"
            if r == 0:  # the same D_e: the same reconstruction
                assert b["psnr"] == pytest.approx(a["psnr"], abs=1e-9)
            else:
                assert abs(b["psnr"] - a["psnr"]) > 0.01
    assert not (out / "streams" / "e2e-lpips").exists()  # it writes no file of its own
    ctx = summary["e2e_lpips"]
    assert ctx["model"] == str(alt) and [p["package"] for p in ctx["rate_points"]] == [str(alt / "r0"), str(alt / "r1")]
    comps = summary["bd_rate"]["comparisons"]
    for metric in ("lpips", "lpips_vgg"):
        assert comps[f"diffusion_vs_e2e_lpips_{metric}"]["anchor"] == "e2e-lpips"
        assert comps[f"diffusion_vs_e2e_lpips_{metric}"]["test"] == "diffusion"
    assert "diffusion_vs_e2e_lpips_fid" not in comps  # no FID set: no FID/KID comparison
    dp = summary["bd_rate"]["distortion_perception"]
    assert all(e["system"] != "e2e-lpips" for entries in dp.values() for e in entries)


def test_e2e_lpips_with_another_codec_or_without_e2e_is_refused(model_set, tiny_images, tmp_path):
    from pdc.errors import PdcError
    from pdc.models.package import rate_packages
    from pdc.rd import evaluate_model_set

    kw = dict(limit=1, crop=64, gammas=(), progress=False, with_lpips=False, classic=[], decode=False)
    other = _copy_set(model_set, tmp_path / "other", {1: "codec"})
    out = tmp_path / "ev"
    main_r1, other_r1 = rate_packages(model_set)[1], rate_packages(other)[1]
    with pytest.raises(PdcError, match="codec differs") as exc:
        evaluate_model_set(model_set, tiny_images, out, systems=("e2e",), e2e_lpips=other, **kw)
    assert str(other_r1) in str(exc.value) and str(main_r1) in str(exc.value)
    assert not out.exists()  # refused before anything was coded
    with pytest.raises(PdcError, match="has 1 rate point"):
        evaluate_model_set(model_set, tiny_images, out, systems=("e2e",), e2e_lpips=rate_packages(model_set)[0], **kw)
    with pytest.raises(PdcError, match="evaluate e2e too"):
        evaluate_model_set(model_set, tiny_images, out, systems=("diffusion",), e2e_lpips=model_set, **kw)
    with pytest.raises(PdcError, match="needs --e2e-lpips"):
        evaluate_model_set(model_set, tiny_images, out, systems=("e2e", "e2e-lpips"), **kw)


def test_evaluate_help_lists_the_option():
    from typer.testing import CliRunner

    from pdc.cli.main import app

    res = CliRunner().invoke(app, ["evaluate", "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0 and "--e2e-lpips" in res.output
