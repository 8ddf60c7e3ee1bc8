"""`pdc evaluate` end to end on a micro 2-rate-point model set: files, schema, bytes, plots, CSV."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pdc.rd.classic import ClassicCodec, classic_codecs

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LEARNED = ["corrdiff", "diffusion", "e2e", "codec", "corrdiff-g0.5"]
CONTROL = "e2e-noise"
COMPRESSAI_KEYS = ["bpp", "psnr-rgb", "ms-ssim-rgb", "lpips", "lpips-vgg", "fid", "kid"]


@pytest.fixture(scope="module")
def cli_run(model_set, tiny_images, tmp_path_factory):
    """One `pdc evaluate` run through the real CLI app (in-process): 2 crops, no FID, γ ∈ {0.5, 1}.

    γ = 1 is the micro model's own strength, so only ``corrdiff-g0.5`` is added beside ``corrdiff``.
    """
    from typer.testing import CliRunner

    from pdc.cli.main import app

    out = tmp_path_factory.mktemp("eval") / "eval"
    args = ["evaluate", "--model", str(model_set), "--images", str(tiny_images), "--out", str(out),
            "--crop", "64", "--limit", "2", "--no-fid", "--gammas", "0.5,1"]
    result = CliRunner().invoke(app, args, env={"PDC_NO_PROGRESS": "1", "COLUMNS": "200"})
    assert result.exit_code == 0, (result.output, result.exception)
    return out, result.output


def _expected_points() -> dict[str, int]:
    exp = {k: 2 for k in LEARNED + [CONTROL]}
    exp.update({c.key: len(c.qualities) for c in classic_codecs()})
    return exp


def test_cli_prints_table_and_elapsed(cli_run):
    out, text = cli_run
    assert "elapsed" in text
    for key in ("corrdiff", "diffusion", "e2e", "codec", CONTROL, "jpeg", "webp", "LPIPS-VGG", "mean λ per step"):
        assert key in text
    assert (out / "summary.json").is_file()
    assert not list(out.parent.glob(f".{out.name}.*"))  # staging folder renamed away
    summary = json.loads((out / "summary.json").read_text())
    assert summary["gammas"] == [0.5] and summary["gammas_skipped_as_model_default"] == [1.0]


def test_compressai_schema(cli_run):
    out, _ = cli_run
    expected = _expected_points()
    assert sorted(p.stem for p in (out / "systems").glob("*.json")) == sorted(expected)
    for key, n in expected.items():
        doc = json.loads((out / "systems" / f"{key}.json").read_text())
        assert isinstance(doc["name"], str) and doc["name"] and isinstance(doc["description"], str)
        res = doc["results"]
        for k in COMPRESSAI_KEYS:
            assert k in res, (key, k)
        assert {len(v) for v in res.values()} == {n}, key
        assert all(b > 0 for b in res["bpp"])
        assert all(isinstance(v, float) for v in res["psnr-rgb"] + res["lpips"] + res["lpips-vgg"])
        assert res["fid"] == [None] * n and res["ms-ssim-rgb"] == [None] * n  # --no-fid; 64-px crops


def test_compressai_plot_tool_reads_our_json(cli_run):
    from compressai.utils.plot.__main__ import parse_json_file

    out, _ = cli_run
    parsed = parse_json_file(out / "systems" / "jpeg.json", "psnr")
    doc = json.loads((out / "systems" / "jpeg.json").read_text())
    assert parsed["name"] == "JPEG (Pillow)"
    assert list(parsed["xs"]) == doc["results"]["bpp"] and list(parsed["ys"]) == doc["results"]["psnr-rgb"]


def test_csv_has_one_row_per_system_and_point(cli_run):
    out, _ = cli_run
    rows = list(csv.DictReader((out / "rd.csv").open()))
    expected = _expected_points()
    assert len(rows) == sum(expected.values())
    for key, n in expected.items():
        assert sum(r["system"] == key for r in rows) == n
        plot_rows = list(csv.DictReader((out / "plots" / f"{key}.csv").open()))
        assert len(plot_rows) == n
        bpps = [float(r["bpp"]) for r in plot_rows]
        assert bpps == sorted(bpps)
        assert all(np.isfinite(float(r["lpips_vgg"])) for r in plot_rows), key


def test_lpips_vgg_is_reported_beside_lpips_alex(cli_run):
    out, _ = cli_run
    rows = list(csv.DictReader((out / "rd.csv").open()))
    for r in rows:
        alex, vgg = float(r["lpips"]), float(r["lpips_vgg"])
        assert np.isfinite(alex) and np.isfinite(vgg) and alex != vgg, r["system"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert all(np.isfinite(m["lpips_vgg"]) for pts in metrics["systems"].values() for m in pts.values())
    for point in _per_image(out)["corrdiff"]["points"]:
        assert all(np.isfinite(r["lpips_vgg"]) for r in point["per_image"])


def test_control_matches_corrdiff_psnr_per_image_at_the_e2e_rate(cli_run):
    out, _ = cli_run
    systems = _per_image(out)
    rows = {r["system"]: r for r in csv.DictReader((out / "rd.csv").open()) if r["point"] == "r0"}
    assert float(rows[CONTROL]["noise_sigma"]) >= 0
    for label in ("r0", "r1"):
        control, corr, e2e = ({r["image"]: r for r in next(p for p in systems[key]["points"]
                                                            if p["label"] == label)["per_image"]}
                              for key in (CONTROL, "corrdiff", "e2e"))
        assert set(control) == set(corr) == set(e2e)
        for name, row in control.items():
            assert row["bpp"] == e2e[name]["bpp"] and row["bytes"] == e2e[name]["bytes"]  # the e2e file, no extra bits
            assert (out / row["stream"]).is_file()
            assert row["target_psnr"] == pytest.approx(corr[name]["psnr"])
            if corr[name]["psnr"] >= e2e[name]["psnr"]:
                assert row["noise_sigma"] == 0 and row["psnr"] == pytest.approx(e2e[name]["psnr"])
            else:
                assert row["noise_sigma"] > 0
                assert abs(row["psnr"] - corr[name]["psnr"]) <= 0.1
            for k in ("lpips", "lpips_vgg"):
                assert np.isfinite(row[k])


def _per_image(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())["systems"]


def test_classic_bpp_is_the_pillow_file_size(cli_run, tiny_images):
    out, _ = cli_run
    systems = _per_image(out)
    codecs = {c.key: c for c in classic_codecs()}
    checked = 0
    for key, codec in codecs.items():
        for point in systems[key]["points"]:
            q = point["quality"]
            for row in point["per_image"]:
                f = out / "streams" / key / f"q{q}" / f"{row['image']}.{codec.ext}"
                data = f.read_bytes()
                pixels = row["height"] * row["width"]
                assert row["bytes"] == len(data)
                assert row["bpp"] == pytest.approx(len(data) * 8 / pixels, rel=1e-12)
                # Re-encoding the same crop with the same settings gives the same byte count...
                src = np.asarray(Image.open(tiny_images / f"{row['image']}.png").convert("RGB"))
                h, w = src.shape[:2]
                top, left = (h - 64) // 2, (w - 64) // 2
                assert len(codec.encode(np.ascontiguousarray(src[top:top + 64, left:left + 64]), q)) == len(data)
                # ... and the file really is that codec's format.
                assert Image.open(io.BytesIO(data)).format == codec.pil_format
                checked += 1
            assert point["bpp"] == pytest.approx(np.mean([r["bpp"] for r in point["per_image"]]))
    assert checked == 2 * sum(len(c.qualities) for c in codecs.values())


def test_learned_bpp_is_the_pdc_file_size_and_decodes(cli_run):
    from pdc.bitstream import Mode, parse

    out, _ = cli_run
    systems = _per_image(out)
    for key in LEARNED:
        for point in systems[key]["points"]:
            for row in point["per_image"]:
                data = (out / "streams" / key / point["label"] / f"{row['image']}.pdc").read_bytes()
                assert row["bpp"] == pytest.approx(len(data) * 8 / (row["height"] * row["width"]), rel=1e-12)
                stream = parse(data)
                assert stream.width == 64 and stream.height == 64
                assert (stream.mode == Mode.CORRDIFF) == key.startswith("corrdiff")
                assert row["decode_max_abs_diff"] <= 1e-5  # decoder reproduces the encoder's simulation
    gammas = {p["label"]: p["gamma"] for p in systems["corrdiff-g0.5"]["points"]}
    assert gammas == {"r0": 0.5, "r1": 0.5}


def test_plots_are_png_files(cli_run):
    out, _ = cli_run
    for name in ("rd_psnr.png", "rd_lpips.png", "rd_lpips_vgg.png", "dp_curve.png", "crops.png"):
        path = out / name
        assert path.read_bytes()[:8] == PNG_SIGNATURE, name
        with Image.open(path) as img:
            assert img.format == "PNG" and img.width > 100 and img.height > 100
    assert not (out / "rd_fid.png").exists()  # --no-fid: no empty FID plot
    assert not (out / "rd_ms_ssim.png").exists()  # 64-px crops: MS-SSIM undefined


def test_bd_rate_json_reports_value_or_reason(cli_run):
    out, _ = cli_run
    bd = json.loads((out / "bd_rate.json").read_text())
    comps = bd["comparisons"]
    assert {"corrdiff_vs_diffusion_psnr", "corrdiff_vs_e2e_lpips", "corrdiff_gamma_front_vs_diffusion_psnr",
            "corrdiff_gamma_front_vs_e2e_lpips", "corrdiff_vs_jpeg_lpips", "corrdiff_vs_e2e_noise_lpips",
            "corrdiff_vs_e2e_noise_lpips_vgg", "corrdiff_vs_jpeg_lpips_vgg"} <= set(comps)
    for res in comps.values():
        assert (res["value"] is None) != (res["reason"] is None)
        assert len(res["curves"]["anchor"]) == _expected_points()[res["anchor"]]
    assert comps["corrdiff_vs_jpeg_lpips"]["anchor"] == "jpeg"
    assert comps["corrdiff_vs_jpeg_lpips_vgg"]["metric"] == "lpips_vgg"
    assert comps["corrdiff_vs_e2e_noise_lpips"]["anchor"] == CONTROL
    dp = bd["distortion_perception"]
    assert set(dp) == {"r0", "r1"}
    assert [e["tag"] for e in dp["r0"]] == ["diffusion", "γ=0.5", "γ=1", "e2e"]  # the control is no D–P point


def test_mean_lambda_per_step_dequantizes_the_recorded_levels(cli_run):
    from tests.rd.conftest import MICRO

    out, _ = cli_run
    systems = _per_image(out)
    levels = MICRO["correction"]["levels"]
    for key in ("corrdiff", "corrdiff-g0.5"):
        for point in systems[key]["points"]:
            per_image = [r["levels"] for r in point["per_image"]]
            expected = [float(np.mean(step)) / (levels - 1) for step in zip(*per_image)]
            assert point["mean_lambda_per_step"] == pytest.approx(expected)
            assert len(expected) == point["steps"] and all(0 <= v <= 1 for v in expected)
    assert all("mean_lambda_per_step" not in p for key in ("e2e", "diffusion", "jpeg")
               for p in systems[key]["points"])


def test_rerun_replaces_its_own_folder_even_when_dvc_removed_outputs(lib_run, model_set, tiny_images, tmp_path):
    import shutil

    from pdc.rd import evaluate_model_set

    out = tmp_path / "eval"
    shutil.copytree(lib_run[0], out)
    (out / "summary.json").unlink()  # `dvc repro` deletes declared outputs before re-running a stage
    shutil.rmtree(out / "systems")
    res = evaluate_model_set(model_set, tiny_images, out, limit=1, crop=64, gammas=(), progress=False,
                             with_lpips=False, classic=[], systems=("e2e",))
    assert sorted(p.name for p in (out / "systems").iterdir()) == ["e2e.json"]  # no control without corrdiff
    assert not (out / "rd_fid.png").exists()  # the old run's files are gone, not mixed in
    assert len(res["rows"]) == 2


def test_refuses_to_replace_a_foreign_folder(model_set, tiny_images, tmp_path):
    from pdc.errors import PdcError
    from pdc.rd import evaluate_model_set

    out = tmp_path / "mine"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(PdcError, match="not empty"):
        evaluate_model_set(model_set, tiny_images, out, limit=1, crop=64, progress=False)
    assert (out / "keep.txt").read_text() == "x"


def test_cli_user_error_is_one_line(tmp_path, capsys):
    from pdc.cli.main import main

    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--model", str(tmp_path / "missing"), "--images", str(tmp_path), "--no-fid"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no such model package" in err[0]


def test_gammas_option_parsing():
    from pdc.errors import PdcError
    from pdc.rd import parse_gammas

    assert parse_gammas(None) is None
    assert parse_gammas("none") == ()
    assert parse_gammas("0.25, 0.5") == (0.25, 0.5)
    assert parse_gammas([0.5, 1]) == (0.5, 1.0)
    with pytest.raises(PdcError):
        parse_gammas("1.5")
    with pytest.raises(PdcError):
        parse_gammas("a,b")


def _fast_fid(a: np.ndarray, b: np.ndarray) -> float:
    """Exact FID for few samples: tr √(Σa Σb) = ‖A Bᵀ‖_* / √((n−1)(m−1)) with centred features A, B.

    Stands in for scipy's 2048×2048 ``sqrtm`` (minutes on 2 busy cores); the plumbing under test is the
    same (patches → Inception features → one score per point).
    """
    A, B = a - a.mean(0), b - b.mean(0)
    trace_sqrt = np.linalg.svd(A @ B.T, compute_uv=False).sum() / np.sqrt((len(a) - 1) * (len(b) - 1))
    tr = (A**2).sum() / (len(a) - 1) + (B**2).sum() / (len(b) - 1)
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + tr - 2 * trace_sqrt)


def test_fast_fid_matches_the_definition_in_low_dimension():
    import scipy.linalg

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(40, 6)), rng.normal(1.0, 2.0, size=(30, 6))
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ref = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert _fast_fid(a, b) == pytest.approx(ref, rel=1e-9)


@pytest.fixture(scope="module")
def lib_run(model_set, tiny_images, fid_images, tmp_path_factory):
    """The library call with FID/KID on a 2-image patch set, two learned systems and two JPEG qualities."""
    import pdc.metrics.perceptual as perceptual
    from pdc.rd import evaluate_model_set

    mp = pytest.MonkeyPatch()
    mp.setattr(perceptual, "fid_from_features", _fast_fid)
    try:
        jpeg = ClassicCodec("jpeg", "JPEG (Pillow)", "JPEG", "jpg", (5, 60), {"optimize": True})
        out = tmp_path_factory.mktemp("lib") / "ev"
        res = evaluate_model_set(model_set, tiny_images, out, fid_images=fid_images, limit=1, crop=0, steps=2,
                                 gammas=(), progress=False, with_lpips=False, classic=[jpeg],
                                 systems=("corrdiff", "e2e"), decode=False)
    finally:
        mp.undo()
    return out, res


def test_summary_lists_output_files(lib_run):
    out, res = lib_run
    files = [Path(f) for f in res["files"]]
    assert all(f.is_file() and out in f.parents for f in files)
    assert {f.relative_to(out).as_posix() for f in files} >= {
        "systems/corrdiff.json", "systems/e2e.json", "systems/jpeg.json", "plots/corrdiff.csv", "rd.csv",
        "bd_rate.json", "crops.png", "summary.json", "rd_psnr.png", "rd_fid.png"}
    assert res["outputs"] == res["files"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["systems"]) == {"corrdiff", "e2e", CONTROL, "jpeg"}
    assert metrics["systems"]["jpeg"]["q60"]["psnr"] == pytest.approx(
        next(r["psnr"] for r in res["rows"] if r["point"] == "q60"))
    assert set(metrics["bd_rate"]) == set(json.loads((out / "bd_rate.json").read_text())["comparisons"])
    assert json.loads((out / "summary.json").read_text())["format"] == "pdc-rd/1"
    assert len(res["rows"]) == 2 * 3 + 2
    assert all(r["lpips"] is None and r["lpips_vgg"] is None for r in res["rows"])  # with_lpips=False
    assert res["images"]["crop"] is None  # crop=0: full 80×72 images
    row = res["systems"]["e2e"]["points"][0]["per_image"][0]
    assert (row["height"], row["width"]) == (80, 72)


def test_fid_and_kid_on_patches(lib_run):
    out, res = lib_run
    rows = res["rows"]
    assert all(r["fid_patches"] == 2 for r in rows)  # one aligned 256² patch per image, no shifted one
    assert all(isinstance(r["fid"], float) and r["fid"] >= -1e-6 for r in rows)
    assert all(isinstance(r["kid"], float) for r in rows)
    doc = json.loads((out / "systems" / "jpeg.json").read_text())
    assert len(doc["results"]["fid"]) == 2 and None not in doc["results"]["fid"]
    # JPEG q5 is further from the originals' patch distribution than q60.
    assert doc["results"]["fid"][0] > doc["results"]["fid"][1]
    assert (out / "rd_fid.png").read_bytes()[:8] == PNG_SIGNATURE


def test_fid_is_plotted_and_fitted_against_the_fid_images_own_bits(lib_run):
    """The test images (80×72 crops) and the FID images (256² photos) differ: an FID point's bit-rate is its
    FID images' files, and FID/KID BD-rates (CorrDiff vs JPEG among them) fit against that."""
    out, res = lib_run
    from pdc.rd.bd import bd_rate

    for key, system in res["systems"].items():
        for point in system["points"]:
            fid_rows = point["per_fid_image"]
            assert len(fid_rows) == 2
            if key in ("corrdiff", "e2e", "jpeg"):  # systems with files of their own
                for r in fid_rows:
                    f = next((out / "streams_fid" / key / point["label"]).glob(f"{r['image']}.*"))
                    assert r["bytes"] == f.stat().st_size
                    assert r["bpp"] == pytest.approx(8 * r["bytes"] / (256 * 256))
            assert point["fid_bpp"] == pytest.approx(np.mean([r["bpp"] for r in fid_rows]))
            assert point["fid_bpp"] != pytest.approx(point["bpp"], rel=1e-3)  # other photos, other bits
    e2e = {p["label"]: p["fid_bpp"] for p in res["systems"]["e2e"]["points"]}
    assert {p["label"]: p["fid_bpp"] for p in res["systems"][CONTROL]["points"]} == e2e  # e2e's files
    comps = json.loads((out / "bd_rate.json").read_text())["comparisons"]
    for metric in ("fid", "kid"):
        c = comps[f"corrdiff_vs_jpeg_{metric}"]
        assert c["rate"] == "fid_bpp"
        corr = res["systems"]["corrdiff"]["points"]
        assert c["curves"]["test"] == [[p["fid_bpp"], p[metric]] for p in corr]
        assert c["value"] == bd_rate(c["curves"]["anchor"], c["curves"]["test"], higher_is_better=False)["value"]
    assert comps["corrdiff_vs_jpeg_lpips"]["rate"] == "bpp"
    with open(out / "rd.csv", newline="") as f:
        assert all(float(r["fid_bpp"]) > 0 for r in csv.DictReader(f))


