"""Progress bars: one library (tqdm) for every loop in pdc, on stderr; ``PDC_NO_PROGRESS=1`` turns them off
(tests, Ray workers, logs)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tqdm import tqdm


def progress_bar(total: int | None, desc: str, unit: str = "it", initial: int = 0, enabled: bool = True,
                 terminal_only: bool = False) -> "tqdm":
    """A tqdm bar; ``terminal_only`` hides it (and leaves no line behind) when stderr is not a terminal."""
    from tqdm.auto import tqdm

    off = not enabled or os.environ.get("PDC_NO_PROGRESS") == "1"
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=not terminal_only,
                disable=True if off else (None if terminal_only else False))


@contextmanager
def progress_callback(desc: str) -> Iterator[Callable[[int, int], None]]:
    """A terminal-only bar driven by a ``(done, total)`` callback (the data commands' progress hook)."""
    bar = progress_bar(None, desc, terminal_only=True)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        yield update
    finally:
        bar.close()
