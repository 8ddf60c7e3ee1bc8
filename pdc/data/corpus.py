"""The embedded default corpus: colour photos shipped inside the scikit-image wheel.

``pdc data init`` decodes them with :func:`pdc.imageio.read_image` and writes them as PNG with the
fixed encoder settings of :func:`pdc.imageio.encode_png`, so the bytes are identical on every run (for
the pinned Pillow and scikit-image) and ``data.dvc`` can pin them.  Grayscale, synthetic and tiny
samples of scikit-image (camera, coins, chessboard, colour wheel, logo, ...) are left out.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

from pdc.fsutil import staging_dir, write_file
from pdc.errors import DataError, ImageError
from pdc.imageio import encode_png, read_image

#: Output name -> file name inside ``skimage/data`` (all present in the 0.26 wheel, no download).
DEFAULT_CORPUS: dict[str, str] = {
    "astronaut": "astronaut.png",
    "chelsea": "chelsea.png",
    "coffee": "coffee.png",
    "hubble_deep_field": "hubble_deep_field.jpg",
    "ihc": "ihc.png",
    "motorcycle_left": "motorcycle_left.png",
    "motorcycle_right": "motorcycle_right.png",
    "retina": "retina.jpg",
    "rocket": "rocket.jpg",
}

DEFAULT_DEST = Path("data/raw/default")


def skimage_data_dir() -> Path:
    """The ``data`` folder of the installed scikit-image (found without importing it)."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("scikit-image is not installed; it carries the default corpus (pip install scikit-image)")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def init_default_corpus(dest: Path = DEFAULT_DEST, *, progress: Callable[[int, int], None] | None = None) -> list[Path]:
    """Write the default corpus as ``dest/<name>.png`` (folder replaced atomically); return the files."""
    src = skimage_data_dir()
    missing = [f for f in DEFAULT_CORPUS.values() if not (src / f).is_file()]
    if missing:
        raise DataError(f"{src}: scikit-image sample files missing: {', '.join(missing)}")
    dest = Path(dest)
    out: list[Path] = []
    with staging_dir(dest) as tmp:
        for i, (name, fname) in enumerate(sorted(DEFAULT_CORPUS.items())):
            try:
                pixels = read_image(src / fname)
            except ImageError as exc:  # pragma: no cover - a broken scikit-image install
                raise DataError(f"default corpus: {exc}") from None
            write_file(tmp / f"{name}.png", encode_png(pixels))
            out.append(dest / f"{name}.png")
            if progress:
                progress(i + 1, len(DEFAULT_CORPUS))
    return out