def test_single_corrected_step_evaluates(model_set, tiny_images, tmp_path):
    """K = 1 codes a single λ (a message CompressAI's rANS encoder used to crash on)."""
    from pdc.rd import evaluate_model_set

    res = evaluate_model_set(model_set, tiny_images, tmp_path / "ev", limit=1, crop=64, steps=1, progress=False)
    per_image = res["systems"]["corrdiff"]["points"][0]["per_image"]
    assert all(len(r["levels"]) == 1 for r in per_image)
    assert (tmp_path / "ev" / "summary.json").is_file()


def test_undecoded_run_takes_the_encoder_simulation(lib_run):
    _, res = lib_run
    per_image = res["systems"]["corrdiff"]["points"][0]["per_image"]
    assert all("decode_s" not in r and "decode_max_abs_diff" not in r for r in per_image)
    assert all(len(r["levels"]) == 2 for r in per_image)  # K = 2 λ levels per image


def test_cli_restricts_systems_and_classic_codecs(model_set, tiny_images, tmp_path):
    from typer.testing import CliRunner

    from pdc.cli.main import app

    out = tmp_path / "eval"
    args = ["evaluate", "--model", str(model_set), "--images", str(tiny_images), "--out", str(out), "--crop", "64",
            "--limit", "1", "--no-fid", "--gammas", "none", "--systems", "corrdiff,e2e", "--classic", "jpeg",
            "--no-decode"]
    result = CliRunner().invoke(app, args, env={"PDC_NO_PROGRESS": "1", "COLUMNS": "200"})
    assert result.exit_code == 0, (result.output, result.exception)
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["systems"]) == {"corrdiff", "e2e", "e2e-noise", "jpeg"}
    assert summary["decoded_from_files"] is False


