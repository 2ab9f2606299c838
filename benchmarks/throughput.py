"""Training throughput of models with ``full`` embeddings on Criteo-shaped synthetic data.

Every table together holds about 1e6 rows (26 fields), d=16, batch 4096. Models are timed side by
side in one process, steps interleaved round-robin so machine noise hits all of them alike; the
median step time is reported as samples/s.

    flock /tmp/embdim_speed.lock .venv/bin/python -W ignore benchmarks/throughput.py --threads 2 --steps 30

Settings: torch or TorchRec lookup; dense, sparse (torch optimizer on sparse gradients) or fused
(fbgemm applies Adagrad / SGD inside the backward pass) table updates.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch

from embdim.config import TrainConfig
from embdim.data.schema import FieldInfo
from embdim.data.synthetic import criteo_cardinalities
from embdim.recommender import build_recommender
from embdim.train.optim import recommender_optimizers
from embdim.train.trainer import training_step

ZIPF_EXPONENT = 1.1
WARMUP_STEPS = 3
#: the setting every other one is compared with (ratios of median step times, wall and CPU)
BASELINE = "deepfm / fused adam"
# name -> (model, lookup backend, sparse tables, optimizer, fuse the tables' optimizer into backward).
# With sparse tables the models' n x 1 first-order table is sparse too (updated with the tables).
SETTINGS = {  # name -> (model, backend, sparse tables, optimizer, fuse tables, sparse first-order table)
    "fm / fused adam": ("fm", "torch", False, "adam", False, False),
    "deepfm / fused adam": ("deepfm", "torch", False, "adam", False, False),
    "deepfm / sparse adam": ("deepfm", "torch", True, "adam", False, False),
    "deepfm / sparse adagrad": ("deepfm", "torch", True, "adagrad", False, False),
    "deepfm / torchrec sparse adagrad": ("deepfm", "torchrec", True, "adagrad", False, False),
    "deepfm / torchrec fused adagrad": ("deepfm", "torchrec", False, "adagrad", True, False),
    "deepfm / torchrec fused adagrad + sparse first-order": ("deepfm", "torchrec", True, "adagrad", True, True),
    "deepfm / torchrec fused sgd": ("deepfm", "torchrec", False, "sgd", True, False),
    "dlrm / fused adam": ("dlrm", "torch", False, "adam", False, False),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocab", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--only", default="", help="comma-separated setting names (default: all)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    # tables sized like Criteo's 26 fields scaled to --vocab rows; ids Zipf-distributed within each field
    fields = [FieldInfo(f"C{i + 1}", int(n)) for i, n in enumerate(criteo_cardinalities(args.vocab))]
    print(f"fields {len(fields)}, rows in all tables {sum(f.vocab_size for f in fields):,}")
    setups = {}
    chosen = [s.strip() for s in args.only.split(",")] if args.only else list(SETTINGS)
    for name in chosen:
        model, backend, sparse, opt, fuse_tables, sparse_first_order = SETTINGS[name]
        torch.manual_seed(0)
        rec = build_recommender(
            fields, 0, args.dim, model, backend=backend, sparse=sparse, sparse_first_order=sparse_first_order
        )
        # train.fused also picks torch's fused kernels for the dense part: keep those on everywhere and
        # let only fuse_tables decide whether the lookup fuses the tables' optimizer into backward
        lookup = rec.embedding.lookup if fuse_tables else None
        opts = recommender_optimizers(rec, TrainConfig(optimizer=opt), lookup)
        setups[name] = (rec, opts, [], [])
    rng = np.random.default_rng(0)
    for step in range(args.steps + WARMUP_STEPS):
        ids = torch.from_numpy(np.stack([(rng.zipf(ZIPF_EXPONENT, args.batch) - 1) % f.vocab_size for f in fields], 1))
        dense = None
        labels = torch.from_numpy(rng.integers(0, 2, args.batch).astype(np.float32))
        for rec, opts, times, cpu in setups.values():
            t0, c0 = time.perf_counter(), time.process_time()
            training_step(rec, opts, ids, dense, labels, step)
            if step >= WARMUP_STEPS:
                times.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
    # process CPU time (all threads) per step is the work done, robust to other processes taking the
    # cores; wall time is the throughput a user sees (equal to CPU time / threads on an idle machine)
    base = setups.get(BASELINE)
    print(
        "| setting | median step (ms) | quartiles (ms) | samples/s | CPU ms/step | wall vs baseline | CPU vs baseline |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, (_, _, times, cpu) in setups.items():
        med, med_cpu = statistics.median(times), statistics.median(cpu)
        q1, _, q3 = statistics.quantiles(times, n=4)
        ratio = f"{statistics.median(base[2]) / med:.2f}x" if base else "-"
        cpu_ratio = f"{statistics.median(base[3]) / med_cpu:.2f}x" if base else "-"
        print(
            f"| {name} | {med * 1e3:.1f} | {q1 * 1e3:.1f}-{q3 * 1e3:.1f} | {args.batch / med:,.0f} "
            f"| {med_cpu * 1e3:.0f} | {ratio} | {cpu_ratio} |"
        )
    print(f"load average at the end: {os.getloadavg()[0]:.1f} (cores: {os.cpu_count()})")


if __name__ == "__main__":
    main()
