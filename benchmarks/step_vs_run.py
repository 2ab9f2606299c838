"""`embdim run`'s end-to-end training rate against its own training step in isolation, side by side.

    .venv/bin/python -W ignore benchmarks/step_vs_run.py CONFIG [key=value ...] --steps 200

Both sides train the config's own model with its optimizers, L2 and clipping on the prepared
cache's training rows (``build_run_recommender``, ``recommender_optimizers``, ``training_step``):

- **isolated**: ``--steps`` batches are gathered into memory first, then only ``training_step`` is
  timed on them (median wall and CPU seconds per step); measured before and after the run, so a
  change of the machine's load between them shows;
- **run**: the trainer of ``embdim run`` for ``--steps`` steps (``train.max_steps``), evaluated once
  at the end; its ``result.json`` gives the steps-only rate (``samples_per_second``) and the
  end-to-end rate (``end_to_end_samples_per_second``: batches, steps and checkpoints; evaluations
  apart, in ``eval_seconds``).

Prints one markdown table, samples/s and each rate's ratio to the isolated median.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import statistics
import time

import numpy as np
import torch

from embdim.config import compose, validate
from embdim.train.batches import Prefetcher
from embdim.train.optim import recommender_optimizers
from embdim.train.run import prepare_dataset, run_dir_for, run_experiment
from embdim.train.trainer import build_run_recommender, training_step

WARMUP_STEPS = 5


def isolated_steps(cfg, data, steps: int) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds of each ``training_step`` on batches gathered beforehand (warm-up dropped)."""
    tc = cfg.train
    if tc.threads:
        torch.set_num_threads(tc.threads)
    torch.manual_seed(tc.seed)
    rec = build_run_recommender(cfg, data.schema)
    rec.train()
    optimizers = recommender_optimizers(rec, tc, lookup=rec.embedding.lookup)
    train = data.splits["train"]
    order = np.random.default_rng([tc.seed, 0, 0]).permutation(len(train))  # the run's first epoch
    with Prefetcher(train, order, tc.batch_size) as batches:
        gathered = list(itertools.islice(batches, steps + WARMUP_STEPS))
    wall, cpu = [], []
    for step, (ids, dense, labels) in enumerate(gathered):
        t0, c0 = time.perf_counter(), time.process_time()
        training_step(rec, optimizers, ids, dense, labels, step, tc.looked_up_l2, tc.clip_grad_norm)
        if step >= WARMUP_STEPS:
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    return wall, cpu


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--name", default="step_vs_run")
    args = ap.parse_args()
    limit = [f"train.max_steps={args.steps}", f"train.eval_every_steps={args.steps}", "train.progress=false"]
    cfg = validate(compose(args.config, [*args.overrides, f"name={args.name}", *limit]))
    data = prepare_dataset(cfg, progress=False)
    batch = cfg.train.batch_size
    before = isolated_steps(cfg, data, args.steps)
    shutil.rmtree(run_dir_for(cfg), ignore_errors=True)
    result = run_experiment(cfg)
    after = isolated_steps(cfg, data, args.steps)
    wall = statistics.median(before[0] + after[0])
    print(f"fields {len(data.schema.fields)}, table rows {sum(f.vocab_size for f in data.schema.fields):,}")
    print(
        f"isolated median step: before the run {statistics.median(before[0]) * 1e3:.1f} ms, "
        f"after {statistics.median(after[0]) * 1e3:.1f} ms; CPU {statistics.median(before[1] + after[1]) * 1e3:.0f} ms"
    )
    print("| measure | samples/s | vs isolated |")
    print("|---|---|---|")
    rates = {
        "isolated `training_step` (median of both)": batch / wall,
        "run: steps only (`samples_per_second`)": result["samples_per_second"],
        "run: end to end (`end_to_end_samples_per_second`)": result["end_to_end_samples_per_second"],
    }
    for name, rate in rates.items():
        print(f"| {name} | {rate:,.0f} | {rate * wall / batch:.2f} |")
    print(
        f"run: {result['train_seconds']:.1f} s in steps, eval {result['eval_seconds']:.1f} s; "
        f"load average at the end {os.getloadavg()[0]:.1f} (cores: {os.cpu_count()}); run in {run_dir_for(cfg)}"
    )


if __name__ == "__main__":
    main()
