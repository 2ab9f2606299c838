"""MLET training speed and memory next to ``full`` at the same d, measured side by side.

Both models train in one process on the same batches; within every step pair the order of the
two methods alternates, so machine noise and cache effects hit both alike. Reported: median step
time, the summed time of one epoch (``--data frappe``: every training batch of the prepared
Frappe cache once), their ratio, and the table memory while training (A + B, and with Adam's two
moment buffers) next to the collapsed inference size.

    flock /tmp/embdim_speed.lock .venv/bin/python -W ignore benchmarks/mlet_speed.py --data frappe --dim 16
    flock /tmp/embdim_speed.lock .venv/bin/python -W ignore benchmarks/mlet_speed.py --data criteo --dim 16 --steps 30

``--data criteo``: 26 Criteo-shaped fields with ``--vocab`` rows in all, Zipf ids (as in
``benchmarks/throughput.py``), ``--steps`` timed steps after warm-up.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from embdim.config import TrainConfig, load_config
from embdim.data.schema import FieldInfo
from embdim.data.synthetic import criteo_cardinalities
from embdim.recommender import Recommender, build_recommender
from embdim.train.optim import recommender_optimizers
from embdim.train.run import prepare_dataset
from embdim.train.trainer import training_step

ROOT = Path(__file__).resolve().parents[1]
WARMUP_STEPS = 3
ZIPF_EXPONENT = 1.1
ADAM_STATE_PER_PARAM = 2  # exp_avg and exp_avg_sq
FLOAT_BYTES = 4


def _batches_frappe(batch: int, seed: int):
    cfg = load_config(ROOT / "configs" / "experiments" / "quickstart.yaml", ["train.progress=false"])
    data = prepare_dataset(cfg, progress=False)
    train = data.splits["train"]
    order = np.random.default_rng(seed).permutation(len(train))
    batches = []
    for start in range(0, len(train), batch):
        idx = order[start : start + batch]
        ids = torch.from_numpy(np.take(train.ids, idx, axis=0).astype(np.int64))
        batches.append((ids, torch.from_numpy(np.take(train.labels, idx, axis=0))))
    return data.schema.fields, batches, cfg


def _batches_criteo(vocab: int, batch: int, steps: int, seed: int):
    fields = [FieldInfo(f"C{i + 1}", int(n)) for i, n in enumerate(criteo_cardinalities(vocab))]
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(steps + WARMUP_STEPS):
        ids = np.stack([(rng.zipf(ZIPF_EXPONENT, batch) - 1) % f.vocab_size for f in fields], 1)
        batches.append((torch.from_numpy(ids), torch.from_numpy(rng.integers(0, 2, batch).astype(np.float32))))
    return fields, batches


def _setup(fields, dim: int, method: str, options: dict, sparse: bool, model_options: dict):
    torch.manual_seed(0)
    rec = build_recommender(fields, 0, dim, "deepfm", model_options, method, options, sparse=sparse, init_std=1e-4)
    return rec, recommender_optimizers(rec, TrainConfig(optimizer="adam"))


def _step(rec: Recommender, opts, ids, labels) -> float:
    t0 = time.perf_counter()
    training_step(rec, opts, ids, None, labels, 0)
    return time.perf_counter() - t0


def _memory(rec: Recommender) -> tuple[int, int]:
    """(training table bytes: raw tables + searcher parameters, the same with Adam's moments)."""
    params = sum(p.numel() for p in rec.embedding.lookup.parameters())
    params += sum(p.numel() for p in rec.embedding.searcher.parameters())
    return params * FLOAT_BYTES, params * FLOAT_BYTES * (1 + ADAM_STATE_PER_PARAM)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", choices=["frappe", "criteo"], default="frappe")
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--multiple", type=float, default=4.0, help="k = multiple * d")
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--vocab", type=int, default=1_000_000, help="criteo: rows in all tables")
    ap.add_argument("--steps", type=int, default=30, help="criteo: timed steps")
    ap.add_argument("--sparse", action="store_true", help="sparse gradients + SparseAdam for the tables")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.data == "frappe":
        fields, batches, cfg = _batches_frappe(args.batch, seed=0)
        model_options = cfg.model.options
    else:
        fields, batches = _batches_criteo(args.vocab, args.batch, args.steps, seed=0)
        model_options = {}
    k = round(args.multiple * args.dim)
    setups = {
        "full": _setup(fields, args.dim, "full", {}, args.sparse, model_options),
        "mlet": _setup(fields, args.dim, "mlet", {"inner_dim": k}, args.sparse, model_options),
    }
    times: dict[str, list[float]] = {name: [] for name in setups}
    for i, (ids, labels) in enumerate(batches):
        names = list(setups) if i % 2 == 0 else list(reversed(setups))  # alternate who goes first
        for name in names:
            elapsed = _step(*setups[name], ids, labels)
            if args.data == "criteo" and i < WARMUP_STEPS:
                continue
            times[name].append(elapsed)
    rows = sum(f.vocab_size for f in fields)
    print(
        f"data {args.data}, {len(fields)} fields, {rows:,} rows, d={args.dim}, k={k}, batch {args.batch}, "
        f"{'sparse' if args.sparse else 'dense'} Adam tables, threads {args.threads}, {len(times['full'])} steps each"
    )
    print(
        "| method | median step (ms) | summed steps (s) | step ratio vs full | sum ratio vs full | "
        "training tables (MiB) | + Adam moments (MiB) | inference tables (MiB) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    base_med, base_sum = statistics.median(times["full"]), sum(times["full"])
    inference = rows * args.dim * FLOAT_BYTES / 2**20
    for name, (rec, _) in setups.items():
        med, total = statistics.median(times[name]), sum(times[name])
        train_b, with_adam = _memory(rec)
        print(
            f"| {name} | {med * 1e3:.1f} | {total:.2f} | {med / base_med:.2f} | {total / base_sum:.2f} | "
            f"{train_b / 2**20:.2f} | {with_adam / 2**20:.2f} | {inference:.2f} |"
        )


if __name__ == "__main__":
    main()