def test_cli_refuses_an_unknown_classic_codec(model_set, tiny_images, tmp_path, capsys):
    from pdc.cli.main import main

    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--model", str(model_set), "--images", str(tiny_images), "--out", str(tmp_path / "e"),
              "--no-fid", "--classic", "jpeg2000"])
    assert exc.value.code == 2
    assert "jpeg2000" in capsys.readouterr().err


def test_training_images_are_refused_as_test_images(model_set, tiny_images, tmp_path):
    from pdc.data.shards import split_of
    from pdc.errors import DataError
    from pdc.rd import evaluate_model_set

    trained = [p.name for p in sorted(tiny_images.glob("*.png")) if split_of(p.name) == "train"]
    assert trained, "fixture: at least one image falls in the train split"
    with pytest.raises(DataError) as exc:
        evaluate_model_set(model_set, tiny_images, tmp_path / "e", training_data=tiny_images, classic=[], gammas=())
    msg = str(exc.value)
    path = tiny_images / trained[0]
    assert "\n" not in msg and f"{path}: equal by pixels to training image {path}" in msg
    assert not (tmp_path / "e").exists()  # refused before anything was written


def _training_folder(tmp_path: Path, copy_of: Path) -> Path:
    """A training corpus whose train split holds a losslessly re-encoded copy of ``copy_of``."""
    from pdc.data.shards import split_of
    from pdc.imageio import read_image

    train = tmp_path / "train"
    train.mkdir()
    name = next(f"copy{i}.webp" for i in range(100) if split_of(f"copy{i}.webp") == "train")
    Image.fromarray(read_image(copy_of)).save(train / name, lossless=True)
    return train / name


