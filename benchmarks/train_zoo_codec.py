"""Train the shipped codecs (pdc/zoo/small): one anchor rate point from scratch, the others warm-started.

A hyperprior fine-tuned to a neighbouring λ_rd converges far faster than one trained from scratch, so on
two CPU cores the anchor (``--anchor``, the middle rate point) is trained from scratch for
``--anchor-steps`` (lr 1e-3, 200 warm-up steps, cosine to 5 %) and every other rate point continues from
the anchor's weights for ``--finetune-steps`` at ``--finetune-lr`` (cosine decay to 5 %, no warm-up). Batch,
crop and architecture are the `small` profile's. Every run resumes from its checkpoint after a kill; a rate
point whose package exists is skipped. The result is a model set of codec-only packages::

    .venv/bin/python benchmarks/train_zoo_codec.py --data data/shards --out outputs/zoo-codec
    # or, to fine-tune while the anchor still trains: pdc train export <anchor checkpoint> -r r1 -o warm/r1
    .venv/bin/python benchmarks/train_zoo_codec.py --only r0 --init warm/r1 ; … --only r2 --init warm/r1
    # then: pdc evaluate -m outputs/zoo-codec --systems codec,jpeg,webp ; cp -r outputs/zoo-codec pdc/zoo/small
    # continue every rate point of a shipped set from its own weights (how the shipped set grows):
    .venv/bin/python benchmarks/train_zoo_codec.py --continue-from pdc/zoo/small --finetune-steps 6000 \
        --finetune-lr 2e-4 --out outputs/zoo-codec-cont

Rate points and the codec architecture come from params.yaml (profile ``small``), whose codec stage
starts from the shipped weights (``train.codec_init: shipped``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pdc.config import load_params
from pdc.models.package import write_model_set
from pdc.stages import run_stage


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="data/shards", help="training shards (their train split is used)")
    ap.add_argument("--out", type=Path, default=Path("outputs/zoo-codec"), help="model set to write")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--profile", default="small")
    ap.add_argument("--anchor", default=None, help="rate point trained from scratch (default: the middle one)")
    ap.add_argument("--anchor-steps", type=int, default=7000)
    ap.add_argument("--finetune-steps", type=int, default=4000)
    ap.add_argument("--finetune-lr", type=float, default=3e-4)
    ap.add_argument("--only", default=None, help="comma-separated rate points to train now (others must exist)")
    ap.add_argument("--init", type=Path, default=None,
                    help="package the fine-tuned rate points start from (default: the anchor's; e.g. an earlier "
                         "state of it written by `pdc train export`)")
    ap.add_argument("--continue-from", type=Path, default=None,
                    help="a model set: every rate point fine-tunes from its own package there (no anchor run)")
    args = ap.parse_args()

    params = load_params(args.params, args.profile)
    names = params.rate_names()
    anchor = args.anchor or names[len(names) // 2]
    prof = params.active

    def recipe(**codec) -> type(params):
        train = prof.train.model_copy(update={"codec_init": "scratch", "codec": prof.train.codec.model_copy(
            update={"lr_schedule": "cosine", **codec})})
        return params.model_copy(update={"profiles": {**params.profiles, args.profile: prof.model_copy(
            update={"train": train})}})

    scratch = recipe(steps=args.anchor_steps, lr=1e-3, warmup_steps=200, min_lr_ratio=0.05)
    finetune = recipe(steps=args.finetune_steps, lr=args.finetune_lr, warmup_steps=0, min_lr_ratio=0.05)
    only = set(args.only.split(",")) if args.only else set(names)
    for name in [anchor] + [n for n in names if n != anchor]:
        out = args.out / name
        if out.is_dir() or name not in only:
            continue
        if args.continue_from is not None:
            init = args.continue_from / name
        else:
            init = None if name == anchor else (args.init or args.out / anchor)
        res = run_stage("codec", scratch if init is None else finetune, name, data=args.data, out=out, init=init,
                        workdir=args.out.parent / f"{args.out.name}-ckpt" / name,
                        metrics=args.out.parent / f"{args.out.name}-metrics" / f"{name}.json")
        print(f"{name}: {res['steps']} steps, bpp {res.get('bpp', float('nan')):.4f}, "
              f"psnr {res.get('psnr', float('nan')):.2f} dB (training crops)", flush=True)
    if all((args.out / n).is_dir() for n in names):
        write_model_set(args.out.parent / f"{args.out.name}-set", [args.out / n for n in names])
        print(f"model set: {args.out.parent / f'{args.out.name}-set'}")


if __name__ == "__main__":
    main()
