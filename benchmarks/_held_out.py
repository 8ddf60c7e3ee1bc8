"""What the one-model screens share: their command line and their JSON output.

``ablate_correction.py``, ``screen_sampling.py`` and ``screen_privileged_bits.py`` each score one trained
model on held-out photos and print a Markdown table; ``--out`` keeps the rows.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def parser(doc: str, model_help: str, limit: int) -> argparse.ArgumentParser:
    """--model, --images, --limit, --seed and --out; the script adds its own options."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--model", type=Path, required=True, help=model_help)
    ap.add_argument("--images", type=Path, required=True, help="held-out images (not the training set)")
    ap.add_argument("--limit", type=int, default=limit)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="also write the rows as JSON here")
    return ap


def save_rows(out: Path | None, args: argparse.Namespace, rows: list[dict]) -> None:
    if out is not None:
        out.write_text(json.dumps({"images": str(args.images), "model": str(args.model), "rows": rows}, indent=1))