def test_fid_images_equal_to_training_images_are_refused(model_set, tiny_images, fid_images, tmp_path):
    from pdc.errors import DataError
    from pdc.rd import evaluate_model_set

    fid_file = sorted(fid_images.glob("*.png"))[1]
    copy = _training_folder(tmp_path, fid_file)
    with pytest.raises(DataError) as exc:
        evaluate_model_set(model_set, tiny_images, tmp_path / "e", fid_images=fid_images, training_data=copy.parent,
                           classic=[], gammas=(), progress=False)
    assert f"{fid_file}: equal by pixels to training image {copy}" in str(exc.value)
    assert not (tmp_path / "e").exists()


def _cli(args: list[str], cwd: Path, monkeypatch):
    from typer.testing import CliRunner

    from pdc.cli.main import app

    monkeypatch.chdir(cwd)
    return CliRunner().invoke(app, args, env={"PDC_NO_PROGRESS": "1", "COLUMNS": "200"})


QUICK = ["--limit", "1", "--crop", "64", "--no-fid", "--no-lpips", "--classic", "none", "--systems", "e2e",
         "--gammas", "none", "--no-decode"]


def test_cli_checks_the_projects_training_shards_by_default(model_set, tiny_images, tmp_path, monkeypatch):
    """`pdc evaluate` without --training-data checks the project's shards (pipeline.shards) when built."""
    from pdc.data.shards import build_shards

    test_file = sorted(tiny_images.glob("*.png"))[0]
    copy = _training_folder(tmp_path, test_file)
    build_shards(copy.parent, tmp_path / "data/shards", val_fraction=0.0, min_size=16)
    result = _cli(["evaluate", "--model", str(model_set), "--images", str(tiny_images), *QUICK], tmp_path, monkeypatch)
    assert result.exit_code != 0
    assert f"{test_file}: equal by pixels to training image data/shards/train-000000.tar:{copy.name}" in str(
        result.exception)
    assert not (tmp_path / "outputs").exists()


