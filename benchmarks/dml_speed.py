"""DML speed, side by side with ``full`` in one process (steps interleaved round-robin, medians).

Two comparisons on Criteo-shaped synthetic fields (26 tables, about ``--vocab`` rows in all, Zipf ids):

1. **search step**: forward + backward + Adam step of DeepFM with the DML mask (budget mode, hard
   straight-through mask, controller in ``on_step``) vs the same model with ``full`` embeddings.
2. **cut model**: the slim model after a cut (one dense table per width, the MLP input compacted
   to the kept columns) vs ``full``: a training step, and a prediction (forward, no grad) step.

The cut widths: ``--plan`` (a DML ``plan.json`` whose vocabulary sizes are then used), else every
field at ``ceil(d * --keep)``.

    flock /tmp/embdim_speed.lock .venv/bin/python benchmarks/dml_speed.py --threads 2 --steps 30
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from embdim.config import TrainConfig
from embdim.data.schema import FieldInfo
from embdim.data.synthetic import criteo_cardinalities
from embdim.plan import EmbeddingPlan
from embdim.recommender import Recommender, build_recommender
from embdim.searchers.dml import DMLSearcher
from embdim.train.optim import recommender_optimizers
from embdim.train.trainer import training_step

ZIPF_EXPONENT = 1.1
WARMUP_STEPS = 3
HIDDEN = [400, 400, 400]


def train_step(rec: Recommender, opts: list) -> Callable:
    def step(ids: torch.Tensor, labels: torch.Tensor, i: int) -> None:
        training_step(rec, opts, ids, None, labels, i)  # runs the searcher's on_step (dml: tau, controller)

    return step


def predict_step(rec: Recommender) -> Callable:
    def step(ids: torch.Tensor, labels: torch.Tensor, i: int) -> None:
        with torch.no_grad():
            rec(ids, None)

    return step


def optimizers(rec: Recommender) -> list:
    return recommender_optimizers(rec, TrainConfig(optimizer="adam"))


def slim_recommender(fields: list[FieldInfo], dim: int, widths: list[int]) -> Recommender:
    """A DeepFM whose embedding is the slim export of a DML cut at ``widths``, MLP input compacted."""
    torch.manual_seed(0)
    rec = build_recommender(fields, 0, dim, "deepfm", {"hidden": HIDDEN}, "dml", {})
    searcher: DMLSearcher = rec.embedding.searcher
    searcher.cut_dims.copy_(torch.tensor(widths))
    slim = rec.embedding.export()
    rec.model.compact_inputs(widths)
    out = Recommender(slim, rec.model, "deepfm")
    for p in out.parameters():  # slim storage holds parameters: a fine-tune trains them like tables
        p.requires_grad_(True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocab", type=int, default=1_000_000, help="rows in all tables together")
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--keep", type=float, default=0.5, help="kept share of d per field without --plan")
    ap.add_argument("--plan", type=str, default=None, help="a DML plan.json: its fields and cut widths")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.plan:
        plan = EmbeddingPlan.load(args.plan)
        fields = [FieldInfo(n, v) for n, v in zip(plan.field_names, plan.vocab_sizes, strict=True)]
        dim, widths = plan.dim, list(plan.field_dims)
    else:
        fields = [FieldInfo(f"C{i + 1}", int(n)) for i, n in enumerate(criteo_cardinalities(args.vocab))]
        dim = args.dim
        widths = [math.ceil(dim * args.keep) for _ in fields]
    rows = sum(f.vocab_size for f in fields)
    kept = sum(f.vocab_size * w for f, w in zip(fields, widths, strict=True)) / (rows * dim)
    print(f"fields {len(fields)}, rows {rows:,}, d={dim}, cut keeps {kept:.1%} of the table bytes")

    torch.manual_seed(0)
    full = build_recommender(fields, 0, dim, "deepfm", {"hidden": HIDDEN}, "full")
    torch.manual_seed(0)
    dml_options = {"budget": {"kind": "fraction", "value": kept}}
    search = build_recommender(fields, 0, dim, "deepfm", {"hidden": HIDDEN}, "dml", dml_options)
    cut = slim_recommender(fields, dim, widths)
    full_opts, search_opts, cut_opts = optimizers(full), optimizers(search), optimizers(cut)
    cases = {
        "full train": train_step(full, full_opts),
        "dml search train": train_step(search, search_opts),
        "dml cut (slim) train": train_step(cut, cut_opts),
        "full predict": predict_step(full),
        "dml cut (slim) predict": predict_step(cut),
    }
    times: dict[str, list[float]] = {k: [] for k in cases}
    rng = np.random.default_rng(0)
    for i in range(args.steps + WARMUP_STEPS):
        ids = torch.from_numpy(np.stack([(rng.zipf(ZIPF_EXPONENT, args.batch) - 1) % f.vocab_size for f in fields], 1))
        labels = torch.from_numpy(rng.integers(0, 2, args.batch).astype(np.float32))
        for name, step in cases.items():
            t0 = time.perf_counter()
            step(ids, labels, i)
            if i >= WARMUP_STEPS:
                times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    print("| step | median (ms) | samples/s | time vs full |\n|---|---|---|---|")
    for name, m in med.items():
        base = med["full predict"] if "predict" in name else med["full train"]
        print(f"| {name} | {m * 1e3:.1f} | {args.batch / m:,.0f} | {m / base:.3f}x |")


if __name__ == "__main__":
    main()
