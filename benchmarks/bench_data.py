"""Training-data throughput: random crops per second from WebDataset shards vs from a plain image folder.

Both sides do the same work: decode an 8-bit RGB PNG, take a random crop, flip, batch.  The source is
first normalized to PNG (``pdc data import`` rules) and sharded into a temp folder, so the shards hold
exactly the folder's bytes.  Rounds alternate the order (folder/shards, shards/folder, ...) to cancel
drift; each measurement skips one warm-up batch.

    .venv/bin/python benchmarks/bench_data.py                      # embedded default corpus
    .venv/bin/python benchmarks/bench_data.py --src ../shared/data/bsds500/train
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from pdc.data.corpus import init_default_corpus
from pdc.data.loader import make_loader
from pdc.data.shards import build_shards
from pdc.data.validate import import_folder


def rate(source: Path, crop: int, batch: int, batches: int, workers: int, seed: int) -> float:
    stream = make_loader(
        source,
        crop,
        batch,
        seed=seed,
        num_workers=workers,
        split="all" if not (source / "manifest.json").exists() else "train",
    )
    try:
        next(stream)  # warm-up: worker start, first decodes, shuffle buffer fill
        t0 = time.perf_counter()
        for _ in range(batches):
            next(stream)
        return batches * batch / (time.perf_counter() - t0)
    finally:
        stream.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", type=Path, default=None, help="image folder (default: the embedded default corpus)")
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--batches", type=int, default=10, help="timed batches per measurement")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers (clamped to shards / files)")
    ap.add_argument("--shard-size", type=int, default=16)
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="pdc-bench-data-") as tmp:
        root = Path(tmp)
        folder = root / "raw" / "corpus"
        t0 = time.perf_counter()
        if args.src is None:
            init_default_corpus(folder)
            label = "embedded default corpus"
        else:
            report = import_folder(args.src, folder, min_size=min(args.crop, 64))
            label = f"{args.src} ({report.counts['rejected']} rejected)"
        shards = root / "shards"
        manifest = build_shards(folder.parent, shards, shard_size=args.shard_size, val_fraction=0.0, min_size=1)
        n = manifest["counts"]["train"]
        print(
            f"source: {label}: {n} images, {len(manifest['shards']['train'])} shards "
            f"(prepared in {time.perf_counter() - t0:.1f} s)"
        )
        print(f"crop {args.crop}, batch {args.batch}, {args.batches} batches/measurement, workers {args.workers}")
        rates: dict[str, list[float]] = {"folder": [], "shards": []}
        for r in range(args.rounds):
            order = ["folder", "shards"] if r % 2 == 0 else ["shards", "folder"]
            for kind in order:
                src = folder.parent if kind == "folder" else shards
                rates[kind].append(rate(src, args.crop, args.batch, args.batches, args.workers, seed=r))
            print(
                f"round {r + 1}: folder {rates['folder'][-1]:7.1f} crops/s   shards {rates['shards'][-1]:7.1f} crops/s"
            )
        f, s = statistics.median(rates["folder"]), statistics.median(rates["shards"])
        print(f"median: folder {f:.1f} crops/s, shards {s:.1f} crops/s, shards/folder = {s / f:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
