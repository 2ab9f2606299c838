"""PEP search speed: step time of ``pep`` vs ``full``, and of a whole-table threshold (the official approach) vs ours.

Three variants of one DeepFM are timed side by side in one process, steps interleaved round-robin
so machine noise hits all alike; medians are reported. A PEP step includes what its search epoch
pays: the threshold on the looked-up rows, the drift and the scheduled whole-table sparsity
measurement (every ``measure_every_steps``, amortised).

- ``full``: plain embeddings.
- ``pep``: this project's PEP with its defaults (threshold on the looked-up rows only; per-row
  thresholds updated row-wise in the backward pass).
- ``pep, eager threshold``: the same with ``fused_threshold=false`` (the soft threshold as separate
  eager ops instead of compiled kernels).
- ``pep whole-table``: the official code's forward: ``S(V, s)`` over the whole ``n x d`` table every
  step, then the lookup; its thresholds get a dense gradient and the run's Adam, as in that code.

(A fourth variant, dense Adam on per-row thresholds with the looked-up forward, was measured and
its option removed: BENCHMARKS.md, "Row-wise thresholds".)

    flock /tmp/embdim_speed.lock .venv/bin/python -W ignore benchmarks/pep_speed.py --shape criteo --steps 20
    flock /tmp/embdim_speed.lock .venv/bin/python -W ignore benchmarks/pep_speed.py --shape frappe --steps 40

``--shape criteo``: 26 Criteo-shaped fields, ``--vocab`` rows in all (default 1e6), Zipf ids, d=16,
batch 4096. ``--shape frappe``: the 10 Frappe fields' vocabularies (5,389 rows), d=10, batch 4096,
DeepFM with batch norm and dropout as in the quickstart. Optimizer: fused dense Adam (the
quickstart's) or ``--sparse`` (SparseAdam tables).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from torch import nn

from embdim.config import TrainConfig
from embdim.data.schema import FieldInfo
from embdim.data.synthetic import criteo_cardinalities
from embdim.recommender import Recommender, build_recommender
from embdim.searchers.pep import PEPSearcher, soft_threshold
from embdim.train.optim import recommender_optimizers

ZIPF_EXPONENT = 1.1
WARMUP_STEPS = 10  # untimed: covers the first scheduled count, which (like the first step) compiles once per run
FRAPPE_VOCABS = {  # the rebuilt Frappe set's vocabularies (cache schema.json)
    "user": 956,
    "item": 4083,
    "daytime": 8,
    "weekday": 8,
    "isweekend": 3,
    "homework": 4,
    "cost": 3,
    "weather": 10,
    "country": 81,
    "city": 233,
}
PEP_OPTIONS = {"s0": -15.0, "targets": [0.99], "pull_start_epochs": 0.0}  # a target never reached: no stop
STEPS_PER_EPOCH = 50  # the pull's schedule counts epochs (Frappe has about 50 steps of 4096)


class WholeTableForward(nn.Module):
    """The official PEP forward: threshold the whole table, then look up (ids ``[B, F]`` -> ``[B, F, d]``)."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        searcher: PEPSearcher = self.layer.searcher
        table = self.layer.lookup.table_weight("all")
        pruned = soft_threshold(table, searcher.table_thresholds())  # [n, d], every step
        return nn.functional.embedding(ids + searcher.row_offsets, pruned)


def build(
    fields,
    dim,
    model_options,
    method,
    sparse,
    whole_table=False,
    granularity="feature_dim",
    fused=True,
):
    torch.manual_seed(0)
    options = None
    if method == "pep":
        options = {**PEP_OPTIONS, "granularity": granularity, "fused_threshold": fused}
    rec: Recommender = build_recommender(fields, 0, dim, "deepfm", model_options, method, options, sparse=sparse)
    searcher = rec.embedding.searcher
    searcher.steps_per_epoch = STEPS_PER_EPOCH
    if whole_table:  # the official forward indexes the whole threshold tensor: a dense parameter
        searcher.threshold_optimizer = None
        searcher.threshold.requires_grad_(True)
    opts = recommender_optimizers(rec, TrainConfig(optimizer="adam"))  # as the trainer builds them
    embed = WholeTableForward(rec.embedding) if whole_table else rec.embedding
    return rec, embed, opts