def test_cli_defaults_to_data_test_and_a_folder_of_its_own(model_set, tiny_images, tmp_path, monkeypatch):
    import shutil

    shutil.copytree(tiny_images, tmp_path / "data/test/kodak")
    result = _cli(["evaluate", "--model", str(model_set), *QUICK], tmp_path, monkeypatch)
    assert result.exit_code == 0, (result.output, result.exception)
    summary = json.loads((tmp_path / "outputs/evaluate/summary.json").read_text())
    assert summary["images"]["folder"] == "data/test/kodak"
    assert not (tmp_path / "eval").exists()


DVC_YAML = """
stages:
  shards:
    cmd: pdc data shards --src ${pipeline.data} --out ${pipeline.shards}
    outs:
    - ${pipeline.shards}
  codec:
    foreach: ${rate_points}
    do:
      cmd: pdc train codec -r ${key}
      outs:
      - models/stages/${key}/codec
      - checkpoints/${key}/codec:
          persist: true
      metrics:
      - metrics/${key}/codec.json:
          cache: false
  evaluate:
    cmd: pdc pipeline evaluate
    outs:
    - eval
"""


def test_cli_refuses_to_replace_dvc_outputs_without_force(model_set, tiny_images, tmp_path, monkeypatch):
    """The outs of dvc.yaml (templated from params.yaml) and of *.dvc files are the pipeline's."""
    (tmp_path / "dvc.yaml").write_text(DVC_YAML)
    (tmp_path / "params.yaml").write_text("rate_points: {r0: 0.1}\npipeline: {data: corpus, shards: data/packed}\n")
    (tmp_path / "data.dvc").write_text("outs:\n- md5: 0\n  path: corpus\n")
    for out, tracked in [("eval", "eval"), ("models/stages/r0/x", "models/stages"), ("data", "data/packed"),
                         ("corpus/kodak", "corpus"), ("metrics", "metrics"), (".", "data/packed")]:
        result = _cli(["evaluate", "--model", str(model_set), "--images", str(tiny_images), "--out", out, *QUICK],
                      tmp_path, monkeypatch)
        assert result.exit_code != 0
        assert f"DVC-tracked output {tracked} " in str(result.exception) and "--force" in str(result.exception)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.dvc", "dvc.yaml", "params.yaml"]
    result = _cli(["evaluate", "--model", str(model_set), "--images", str(tiny_images), "--out", "eval", "--force",
                   *QUICK], tmp_path, monkeypatch)
    assert result.exit_code == 0, (result.output, result.exception)
    assert (tmp_path / "eval/summary.json").is_file()


