"""Training step time of AMTL against ``full``, side by side in one process (issue 5).

The quickstart model (DeepFM with BN, dropout 0.2, d=10, batch 4096) on the prepared Frappe train
split: ``full``, AMTL in its search stage (mask networks + straight-through + budget penalty) and AMTL
in its fine-tune stage (frozen sizes). Steps are interleaved round-robin on the same batches (the
order rotates every step) so machine noise hits every setting alike; one pass over the train split
is one epoch. Reported: median step time, epoch time (sum of step times), ratio to ``full``.

    flock /tmp/embdim_speed.lock .venv/bin/python -W ignore benchmarks/amtl_speed.py --threads 2 --epochs 1
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from embdim.config import load_config
from embdim.recommender import build_recommender
from embdim.train.evaluate import batch_tensors
from embdim.train.optim import recommender_optimizers
from embdim.train.run import prepare_dataset
from embdim.train.trainer import training_step

WARMUP_STEPS = 3
BUDGET = {"kind": "fraction", "value": 0.45}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/experiments/quickstart.yaml")
    ap.add_argument("--dataset", default="frappe")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, [f"dataset={args.dataset}", "train.progress=false"])
    data = prepare_dataset(cfg, progress=False)
    schema, train = data.schema, data.splits["train"]
    settings = {"full": ("full", {}), "amtl search": ("amtl", {"budget": BUDGET}), "amtl finetune": ("amtl", {})}
    setups = {}
    for name, (method, options) in settings.items():
        torch.manual_seed(0)
        rec = build_recommender(
            schema.fields, schema.num_dense, cfg.embedding.dim, cfg.model.name, cfg.model_options(), method, options
        )
        if name == "amtl finetune":
            searcher = rec.embedding.searcher
            searcher.start_stage(next(s for s in searcher.stages() if s.name == "finetune"), rec.embedding.lookup)
        rec.train()
        setups[name] = (rec, recommender_optimizers(rec, cfg.train), [])
    bs = cfg.train.batch_size
    rng = np.random.default_rng(0)
    step = 0
    for _ in range(args.epochs):
        order = rng.permutation(len(train))
        for start in range(0, len(train), bs):
            ids, dense, labels = batch_tensors(train, order[start : start + bs])
            names = list(setups)
            names = names[step % len(names) :] + names[: step % len(names)]  # rotate who goes first
            for name in names:
                rec, opts, times = setups[name]
                t0 = time.perf_counter()
                training_step(rec, opts, ids, dense, labels, step)
                if step >= WARMUP_STEPS:
                    times.append(time.perf_counter() - t0)
            step += 1
    base = setups["full"][2]
    print(f"{args.dataset}: {len(train):,} train rows, batch {bs}, {len(base)} timed steps, {args.threads} threads")
    print("| setting | median step (ms) | timed epoch (s) | ratio to full (median) | ratio (epoch) |")
    print("|---|---|---|---|---|")
    for name, (_, _, times) in setups.items():
        med = statistics.median(times)
        print(
            f"| {name} | {med * 1e3:.1f} | {sum(times) / args.epochs:.2f} | "
            f"{med / statistics.median(base):.3f} | {sum(times) / sum(base):.3f} |"
        )


if __name__ == "__main__":
    main()
