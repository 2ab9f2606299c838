"""Training throughput of models with ``full`` embeddings on Criteo-shaped synthetic data.

Every table together holds about 1e6 rows (26 fields), d=16, batch 4096. Models are timed side by
side in one process, steps interleaved round-robin so machine noise hits all of them alike; the
median step time is reported as samples/s.

    .venv/bin/python benchmarks/throughput.py --threads 2 --steps 30
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from embdim.config import TrainConfig
from embdim.data.schema import FieldInfo
from embdim.data.synthetic import criteo_cardinalities
from embdim.recommender import build_recommender
from embdim.train.optim import build_optimizers

ZIPF_EXPONENT = 1.1
SETTINGS = {  # name -> (model, sparse tables, optimizer)
    "fm / fused adam": ("fm", False, "adam"),
    "deepfm / fused adam": ("deepfm", False, "adam"),
    "deepfm / sparse adam": ("deepfm", True, "adam"),
    "deepfm / sparse adagrad": ("deepfm", True, "adagrad"),
    "dlrm / fused adam": ("dlrm", False, "adam"),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocab", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    # tables sized like Criteo's 26 fields scaled to --vocab rows; ids Zipf-distributed within each field
    fields = [FieldInfo(f"C{i + 1}", int(n)) for i, n in enumerate(criteo_cardinalities(args.vocab))]
    print(f"fields {len(fields)}, rows in all tables {sum(f.vocab_size for f in fields):,}")
    setups = {}
    for name, (model, sparse, opt) in SETTINGS.items():
        torch.manual_seed(0)
        rec = build_recommender(fields, 0, args.dim, model, sparse=sparse)
        tables = rec.table_parameters()
        others = [p for p in rec.parameters() if all(p is not t for t in tables)]
        opts = build_optimizers(tables, others, TrainConfig(optimizer=opt), sparse)
        setups[name] = (rec, opts, [])
    rng = np.random.default_rng(0)
    for step in range(args.steps + 3):
        ids = torch.from_numpy(
            np.stack([(rng.zipf(ZIPF_EXPONENT, args.batch) - 1) % f.vocab_size for f in fields], 1)
        )
        dense = None
        labels = torch.from_numpy(rng.integers(0, 2, args.batch).astype(np.float32))
        for rec, opts, times in setups.values():
            t0 = time.perf_counter()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(rec(ids, dense), labels)
            for o in opts:
                o.zero_grad(set_to_none=True)
            loss.backward()
            for o in opts:
                o.step()
            if step >= 3:  # warm-up
                times.append(time.perf_counter() - t0)
    print("| setting | median step (ms) | samples/s |\n|---|---|---|")
    for name, (_, _, times) in setups.items():
        med = statistics.median(times)
        print(f"| {name} | {med * 1e3:.1f} | {args.batch / med:,.0f} |")


if __name__ == "__main__":
    main()