def test_the_pipelines_own_outputs_are_protected():
    """In this repository: every Layout output (read from the generated dvc.yaml) is refused."""
    from pdc.cli.evaluate import refuse_dvc_output
    from pdc.errors import PdcError
    from pdc.pipeline import Layout

    repo = Path(__file__).resolve().parents[2]
    lay = Layout(repo)
    for out in (lay.eval_dir, lay.shards_dir, lay.model_set, lay.stages_dir / "r0", lay.data_dir / "kodak"):
        with pytest.raises(PdcError, match="DVC-tracked output"):
            refuse_dvc_output(out)
    refuse_dvc_output(repo / "outputs" / "evaluate")  # the default is not one


def test_a_shards_folder_is_evaluated_on_its_val_split(model_set, tmp_path):
    import shutil

    from skimage import data as skdata

    from pdc.data.shards import build_shards, read_split
    from pdc.imageio import encode_png
    from pdc.rd import evaluate_model_set

    src = tmp_path / "corpus"
    src.mkdir()
    for i in range(8):
        (src / f"p{i}.png").write_bytes(encode_png(np.ascontiguousarray(skdata.astronaut()[i * 40 : i * 40 + 72, :80])))
    build_shards(src, tmp_path / "shards", shard_size=2, val_fraction=0.5, min_size=64)
    val = read_split(tmp_path / "shards", "val")
    assert 0 < len(val) < 8
    summary = evaluate_model_set(model_set, tmp_path / "shards", tmp_path / "e", training_data=tmp_path / "shards",
                                 classic=[], gammas=(), systems=["e2e"], decode=False)
    assert summary["images"]["count"] == len(val)
    shutil.rmtree(tmp_path / "e")


def test_pdc_eval_is_an_alias_of_pdc_evaluate(model_set, tiny_images, tmp_path):
    """One evaluation command: `pdc eval` takes evaluate's options, says it is an alias, gives the same numbers;
    --json writes the whole summary (per-image rows included), --rate picks one rate point."""
    from typer.testing import CliRunner

    from pdc.cli.main import app
    from pdc.rd import evaluate_model_set

    args = ["--model", str(model_set), "--images", str(tiny_images), "--rate", "1", "--systems", "e2e,codec",
            "--crop", "64", "--limit", "2", "--no-lpips", "--no-fid", "--classic", "none", "--gammas", "none"]
    runner = CliRunner(mix_stderr=False) if "mix_stderr" in CliRunner.__init__.__code__.co_varnames else CliRunner()
    viewed = {}
    for cmd in ("eval", "evaluate"):
        out = tmp_path / f"{cmd}.json"
        result = runner.invoke(app, [cmd, *args, "--out", str(tmp_path / cmd), "--json", str(out)],
                               env={"PDC_NO_PROGRESS": "1", "COLUMNS": "200"})
        assert result.exit_code == 0, (result.output, result.exception)
        assert ("alias of `pdc evaluate`" in result.stderr) == (cmd == "eval")
        viewed[cmd] = json.loads(out.read_text())
    direct = evaluate_model_set(model_set / json.loads((model_set / "index.json").read_text())["packages"][1]["name"],
                                tiny_images, tmp_path / "direct", limit=2, crop=64, classic=[], gammas=(),
                                systems=["e2e", "codec"], with_lpips=False, progress=False)
    for cmd in ("eval", "evaluate"):
        rows = {r["system"]: r for r in viewed[cmd]["rows"]}
        assert set(rows) == {"e2e", "codec"}
        for r in direct["rows"]:
            assert rows[r["system"]]["psnr"] == pytest.approx(r["psnr"]) and rows[r["system"]]["bpp"] == r["bpp"]
        assert all(len(viewed[cmd]["systems"][k]["points"][0]["per_image"]) == 2 for k in ("e2e", "codec"))