def training_bytes(rec: Recommender) -> dict[str, int]:
    """Parameter bytes (thresholds among them) and optimizer state: Adam's two moments on every parameter
    the run's optimizer trains, plus the row-wise thresholds' own state."""
    searcher = rec.embedding.searcher
    thresholds = sum(p.numel() for p in searcher.parameters()) * 4
    total = sum(p.numel() for p in rec.parameters()) * 4
    by_adam = sum(p.numel() for p in rec.parameters() if p.requires_grad) * 4
    state = 2 * by_adam
    if isinstance(searcher, PEPSearcher) and searcher.threshold_optimizer is not None:
        state += searcher.report(rec.embedding.lookup)["training_memory_bytes"]["threshold_optimizer_state"]
    return {"thresholds": thresholds, "all parameters": total, "with optimizer state": total + state}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", choices=["criteo", "frappe"], default="criteo")
    ap.add_argument("--vocab", type=int, default=1_000_000, help="rows in all tables (criteo shape)")
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--sparse", action="store_true", help="SparseAdam tables (default: fused dense Adam)")
    ap.add_argument("--no-whole-table", action="store_true", help="skip the official whole-table variant")
    ap.add_argument("--granularity", default="feature_dim", help="PEP threshold granularity")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.shape == "criteo":
        fields = [FieldInfo(f"C{i + 1}", int(n)) for i, n in enumerate(criteo_cardinalities(args.vocab))]
        dim, model_options = 16, {}
    else:
        fields = [FieldInfo(k, v) for k, v in FRAPPE_VOCABS.items()]
        dim, model_options = 10, {"batch_norm": True, "dropout": 0.2}
    rows = sum(f.vocab_size for f in fields)
    print(
        f"shape {args.shape}: {len(fields)} fields, {rows:,} rows, d={dim}, batch {args.batch}, "
        f"{'sparse' if args.sparse else 'fused dense'} Adam, {args.threads} threads"
    )
    variants = {"full": build(fields, dim, model_options, "full", args.sparse)}
    variants["pep"] = build(fields, dim, model_options, "pep", args.sparse, granularity=args.granularity)
    variants["pep, eager threshold"] = build(
        fields, dim, model_options, "pep", args.sparse, granularity=args.granularity, fused=False
    )
    if args.sparse and not args.no_whole_table:
        print("pep whole-table: skipped, its forward gives the tables dense gradients (no sparse optimizer)")
    if not args.no_whole_table and not args.sparse:
        variants["pep whole-table"] = build(
            fields, dim, model_options, "pep", args.sparse, whole_table=True, granularity=args.granularity
        )
    times: dict[str, list[float]] = {k: [] for k in variants}
    rng = np.random.default_rng(0)
    for step in range(args.steps + WARMUP_STEPS):
        ids = torch.from_numpy(np.stack([(rng.zipf(ZIPF_EXPONENT, args.batch) - 1) % f.vocab_size for f in fields], 1))
        labels = torch.from_numpy(rng.integers(0, 2, args.batch).astype(np.float32))
        for name, (rec, embed, opts) in variants.items():
            t0 = time.perf_counter()
            logits = rec.model(embed(ids), None, ids)
            loss = nn.functional.binary_cross_entropy_with_logits(logits, labels)
            for o in opts:
                o.zero_grad(set_to_none=True)
            loss.backward()
            for o in opts:
                o.step()
            rec.embedding.searcher.on_step(step, rec.embedding.lookup)  # pep: scheduled sparsity measurement
            if step >= WARMUP_STEPS:
                times[name].append(time.perf_counter() - t0)
    full, full_epoch = statistics.median(times["full"]), sum(times["full"])
    print(
        "| variant | median step (ms) | quartiles (ms) | vs full (median step) | vs full (epoch: all steps, "
        "measurements included) | training MiB: params (thresholds) / + optimizer |"
    )
    print("|---|---|---|---|---|---|")
    for name, ts in times.items():
        med = statistics.median(ts)
        q1, _, q3 = statistics.quantiles(ts, n=4)
        mem = training_bytes(variants[name][0])
        print(
            f"| {name} | {med * 1e3:.1f} | {q1 * 1e3:.1f}-{q3 * 1e3:.1f} | {med / full:.3f}x | "
            f"{sum(ts) / full_epoch:.3f}x | {mem['all parameters'] / 2**20:.1f} ({mem['thresholds'] / 2**20:.1f}) / "
            f"{mem['with optimizer state'] / 2**20:.1f} |"
        )
    if "pep whole-table" in times:
        ratio = statistics.median(times["pep whole-table"]) / statistics.median(times["pep"])
        print(f"\nwhole-table threshold / ours: {ratio:.2f}x")
    ratio = statistics.median(times["pep, eager threshold"]) / statistics.median(times["pep"])
    print(f"eager / fused threshold: {ratio:.2f}x")
    if "pep, dense thresholds" in times:
        ratio = statistics.median(times["pep, dense thresholds"]) / statistics.median(times["pep"])
        print(f"dense thresholds / row-wise: {ratio:.2f}x")


if __name__ == "__main__":
    main()
