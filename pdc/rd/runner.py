"""``evaluate_model_set``: every rate point of a model set beside classic codecs, one metric code path.

For each rate point (one package of the set) the four systems that come out of the same model —
CorrDiff, diffusion-only (λ ≡ 0), the privileged e2e decoder and the hyperprior's own g_s — plus
CorrDiff at extra correction strengths γ (the distortion–perception knob), the control "e2e + matched
noise" (:mod:`pdc.rd.control`: the e2e reconstruction, same file and bpp, plus Gaussian noise whose σ
brings each image to CorrDiff's PSNR — the perceptual metrics must prefer CorrDiff to it, or its gain is
noise), with ``e2e_lpips`` the loss control "e2e-lpips" (another set's D_e, trained with the diffusion's
loss on the same codec, decoding the e2e files), and JPEG/WebP/AVIF through Pillow at several qualities,
code the same images:

* every file is really written (``streams/<system>/<point>/<image>.<ext>``) and bpp is 8 × its size on
  disk / pixels;
* reconstructions are decoded from those files (pdc streams by :func:`pdc.codec.decompress`, classic
  files by Pillow); for pdc streams the largest difference to the encoder's simulation is recorded;
* PSNR, MS-SSIM, LPIPS-alex (``lpips``, the headline) and LPIPS-VGG (``lpips_vgg``, a second backbone
  beside it, so a texture gain only one network sees stands out) come from :mod:`pdc.metrics` on the
  test images (mean over images); FID and KID from :mod:`pdc.metrics.perceptual` on 256×256 patches of
  a second, larger image set (HiFiC / MS-ILLM protocol: reconstructions of the full images, two patch
  grids), where the control's σ is matched per FID image in the same way.

Everything is written into a staging folder next to ``out`` and renamed into place at the end, so
``out`` holds either the previous complete evaluation or the new one. Each coded image is also kept in
``.<out>.resume/`` (:mod:`pdc.rd.resume`) until then: an interrupted evaluation, run again with the same
models, images and settings, continues where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pdc.config import RatePoint, parse_gammas
from pdc.errors import DataError, PdcError
from pdc.fsutil import replace_dir
from pdc.imageio import IMAGE_SUFFIXES, image_files, read_image, tensor_to_uint8, uint8_to_tensor
from pdc.metrics import MS_SSIM_MIN_SIDE, bpp, ms_ssim, psnr
from pdc.rd import report
from pdc.rd.classic import ClassicCodec, classic_codecs
from pdc.rd.control import PSNR_TOL_DB, match_noise, noise_seed
from pdc.rd.resume import ImageCache
from pdc.rd.systems import (CONTROL_KEY, E2E_LPIPS, E2E_LPIPS_KEY, OPT_IN_SYSTEMS, Point, System, classic_systems,
                             control_systems, learned_systems)

if TYPE_CHECKING:
    from pdc.metrics.perceptual import Kid

FORMAT = "pdc-rd/1"
#: γ values swept by default when the set has fewer rate points than a cubic BD fit needs.
DEFAULT_GAMMAS = (0.25, 0.5, 0.75)
PATCH = 256


def list_images(folder: Path, what: str = "images") -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: {what} folder does not exist")
    files = image_files(folder)
    if not files:
        raise DataError(f"{folder}: no images found ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return files


def load_test_images(source: Path, limit: int | None = None) -> list[tuple[str, np.ndarray]]:
    """``(name, uint8 image)`` of a test set: every image of a folder, or the val split of a shards folder."""
    from pdc.data.shards import MANIFEST, read_split

    source = Path(source)
    if (source / MANIFEST).is_file():
        named = read_split(source, "val")[: limit or None]
        if not named:
            raise DataError(f"{source}: the shards' val split is empty (raise pipeline.val_fraction or give a folder)")
        return named
    return [(p.name, read_image(p)) for p in list_images(source, "test images")[: limit or None]]


def refuse_training_images(named: Sequence[tuple[str, np.ndarray]], training_data: Path,
                           val_fraction: float | None = None) -> None:
    """Raise :class:`DataError` (one line, both files named) if any test image is, pixel for pixel, one the
    model trained on (:func:`pdc.data.testsets.refuse_known_images`)."""
    from pdc.data.testsets import refuse_known_images

    refuse_known_images(named, training_data, val_fraction)


def _labels(source: Path, named: Sequence[tuple[str, np.ndarray]]) -> list[tuple[str, np.ndarray]]:
    """Test images named by their file: ``folder/file`` for a folder, ``shards:path`` for a val split."""
    from pdc.data.shards import MANIFEST

    source = Path(source)
    if (source / MANIFEST).is_file():
        return [(f"{source} (val) {name}", img) for name, img in named]
    return [(str(source / name), img) for name, img in named]


def images_digest(images: Iterable[np.ndarray]) -> str:
    """Identity of a test set by content: SHA-256 over the images' pixel hashes, in order (the champion
    rule compares two evaluations only when this, and the crop, agree: :mod:`pdc.promotion`)."""
    from pdc.data.testsets import pixel_hash

    h = hashlib.sha256()
    for img in images:
        h.update(pixel_hash(img).encode() + b"\n")
    return h.hexdigest()


def center_crop(img: np.ndarray, size: int | None) -> np.ndarray:
    """The centre ``size``² crop of ``img`` (each side at most the image's); None or 0: the image itself."""
    if not size:
        return img
    h, w = img.shape[:2]
    s_h, s_w = min(size, h), min(size, w)
    top, left = (h - s_h) // 2, (w - s_w) // 2
    return np.ascontiguousarray(img[top : top + s_h, left : left + s_w])


def _options_digest(options: dict[str, Any]) -> str:
    """A short name for a classic codec's encoder options (part of its name in the resume cache)."""
    return hashlib.sha256(json.dumps(options, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _stems(paths: Sequence[Path]) -> list[str]:
    stems = [p.stem for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    return [f"{i:04d}_{s}" for i, s in enumerate(stems)]


def default_gammas(n_rate_points: int) -> tuple[float, ...]:
    return DEFAULT_GAMMAS if n_rate_points < 4 else ()


#: Written into every output folder: marks it as ours, so a re-run may replace it (even after DVC
#: removed some declared outputs from it).
MARKER = ".pdc-evaluate"


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise PdcError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        ok = (out / MARKER).is_file()
        if not ok:
            try:
                ok = json.loads((out / "summary.json").read_text()).get("format") == FORMAT
            except (OSError, ValueError, AttributeError):
                ok = False
        if not ok:
            raise PdcError(f"{out}: folder is not empty and holds no earlier `pdc evaluate` output; "
                           "choose another --out (it is replaced as a whole)")


class _Metrics:
    """The one metric code path for every system (LPIPS networks are built once: ``lpips_model`` caches)."""

    def __init__(self, with_lpips: bool) -> None:
        self.lpips = None
        if with_lpips:
            from pdc.metrics.perceptual import lpips

            self.lpips = lpips

    def __call__(self, rec: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
        h, w = ref.shape[-2:]
        out = {
            "psnr": psnr(rec, ref),
            "ms_ssim": ms_ssim(rec, ref) if min(h, w) >= MS_SSIM_MIN_SIDE else math.nan,
        }
        if self.lpips is not None:
            out["lpips"] = self.lpips(rec, ref, net="alex")
            out["lpips_vgg"] = self.lpips(rec, ref, net="vgg")
        return out


#: Codes image ``index`` (test images first, then FID images) into ``path`` (None: the system writes no
#: file of its own) and returns the reconstruction and the per-image record.
Coder = Callable[[int, np.ndarray, Path | None], tuple[torch.Tensor, dict[str, Any]]]
#: Reconstructions of one system at one rate point, by image index: float tensors for the test
#: images, uint8 arrays (what FID sees) for the FID images.
Kept = list[torch.Tensor | np.ndarray]


def _as_tensor(rec: torch.Tensor | np.ndarray) -> torch.Tensor:
    return rec if isinstance(rec, torch.Tensor) else uint8_to_tensor(rec)


def _e2e_file(e2e: Point, i: int) -> dict[str, Any]:
    """The per-image record of a system that writes no file and reuses e2e's: its bytes (no λ), timings and
    path (``stream``) of image ``i`` (test images first, then FID images)."""
    fid = i >= len(e2e.images)
    row = e2e.fid_images[i - len(e2e.images)] if fid else e2e.images[i]
    folder = "streams_fid" if fid else "streams"
    return {"bytes": row["bytes"], "lambda_bytes": 0, "stream": f"{folder}/e2e/{e2e.label}/{row['image']}.pdc",
            **{k: row[k] for k in ("encode_s", "decode_s") if k in row}}


def _matched_noise(e2e: Point, e2e_recs: Kept, target_recs: Kept, seed: int, band_sigma: float = 0.0) -> Coder:
    """A control's coder: image ``i``'s e2e reconstruction + noise matched to the target system's PSNR on
    it (``band_sigma`` > 0: noise above that low-pass only, :func:`pdc.rd.control.gaussian_noise`).

    Nothing is coded: the file is e2e's (its bytes and timings are copied, ``stream`` names it).
    """

    def code(i: int, img: np.ndarray, path: Path | None) -> tuple[torch.Tensor, dict[str, Any]]:
        ref = uint8_to_tensor(img)
        s = noise_seed(seed, i)
        m = match_noise(_as_tensor(e2e_recs[i]), ref, psnr(_as_tensor(target_recs[i]), ref), seed=s,
                        band_sigma=band_sigma)
        return m.image, {**_e2e_file(e2e, i), "noise_sigma": m.sigma, "noise_seed": s, "target_psnr": m.target_psnr}

    return code


def _e2e_lpips_members(members: Sequence[Path], alt: Path) -> list[tuple[Path, dict[str, Any]]]:
    """The packages (and their metadata) of ``alt`` (``--e2e-lpips``) for the evaluated ``members``, rate point by
    rate point. Each must hold a trained D_e on the very codec weights of its member (then its ŷ, and the e2e
    file, are the member's), and not one recorded as trained for MSE; else :class:`PdcError` naming both."""
    from pdc.models.package import PARTS, load_package, rate_packages, read_metadata, state_digest

    alts = rate_packages(alt)
    if len(alts) != len(members):
        raise PdcError(f"--e2e-lpips {alt}: has {len(alts)} rate point(s), the evaluated model {len(members)}")
    out = []
    for main, other in zip(members, alts):
        meta = read_metadata(other)
        parts = meta.get("parts", PARTS)
        if "privileged" not in parts:
            raise PdcError(f"--e2e-lpips {other}: holds no trained privileged decoder (parts: {', '.join(parts)}), "
                           f"needed to decode {main}'s latent (`pdc train privileged --loss diffusion`)")
        loss = (meta.get("privileged_loss") or {}).get("loss")
        if loss not in (None, "diffusion"):  # packages from before the record say nothing: accepted
            raise PdcError(f"--e2e-lpips {other}: its D_e was trained with loss {loss!r}, not 'diffusion': it is no "
                           f"e2e-lpips control for {main}")
        if state_digest(load_package(other).codec.state_dict()) != state_digest(load_package(main).codec.state_dict()):
            raise PdcError(f"--e2e-lpips {other}: its codec differs from {main}'s: e2e-lpips must decode the same "
                           "latent (train its D_e from that set's diffusion-stage package)")
        out.append((other, meta))
    return out


def _e2e_lpips(model, alt, e2e: Point) -> Coder:
    """The e2e-lpips coder: image ``i``'s ŷ as the e2e file carries it (``model``'s codec), decoded by ``alt``'s
    D_e. Nothing is coded: the codecs are equal, so the file is e2e's (its bytes and timings are copied)."""
    from pdc.codec import code_latent

    device = next(model.parameters()).device

    def code(i: int, img: np.ndarray, path: Path | None) -> tuple[torch.Tensor, dict[str, Any]]:
        h, w = img.shape[:2]
        with torch.no_grad():
            y_hat = code_latent(model, uint8_to_tensor(img).to(device)).y_hat
            rec = alt.privileged(y_hat)[..., :h, :w].clamp(0, 1).cpu()
        return rec, _e2e_file(e2e, i)

    return code


class _FidSet:
    """Originals of the FID set (held as uint8) and their Inception features, computed once."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.images: list[tuple[str, np.ndarray]] = []
        self.paths: list[Path] = []
        skipped = 0
        for p in paths:
            img = read_image(p)
            if min(img.shape[:2]) < PATCH:
                skipped += 1
                continue
            self.images.append((p.stem, img))
            self.paths.append(p)
        self.skipped = skipped
        self.reference: np.ndarray | None = None

    def labelled(self) -> list[tuple[str, np.ndarray]]:
        """``(file path, image)`` of every FID original (for the training-image check)."""
        return [(str(p), img) for p, (_, img) in zip(self.paths, self.images)]

    def features(self, images: Sequence[np.ndarray], chunk: int = 64) -> np.ndarray:
        from pdc.metrics.perceptual import extract_patches, inception_features

        buf: list[torch.Tensor] = []
        feats = []

        def flush() -> None:
            if buf:
                feats.append(inception_features([torch.cat(buf).float().div(255)]))
                buf.clear()

        for img in images:
            patches = extract_patches(uint8_to_tensor(img)).mul(255).round().to(torch.uint8)
            buf.append(patches)
            if sum(len(b) for b in buf) >= chunk:
                flush()
        flush()
        return np.concatenate(feats) if feats else np.zeros((0, 2048))

    def score(self, reconstructions: Sequence[np.ndarray]) -> tuple[float | None, Kid | None, int, str | None]:
        from pdc.metrics.perceptual import fid_from_features, kid_from_features

        if self.reference is None:
            self.reference = self.features([img for _, img in self.images])
        rec = self.features(reconstructions)
        if len(rec) < 2 or len(self.reference) < 2:
            return None, None, len(rec), "FID/KID need at least two 256×256 patches"
        return fid_from_features(self.reference, rec), kid_from_features(self.reference, rec), len(rec), None


def _code_learned(model, system: System, x: torch.Tensor, path: Path, *, steps: int | None, seed: int,
                  decode: bool) -> tuple[torch.Tensor, dict[str, Any]]:
    from pdc.codec import LambdaPick, compress, decompress
    from pdc.models.refine import LatentRefinement

    t0 = time.perf_counter()
    enc = compress(model, x, mode=system.mode, steps=steps, seed=seed, gamma=system.gamma,
                   pick=LambdaPick() if system.pick else None, refine=LatentRefinement() if system.refine else None)
    t1 = time.perf_counter()
    path.write_bytes(enc.data)
    info: dict[str, Any] = {"bytes": path.stat().st_size, "lambda_bytes": enc.lambda_bytes, "encode_s": t1 - t0}
    if decode:
        t2 = time.perf_counter()
        rec = decompress(model, path.read_bytes())
        info["decode_s"] = time.perf_counter() - t2
        info["decode_max_abs_diff"] = float((rec - enc.reconstruction).abs().max())
    else:
        rec = enc.reconstruction
    if enc.levels:
        info["levels"] = list(enc.levels)
    return rec, info


def _code_classic(codec: ClassicCodec, quality: int, img: np.ndarray, path: Path) -> tuple[torch.Tensor, dict[str, Any]]:
    t0 = time.perf_counter()
    data = codec.encode(img, quality)
    t1 = time.perf_counter()
    path.write_bytes(data)
    t2 = time.perf_counter()
    rec = codec.decode(path.read_bytes())
    t3 = time.perf_counter()
    return uint8_to_tensor(rec), {"bytes": path.stat().st_size, "lambda_bytes": 0, "encode_s": t1 - t0,
                                  "decode_s": t3 - t2}


def evaluate_model_set(
    model_dir: Path,
    images: Path,
    out: Path,
    *,
    fid_images: Path | None = None,
    limit: int | None = None,
    crop: int | None = None,
    steps: int | None = None,
    gammas: str | Sequence[float] | None = None,
    progress: bool = True,
    with_lpips: bool = True,
    fid_limit: int | None = None,
    seed: int = 0,
    classic: Sequence[ClassicCodec] | None = None,
    grid_rate: int = 0,
    decode: bool = True,
    systems: Sequence[str] | None = None,
    on_point: Callable[[Point], None] | None = None,
    training_data: Path | None = None,
    training_val_fraction: float | None = None,
    device: str = "cpu",
    e2e_lpips: Path | None = None,
) -> dict[str, Any]:
    """Evaluate every rate point of ``model_dir`` (a package or a model set) against the baselines.

    ``images``: test set — an image folder (e.g. Kodak) or a shards folder (its ``val`` split) —,
    ``limit`` first images, each centre-cropped to ``crop`` if given (0 or None: full images).
    ``training_data``: what the model trained on (shards: their train split; folder: its train split by
    ``training_val_fraction``); a test or FID image whose pixels equal a training image's is refused, with
    both files named, before anything is written (:func:`refuse_training_images`).
    ``fid_images``: FID/KID set (None: no FID), ``fid_limit`` first files, never cropped (images under
    256 px are skipped). ``gammas``: extra CorrDiff strengths, a sequence or a string such as
    ``"0.5,1.0"`` (None: 0.25/0.5/0.75 when the set has fewer than 4 rate points, else none; a γ equal
    to the model's own is skipped — that is the ``corrdiff`` system). ``classic``: the Pillow baselines (None: JPEG, WebP, AVIF
    where available). ``decode=False`` takes pdc reconstructions from the encoder's simulation instead
    of decoding the written files (identical by construction; faster). ``systems`` restricts the
    learned systems to these keys (corrdiff, diffusion, e2e, codec, corrdiff-g<γ>, and the opt-in
    corrdiff-pick); a matched-noise control (:func:`control_systems`) runs for each of corrdiff and
    corrdiff-pick that runs beside e2e, white and (band-limited correction) high-band.
    ``e2e_lpips``: a package or model set (as many rate points as ``model_dir``) whose D_e was trained with the
    diffusion's loss on the same codec (:func:`_e2e_lpips_members` refuses anything else): adds the system
    ``e2e-lpips`` (:data:`~pdc.rd.systems.E2E_LPIPS`: e2e's file decoded by that D_e), which needs e2e to run.

    Output layout in ``out`` (replaced as a whole): ``systems/<system>.json`` (CompressAI schema),
    ``rd.csv``, ``plots/<system>.csv`` (DVC plot data), ``rd_*.png``, ``dp_curve.png``, ``crops.png``,
    ``bd_rate.json``, ``metrics.json`` (compact: system → point → metric, and the BD-rates; for
    ``dvc metrics``), ``summary.json`` (everything, per image), ``streams/`` (every coded file) and
    ``streams_fid/``.

    Returns the summary (also written as ``summary.json``) with ``files`` (alias ``outputs``): every
    output file except the coded streams, whose folder is ``streams_dir``.
    """
    from pdc.devices import codec_device
    from pdc.models.package import load_package, rate_packages, read_metadata

    t_start = time.perf_counter()
    model_dir, images, out = Path(model_dir), Path(images), Path(out)
    members = rate_packages(model_dir)
    gammas = parse_gammas(gammas)
    if gammas is None:
        gammas = default_gammas(len(members))
    if crop is not None and crop < 0:
        raise PdcError(f"crop must be ≥ 0 (0 = full images), got {crop}")
    crop = crop or None
    named = load_test_images(images, limit)
    fid_paths = list_images(fid_images, "FID images")[: fid_limit or None] if fid_images is not None else []
    codecs = list(classic_codecs() if classic is None else classic)
    _check_out(out)

    test = [center_crop(img, crop) for _, img in named]
    names = _stems([Path(n) for n, _ in named])
    fid_set = _FidSet(fid_paths) if fid_paths else None
    if training_data is not None:
        refuse_training_images(_labels(images, named) + (fid_set.labelled() if fid_set else []), training_data,
                               training_val_fraction)
    if fid_set is not None and len(fid_set.images) == 0:
        raise DataError(f"{fid_images}: no image is at least {PATCH}×{PATCH} px (needed for FID patches)")
    fid_names = _stems([Path(n) for n, _ in fid_set.images]) if fid_set else []
    metric = _Metrics(with_lpips)

    # A γ equal to the model's own is the plain "corrdiff" system already: do not code it twice.
    first = read_metadata(members[0])  # what every rate point shares: correction settings, trained parts
    correction = (first.get("config") or {}).get("correction", {})
    own = correction.get("gamma", 1.0)
    skipped = tuple(g for g in gammas if abs(g - float(own)) < 1e-9)
    gammas = tuple(g for g in gammas if g not in skipped)
    learned = learned_systems(gammas)
    # A partial package (e.g. the shipped codec-only set) decodes some modes only: by default evaluate
    # those; systems named explicitly must all be decodable.
    from pdc.codec import decodable_modes
    from pdc.models.package import PARTS

    trained = tuple(first.get("parts", PARTS))
    usable = set(decodable_modes(trained))
    if systems is not None and E2E_LPIPS_KEY in systems:  # runs with --e2e-lpips, whether named or not
        if e2e_lpips is None:
            raise PdcError(f"system {E2E_LPIPS_KEY} needs --e2e-lpips: a package set whose D_e was trained with "
                           "the diffusion's loss (`pdc train privileged --loss diffusion`)")
        systems = [s for s in systems if s != E2E_LPIPS_KEY]
    if systems is None:
        not_decodable = [s.key for s in learned if s.mode not in usable]
        learned = [s for s in learned if s.mode in usable]
    else:
        not_decodable = []
        undecodable = [s for s in learned + list(OPT_IN_SYSTEMS) if s.key in systems and s.mode not in usable]
        if undecodable:
            raise PdcError(f"{model_dir}: holds trained {', '.join(trained)} networks only; "
                           f"{', '.join(s.key for s in undecodable)} cannot be decoded with it "
                           f"(decodable modes: {', '.join(m.label for m in decodable_modes(trained))})")
    if systems is not None:
        learned += [s for s in OPT_IN_SYSTEMS if s.key in systems]
        unknown = set(systems) - {s.key for s in learned}
        if unknown:
            have = [s.key for s in learned] + [s.key for s in OPT_IN_SYSTEMS if s not in learned]
            raise PdcError(f"unknown learned system(s) {sorted(unknown)} (have: {have})")
        learned = [s for s in learned if s.key in systems]
    # A matched-noise control needs its CorrDiff system (the PSNR targets) and e2e (the base images).
    keys = {s.key for s in learned}
    controls = control_systems(keys if "e2e" in keys else set(),
                               band_limited=float(correction.get("lowpass_sigma", 0.0)) > 0)
    kept_keys = ({"e2e"} | {c.matched_to for c in controls}) if controls else set()
    # The loss control decodes e2e's files: it needs e2e, and packages whose codec is the evaluated one.
    alt_members: list[tuple[Path, dict[str, Any]]] = []
    if e2e_lpips is not None:
        if "e2e" not in keys:
            raise PdcError(f"--e2e-lpips {e2e_lpips}: the e2e-lpips system decodes the e2e system's files; "
                           f"evaluate e2e too (learned systems here: {', '.join(sorted(keys)) or 'none'})")
        alt_members = _e2e_lpips_members(members, Path(e2e_lpips))
    classic_sys = classic_systems(codecs)
    n_points = (len(members) * (len(learned) + len(controls) + bool(alt_members))
                + sum(len(c.qualities) for c in codecs))
    n_fid = len(fid_set.images) if fid_set else 0
    from pdc.progress import progress_bar

    bar = progress_bar(n_points * (len(test) + n_fid), "evaluate", unit="code", enabled=progress)

    out.parent.mkdir(parents=True, exist_ok=True)
    cache = ImageCache(out.parent / f".{out.name}.resume", {
        "format": FORMAT,
        "models": [read_metadata(m)["hash"] for m in members],
        "images": images_digest(test), "crop": crop,
        "fid_images": images_digest(im for _, im in fid_set.images) if fid_set else None,
        "steps": steps, "seed": seed, "decode": decode, "lpips": with_lpips, "device": str(device),
    })
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        points: list[Point] = []
        grid: dict[tuple[str, str], tuple[np.ndarray, float]] = {}
        rate_info = []
        alt_info = []

        def folder(root: str, point: Point, ext: str | None) -> Path | None:
            if ext is None:
                return None
            path = tmp / root / point.system.key / point.label
            path.mkdir(parents=True, exist_ok=True)
            return path

        def run_point(point: Point, code: Coder, ext: str | None, in_grid: bool = True,
                      keep: Kept | None = None, cached_as: str | None = None) -> None:
            """Code every test (and FID) image with ``code``, score it, and record the point.

            ``ext`` None: the system writes no file (the control). ``keep``: list to collect the
            reconstructions in (by image index). ``cached_as``: the system's name in the resume cache
            (default its key) — one that names the weights it decodes with, where those are not the set's.
            """
            key, label = point.system.key, point.label
            cache_name = cached_as or key

            def coded(i: int, name: str, img: np.ndarray, path: Path | None,
                      scored: bool) -> tuple[np.ndarray, dict[str, Any]]:
                """Image ``i`` coded (or taken from the resume cache): its 8-bit reconstruction and record
                (``scored`` False, an FID image: its size and bits only)."""
                hit = cache.get(cache_name, label, i)
                if hit is not None:
                    rec8, row, stream = hit
                    if path is not None and stream is not None:
                        shutil.copyfile(stream, path)
                    return rec8, row
                rec, info = code(i, img, path)
                h, w = img.shape[:2]
                row = {"image": name, "height": h, "width": w, "bpp": bpp(info["bytes"], h, w), "bytes": info["bytes"]}
                if scored:
                    row = {**row, **info, **metric(rec, uint8_to_tensor(img))}
                rec8 = tensor_to_uint8(rec)
                cache.put(cache_name, label, i, rec8, row, path)
                return rec8, row

            tfolder = folder("streams", point, ext)
            for i, (name, img) in enumerate(zip(names, test)):
                rec8, row = coded(i, name, img, tfolder and tfolder / f"{name}.{ext}", True)
                point.images.append(row)
                if keep is not None:
                    keep.append(uint8_to_tensor(rec8))
                if i == 0 and in_grid:
                    grid[(key, label)] = (rec8, row["bpp"])
                bar.update(1)
            fid_recs = []
            if fid_set is not None:
                ffolder = folder("streams_fid", point, ext)
                for j, (name, img) in enumerate(zip(fid_names, (im for _, im in fid_set.images))):
                    rec8, row = coded(len(test) + j, name, img, ffolder and ffolder / f"{name}.{ext}", False)
                    point.fid_images.append(row)
                    fid_recs.append(rec8)
                    if keep is not None:
                        keep.append(rec8)
                    bar.update(1)
                point.fid, kid, point.fid_patches, point.fid_note = fid_set.score(fid_recs)
                if kid is not None:
                    point.kid, point.kid_std, point.kid_subset_size = kid.mean, kid.std, kid.subset_size
            points.append(point)
            if on_point is not None:
                on_point(point)

        for r, member in enumerate(members):
            meta = read_metadata(member)
            model = load_package(member).to(codec_device(device))
            rp = RatePoint.from_meta(meta.get("rate_point"))
            label = rp.name if rp is not None and rp.name else f"r{r}"
            rate_info.append({"label": label, "package": str(member), "hash": meta["hash"],
                              "lambda_rd": rp.lambda_rd if rp else None, "config": meta.get("config")})
            kept: dict[str, Kept] = {}
            done: dict[str, Point] = {}
            for system in learned:
                uses_diffusion = system.mode.uses_diffusion
                k = (steps or model.config.diffusion.steps) if uses_diffusion else None
                corrdiff = system.mode.name == "CORRDIFF"
                gamma = (model.config.correction.gamma if system.gamma is None else system.gamma) if corrdiff else None
                point = Point(system, label, rate_index=r, gamma=gamma, steps=k,
                              lambda_levels=model.config.correction.levels if corrdiff else None)
                keep = kept.setdefault(system.key, []) if system.key in kept_keys else None
                run_point(point, lambda i, img, path, model=model: _code_learned(
                    model, system, uint8_to_tensor(img), path, steps=steps, seed=seed, decode=decode),
                    "pdc", in_grid=r == grid_rate, keep=keep)
                done[system.key] = point
            for control in controls:
                sigma = model.config.correction.lowpass_sigma if control.high_band else 0.0
                run_point(Point(control, label, rate_index=r),
                          _matched_noise(done["e2e"], kept["e2e"], kept[control.matched_to], seed, sigma), None,
                          in_grid=r == grid_rate and control.key == CONTROL_KEY)
            if alt_members:
                alt_path, alt_meta = alt_members[r]
                alt = load_package(alt_path).to(codec_device(device))
                run_point(Point(E2E_LPIPS, label, rate_index=r), _e2e_lpips(model, alt, done["e2e"]), None,
                          in_grid=r == grid_rate, cached_as=f"{E2E_LPIPS_KEY}-{alt_meta['hash'][:16]}")
                alt_info.append({"label": label, "package": str(alt_path), "hash": alt_meta["hash"],
                                 "privileged_loss": alt_meta.get("privileged_loss")})
                del alt
            del model, kept

        for system in classic_sys:
            codec = system.codec
            for q in codec.qualities:
                label = f"q{q}"
                point = Point(system, label, quality=q)
                run_point(point, lambda i, img, path: _code_classic(codec, q, img, path), codec.ext,
                          cached_as=f"{system.key}-{_options_digest(codec.options)}")
        bar.close()

        summary = _write_outputs(
            tmp, points, grid, names, test,
            context={
                "format": FORMAT,
                "model": str(model_dir),
                "rate_points": rate_info,
                "images": {"folder": str(images), "count": len(test), "files": names, "crop": crop,
                           "digest": images_digest(img for _, img in named)},
                "fid_images": None if fid_set is None else {
                    "folder": str(fid_images), "count": len(fid_set.images), "skipped_under_256px": fid_set.skipped,
                    "protocol": "InceptionV3 pool features of 256×256 patches: aligned grid + grid shifted by 128 px",
                },
                "steps": steps,
                "gammas": list(gammas),
                "gammas_skipped_as_model_default": list(skipped),
                "systems_not_decodable": not_decodable,
                "seed": seed,
                "lpips": with_lpips,
                "control": None if not controls else {
                    "systems": {c.key: {"base": "e2e", "matched_to": c.matched_to,
                                        "noise": "above the correction low-pass" if c.high_band else "white"}
                                for c in controls},
                    "metric": "psnr", "tolerance_db": PSNR_TOL_DB,
                    "noise_seed": "pdc.rd.control.noise_seed(seed, image index: test, then FID)",
                },
                "e2e_lpips": None if not alt_members else {
                    "model": str(e2e_lpips), "base": "e2e", "rate_points": alt_info,
                    "note": "codec weights equal to the evaluated set's (checked): the e2e files and bytes, ŷ "
                            "decoded by this set's D_e; privileged_loss is what its package records (null: "
                            "not recorded)",
                },
                "decoded_from_files": decode,
                "classic": {c.key: {"format": c.pil_format, "qualities": list(c.qualities), "options": c.options}
                            for c in codecs},
            },
            grid_rate=grid_rate,
            t_start=t_start,
        )
        (tmp / MARKER).write_text(FORMAT + "\n")
        files = [out / Path(f).relative_to(tmp) for f in summary.pop("_files")]
        summary["out"] = str(out)
        summary["streams_dir"] = str(out / "streams")
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # the resume cache stays: a rerun continues from it
        raise
    cache.discard()
    summary["files"] = [str(f) for f in files]
    summary["outputs"] = summary["files"]
    return summary


def _write_outputs(tmp: Path, points: list[Point], grid: dict, names: list[str], test: list[np.ndarray], *,
                   context: dict[str, Any], grid_rate: int, t_start: float) -> dict[str, Any]:
    files: list[Path] = []
    n, crop = context["images"]["count"], context["images"]["crop"]
    what = f"{n} image(s) of {Path(context['images']['folder']).name}" + (f", centre crop {crop}px" if crop else "")
    files += report.write_compressai_json(tmp, points, description=what)
    rows = [p.row() for p in points]
    report.write_csv(tmp / "rd.csv", rows)
    files.append(tmp / "rd.csv")
    files += report.write_plot_data(tmp, points)

    for metric, fname in (("psnr", "rd_psnr.png"), ("ms_ssim", "rd_ms_ssim.png"), ("lpips", "rd_lpips.png"),
                          ("lpips_vgg", "rd_lpips_vgg.png"), ("fid", "rd_fid.png")):
        fid = context["fid_images"]
        title = f"bpp vs {report.METRIC_LABELS[metric]} — " + (
            what if metric != "fid" else f"{fid['count'] if fid else 0} image(s) of {Path(fid['folder']).name if fid else ''}")
        if report.rd_plot(tmp / fname, points, metric, title):
            files.append(tmp / fname)

    bd = report.bd_report(points)
    report.dump_json(tmp / "bd_rate.json", bd)
    files.append(tmp / "bd_rate.json")
    if report.dp_plot(tmp / "dp_curve.png", bd["distortion_perception"],
                      f"Distortion–perception (γ sweep) — {what}"):
        files.append(tmp / "dp_curve.png")

    grid_label = context["rate_points"][grid_rate]["label"] if grid_rate < len(context["rate_points"]) else f"r{grid_rate}"
    panels = [(f"original ({names[0]})", test[0])]
    ref_bpp = grid.get(("corrdiff", grid_label), (None, None))[1]
    for key in ("corrdiff", "diffusion", "e2e", E2E_LPIPS_KEY, CONTROL_KEY, "codec"):
        if (key, grid_label) in grid:
            img, b = grid[(key, grid_label)]
            name = next(p.system.name for p in points if p.system.key == key)
            panels.append((f"{name}\n{b:.3f} bpp", img))
    for key in dict.fromkeys(p.system.key for p in points if p.system.kind == "classic"):
        cands = [(lab, v) for (k, lab), v in grid.items() if k == key]
        if not cands or ref_bpp is None:
            continue
        lab, (img, b) = min(cands, key=lambda c: abs(c[1][1] - ref_bpp))
        name = next(p.system.name for p in points if p.system.key == key)
        panels.append((f"{name} {lab}\n{b:.3f} bpp", img))
    report.crop_grid(tmp / "crops.png", panels, f"Rate point {grid_label}, same centre crop of {names[0]}")
    files.append(tmp / "crops.png")

    metrics = {
        "systems": {key: {p.label: {k: p.metrics()[k] for k in report.QUALITY_METRICS}
                          for p in pts} for key, pts in report.by_system(points).items()},
        "bd_rate": {name: res["value"] for name, res in bd["comparisons"].items()},
    }
    report.dump_json(tmp / "metrics.json", metrics)
    files.append(tmp / "metrics.json")

    summary = {
        **context,
        "systems": {
            key: {"name": pts[0].system.name, "kind": pts[0].system.kind, "description": pts[0].system.description,
                  "points": [_point_summary(p) for p in pts]}
            for key, pts in report.by_system(points).items()
        },
        "rows": rows,
        "bd_rate": bd,
        "elapsed_s": time.perf_counter() - t_start,
    }
    files.append(tmp / "summary.json")
    report.dump_json(tmp / "summary.json", summary)
    summary["_files"] = files
    return report.clean({k: v for k, v in summary.items() if k != "_files"}) | {"_files": files}


def _point_summary(p: Point) -> dict[str, Any]:
    """A point in ``summary.json``: identification, aggregated metrics, λ per step (CorrDiff), per image."""
    out = {"label": p.label, "gamma": p.gamma, "steps": p.steps, "quality": p.quality, "fid_note": p.fid_note,
           **p.metrics()}
    lam = p.mean_lambda_per_step()
    if lam is not None:
        out["mean_lambda_per_step"] = lam
    return out | {"per_image": p.images} | ({"per_fid_image": p.fid_images} if p.fid_images else {})