def test_perceptual_pick_is_an_opt_in_system(model_set, tiny_images, tmp_path):
    """corrdiff-pick runs only when named, writes decodable streams and is scored like any system."""
    from pdc.rd import evaluate_model_set

    res = evaluate_model_set(model_set, tiny_images, tmp_path / "e", limit=1, crop=64, steps=2, classic=[],
                             gammas=(), systems=["corrdiff", "corrdiff-pick"], progress=False)
    rows = {r["system"]: r for r in res["rows"] if r["point"] == "r0"}
    assert set(rows) == {"corrdiff", "corrdiff-pick"}
    assert rows["corrdiff-pick"]["decode_max_abs_diff"] <= 1 / 255
    assert rows["corrdiff-pick"]["lpips_vgg"] <= rows["corrdiff"]["lpips_vgg"] + 1e-6  # LS is a candidate
    default = evaluate_model_set(model_set, tiny_images, tmp_path / "d", limit=1, crop=64, steps=2, classic=[],
                                 gammas=(), with_lpips=False, progress=False)
    assert "corrdiff-pick" not in {r["system"] for r in default["rows"]}


def test_every_corrdiff_system_gets_its_own_white_and_high_band_control(tiny_images, tmp_path):
    """A model with a band-limited correction, least-squares CorrDiff and the pick beside e2e: four
    controls, each matched per image to its own target's PSNR, each compared with that target."""
    from pdc.config import parse_model_config
    from pdc.models.package import init_model, save_package
    from pdc.rd import evaluate_model_set
    from tests.rd.conftest import MICRO

    cfg = parse_model_config({**MICRO, "correction": {**MICRO["correction"], "lowpass_sigma": 1.0}})
    save_package(init_model(cfg, seed=0), tmp_path / "pkg", extra={"rate_point": 0.0018})
    out = tmp_path / "ev"
    evaluate_model_set(tmp_path / "pkg", tiny_images, out, limit=1, crop=64, gammas=(), progress=False,
                       with_lpips=False, classic=[], systems=("corrdiff", "corrdiff-pick", "e2e"), decode=False)
    systems = _per_image(out)
    controls = {"e2e-noise": "corrdiff", "e2e-noise-hf": "corrdiff", "e2e-noise-pick": "corrdiff-pick",
                "e2e-noise-hf-pick": "corrdiff-pick"}
    assert set(systems) == {"corrdiff", "corrdiff-pick", "e2e", *controls}
    summary = json.loads((out / "summary.json").read_text())
    assert {k: v["matched_to"] for k, v in summary["control"]["systems"].items()} == controls
    rows = {key: systems[key]["points"][0]["per_image"][0] for key in systems}
    for control, target in controls.items():
        assert rows[control]["target_psnr"] == pytest.approx(rows[target]["psnr"])
        if rows[target]["psnr"] < rows["e2e"]["psnr"]:
            assert abs(rows[control]["psnr"] - rows[target]["psnr"]) <= 0.1
    assert rows["e2e-noise-hf"]["psnr"] == pytest.approx(rows["e2e-noise"]["psnr"], abs=0.1)
    comps = json.loads((out / "bd_rate.json").read_text())["comparisons"]
    assert comps["corrdiff_pick_vs_e2e_noise_hf_pick_lpips"]["anchor"] == "e2e-noise-hf-pick"


def test_nobits_control_writes_mode_4_streams_and_a_paired_comparison(model_set, tiny_images, tmp_path):
    """corrdiff-nobits: real files with no λ section, decoded to the encoder's simulation; bd_rate.json
    carries corrdiff − corrdiff-nobits per rate point, image by image, with a 95 % interval."""
    from pdc.bitstream import Mode, Section, parse
    from pdc.rd import evaluate_model_set

    out = tmp_path / "ev"
    evaluate_model_set(model_set, tiny_images, out, limit=2, crop=64, gammas=(), progress=False, with_lpips=False,
                       classic=[], systems=("corrdiff", "corrdiff-nobits"))
    systems = _per_image(out)
    for point in systems["corrdiff-nobits"]["points"]:
        for row in point["per_image"]:
            stream = parse((out / "streams" / "corrdiff-nobits" / point["label"] / f"{row['image']}.pdc").read_bytes())
            assert stream.mode == Mode.CORRDIFF_NOBITS and Section.LAMBDA not in stream.sections
            assert row["lambda_bytes"] == 0 and row["decode_max_abs_diff"] <= 1e-5
    paired = json.loads((out / "bd_rate.json").read_text())["paired"]
    assert set(paired) == {"corrdiff_minus_corrdiff-nobits/r0", "corrdiff_minus_corrdiff-nobits/r1"}
    corr = {r["image"]: r for r in systems["corrdiff"]["points"][0]["per_image"]}
    nob = {r["image"]: r for r in systems["corrdiff-nobits"]["points"][0]["per_image"]}
    psnr = paired["corrdiff_minus_corrdiff-nobits/r0"]["psnr"]
    assert psnr["n"] == 2 and psnr["mean"] == pytest.approx(np.mean([corr[n]["psnr"] - nob[n]["psnr"] for n in corr]))
    assert psnr["ci95"][0] <= psnr["mean"] <= psnr["ci95"][1]
    assert paired["corrdiff_minus_corrdiff-nobits/r0"]["bpp"]["mean"] > 0  # the λ section's bits


def test_an_interrupted_evaluation_resumes_and_gives_what_an_uninterrupted_one_gives(model_set, tiny_images,
                                                                                      fid_images, tmp_path,
                                                                                      monkeypatch, capsys):
    """Killed after its first points, a rerun codes only what was not coded yet (the rest comes from
    ``.<out>.resume/``) and writes the same figures — bpp, PSNR, FID/KID, the matched-noise control — and
    the same streams as a run never interrupted; the cache goes once the output is written; a run with
    other settings (seed) does not reuse it."""
    import pdc.metrics.perceptual as perceptual
    import pdc.rd.runner as runner
    from pdc.rd import evaluate_model_set

    monkeypatch.setattr(perceptual, "fid_from_features", _fast_fid)
    jpeg = ClassicCodec("jpeg", "JPEG (Pillow)", "JPEG", "jpg", (5, 60), {"optimize": True})
    kw = dict(fid_images=fid_images, limit=1, crop=64, steps=2, gammas=(), progress=False, with_lpips=False,
              classic=[jpeg], systems=("corrdiff", "e2e"))
    whole = evaluate_model_set(model_set, tiny_images, tmp_path / "whole", **kw)

    coded = []
    real = runner._code_learned
    monkeypatch.setattr(runner, "_code_learned", lambda *a, **k: coded.append(1) or real(*a, **k))

    class Killed(Exception):
        pass

    def kill_after_three(point):  # r0's corrdiff, e2e and the matched-noise control
        if len(done) == 2:
            raise Killed
        done.append(point)

    done = []
    with pytest.raises(Killed):
        evaluate_model_set(model_set, tiny_images, tmp_path / "ev", on_point=kill_after_three, **kw)
    cache = tmp_path / ".ev.resume"
    assert cache.is_dir() and not (tmp_path / "ev").exists()
    assert len(coded) == 2 * 3  # rate point 0: corrdiff and e2e, 1 test + 2 FID images each
    coded.clear()
    resumed = evaluate_model_set(model_set, tiny_images, tmp_path / "ev", **kw)
    assert len(coded) == 2 * 3  # rate point 1 only
    assert "resuming, 9 coded image(s) kept" in capsys.readouterr().err  # with the control's
    assert not cache.exists()

    def figures(res):
        return sorted((r["system"], r["point"], r["bpp"], round(r["psnr"], 9), r["fid"], r["kid"])
                      for r in res["rows"])

    assert figures(resumed) == figures(whole)
    for f in (tmp_path / "whole" / "streams").rglob("*.*"):
        assert (tmp_path / "ev" / f.relative_to(tmp_path / "whole")).read_bytes() == f.read_bytes()

    with pytest.raises(Killed):
        done.clear()
        evaluate_model_set(model_set, tiny_images, tmp_path / "ev2", on_point=kill_after_three, **kw)
    coded.clear()
    evaluate_model_set(model_set, tiny_images, tmp_path / "ev2", **{**kw, "seed": 1})
    assert "starting afresh" in capsys.readouterr().err and len(coded) == 4 * 3


def test_refined_latent_systems_are_opt_in_and_compared_with_their_one_pass_twins(model_set, tiny_images, tmp_path):
    """e2e-refine and corrdiff-refine run only when named, write streams that decode to the encoder's
    simulation (the same decoder reads them), and are compared with e2e / corrdiff image by image and by
    BD-rate at the package's own λ_rd."""
    from pdc.rd import evaluate_model_set

    res = evaluate_model_set(model_set, tiny_images, tmp_path / "e", limit=2, crop=64, steps=2, classic=[], gammas=(),
                             systems=["e2e", "e2e-refine", "corrdiff", "corrdiff-refine"], with_lpips=False,
                             progress=False)
    rows = {(r["system"], r["point"]): r for r in res["rows"]}
    assert {s for s, _ in rows} >= {"e2e", "e2e-refine", "corrdiff", "corrdiff-refine"}
    for point in ("r0", "r1"):
        assert rows[("e2e-refine", point)]["decode_max_abs_diff"] <= 1 / 255
        assert rows[("corrdiff-refine", point)]["decode_max_abs_diff"] <= 1 / 255
    bd = json.loads((tmp_path / "e" / "bd_rate.json").read_text())
    assert bd["comparisons"]["e2e_refine_vs_e2e_psnr"]["anchor"] == "e2e"
    assert bd["comparisons"]["corrdiff_refine_vs_corrdiff_lpips"]["test"] == "corrdiff-refine"
    assert set(bd["paired"]) >= {"e2e-refine_minus_e2e/r0", "corrdiff-refine_minus_corrdiff/r1"}
    default = evaluate_model_set(model_set, tiny_images, tmp_path / "d", limit=1, crop=64, steps=2, classic=[],
                                 gammas=(), with_lpips=False, progress=False)
    assert not {"e2e-refine", "corrdiff-refine"} & {r["system"] for r in default["rows"]}
