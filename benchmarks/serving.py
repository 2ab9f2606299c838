"""Serving: each method's slim model against the uniform one, in bytes, AUC and speed, at fp32, fp16, int8.

    .venv/bin/python -W ignore benchmarks/serving.py runs/bench/serving_frappe_deepfm --threads 1

For every finished run of a bench folder (the reference and each method's plan), loaded from its bundle
as a server would load it:

- size and quality at each precision (the bundle's embedding values stored in fp32, fp16, int8 row-wise):
  embedding bytes, whole-model bytes, test AUC and logloss on the cached (encoded) test split;
- throughput: the model's forward on a batch of 4096 test rows, samples/s, and the embedding lookup alone on
  that batch (ms, and its share of the forward: the most a faster lookup can gain);
- latency: the forward on one row at a time, p50 and p99 in milliseconds, interleaved with the other
  models call by call (caches cold, as in a server that holds many models), and p50 with each model
  scoring its rows in a row (caches warm).

Speed is measured side by side in one process, interleaved so that load on the machine hits every model
alike: every round times every model's batch in an order drawn anew, then scores one row after another
with every model in turn (so no model's lookup runs with warm caches from its previous call); throughput
is the median over rounds, latencies pool every call. Ratios are to the reference's fp32 model measured in
the same rounds. Wall and CPU seconds of the timed loops are printed, and the peak RSS of the process.

On a Criteo-scale bench, ``--runs`` picks the bundles to time (one per storage kind, say) and
``--no-quality`` skips scoring the whole test split with each of them.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from embdim.recommender import Recommender
from embdim.serve import Bundle
from embdim.train.evaluate import batch_tensors, predict_logits
from embdim.train.metrics import log_loss, roc_auc
from embdim.train.run import prepare_dataset

PRECISIONS = ("fp32", "fp16", "int8")


def finished_runs(bench: Path) -> list[Path]:
    runs = []
    for run in sorted((bench / "runs").iterdir()):
        result = run / "result.json"
        if result.is_file() and json.loads(result.read_text()).get("status") == "completed":
            runs.append(run)
    return runs


def with_precision(model: Recommender, precision: str) -> Recommender:
    return Recommender(model.embedding.with_precision(precision), model.model, model.model_name, model.precision).eval()


def network_bytes(model: Recommender) -> int:
    return sum(t.numel() * t.element_size() for t in model.model.state_dict().values())


@torch.no_grad()
def time_calls(model: Callable[..., torch.Tensor], inputs: list[tuple[torch.Tensor, ...]]) -> list[float]:
    """Seconds of each call of ``model`` (a model's forward, or its embedding lookup alone), one per input."""
    out = []
    for args in inputs:
        start = time.perf_counter()
        model(*args)
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("bench", type=Path, help="a bench folder (runs/bench/<name>)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--rounds", type=int, default=7, help="timed rounds; 0: sizes and quality only, no timing")
    ap.add_argument("--batch-calls", type=int, default=5, help="batch forwards per model per round")
    ap.add_argument("--single-calls", type=int, default=300, help="one-row forwards per model per round")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    ap.add_argument(
        "--runs", nargs="+", default=None, help="only these run folders (names; the reference is always measured)"
    )
    ap.add_argument(
        "--no-quality",
        dest="quality",
        action="store_false",
        help="skip test AUC and logloss (the bench's report has them): Criteo-scale test splits take minutes a model",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    runs = finished_runs(args.bench)
    if args.runs is not None:
        if unknown := set(args.runs) - {run.name for run in runs}:
            raise SystemExit(f"--runs: no finished run {', '.join(sorted(unknown))} in {args.bench / 'runs'}")
        runs = [run for run in runs if run.name in args.runs or run.name.startswith("reference")]
    models: dict[str, Recommender] = {}
    rows = []
    test = None
    for run in runs:
        bundle = Bundle.load(run / "model")
        result = json.loads((run / "result.json").read_text())
        if test is None:
            test = prepare_dataset(bundle.config, progress=False).splits["test"]
        for precision in PRECISIONS:
            model = with_precision(bundle.model, precision)
            auc = logloss = None
            if args.quality:
                logits = predict_logits(model, test, 16384)
                auc, logloss = roc_auc(test.labels, logits), log_loss(test.labels, logits)
            name = f"{run.name} {precision}"
            rows.append(
                {
                    "run": run.name,
                    "method": result["method"],
                    "storage": model.embedding.plan.storage,
                    "precision": precision,
                    "embedding_bytes": model.embedding.stored_bytes(),
                    "rows_storing_nothing": sum(model.embedding.plan.dropped_features()),
                    "model_bytes": model.embedding.stored_bytes() + network_bytes(model),
                    "test_auc": auc,
                    "test_logloss": logloss,
                }
            )
            if precision in ("fp32", "int8"):
                models[name] = model
    reference = next(name for name in models if name.startswith("reference") and name.endswith("fp32"))
    if args.rounds == 0:
        print_sizes(rows, next(r["embedding_bytes"] for r in rows if f"{r['run']} {r['precision']}" == reference))
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1))
        return

    gen = np.random.default_rng(0)
    batch = batch_tensors(test, np.arange(min(args.batch, len(test))))[:2]
    batch = tuple(t for t in batch if t is not None)
    batch_seconds: dict[str, list[float]] = {name: [] for name in models}
    lookup_seconds: dict[str, list[float]] = {name: [] for name in models}
    single_seconds: dict[str, list[float]] = {name: [] for name in models}
    warm_seconds: dict[str, list[float]] = {name: [] for name in models}
    for model in models.values():  # warm-up
        time_calls(model, [batch] * 2)
    wall, cpu = time.perf_counter(), time.process_time()
    names = list(models)
    for _ in range(args.rounds):
        for name in gen.permutation(names):  # a new order each round: no model always follows another
            batch_seconds[name].append(statistics.median(time_calls(models[name], [batch] * args.batch_calls)))
            lookup = time_calls(models[name].embedding, [batch[:1]] * args.batch_calls)
            lookup_seconds[name].append(statistics.median(lookup))
        # one row at a time, every model on the same row in turn: drift hits every model alike
        singles = [
            tuple(t for t in batch_tensors(test, np.array([i]))[:2] if t is not None)
            for i in gen.integers(0, len(test), args.single_calls)
        ]
        for single in singles:
            for name in gen.permutation(names):
                single_seconds[name] += time_calls(models[name], [single])
        for name in gen.permutation(names):  # and each model on all the rows in a row: its caches warm
            warm_seconds[name] += time_calls(models[name], singles)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu

    ref_rate = len(batch[0]) / statistics.median(batch_seconds[reference])
    ref_p50 = float(np.percentile(single_seconds[reference], 50))
    ref_warm = float(np.percentile(warm_seconds[reference], 50))
    print(f"bench {args.bench}: {len(test):,} test rows, threads {args.threads}, {args.rounds} rounds")
    print(f"timed loops: {wall:.1f} s wall, {cpu:.1f} s CPU; peak RSS {peak_rss_mib():.0f} MiB")
    print()
    print(
        "| run | storage | precision | embedding bytes | model bytes | test AUC | test logloss "
        "| samples/s (batch 4096) | x full | lookup ms (batch) | lookup share | p50 ms (1 row) | p99 ms | p50 x full "
        "| p50 ms warm | warm x full |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        name = f"{row['run']} {row['precision']}"
        if name in models:
            forward = statistics.median(batch_seconds[name])
            rate, lookup = len(batch[0]) / forward, statistics.median(lookup_seconds[name])
            p50, p99 = (float(np.percentile(single_seconds[name], q)) for q in (50, 99))
            warm = float(np.percentile(warm_seconds[name], 50))
            row |= {"samples_per_second": rate, "lookup_ms": 1e3 * lookup, "p50_ms": 1e3 * p50, "p99_ms": 1e3 * p99}
            row["warm_p50_ms"] = 1e3 * warm
            speed = (
                f"{rate:,.0f} | {rate / ref_rate:.2f} | {1e3 * lookup:.2f} | {lookup / forward:.2f} "
                f"| {1e3 * p50:.3f} | {1e3 * p99:.3f} | {p50 / ref_p50:.2f} "
                f"| {1e3 * warm:.3f} | {warm / ref_warm:.2f}"
            )
        else:
            speed = "- | - | - | - | - | - | - | - | -"
        print(
            f"| {row['run']} | {row['storage']} | {row['precision']} | {row['embedding_bytes']:,} "
            f"| {row['model_bytes']:,} | {_metric(row['test_auc'])} | {_metric(row['test_logloss'])} | {speed} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


def print_sizes(rows: list[dict], reference_bytes: int) -> None:
    """The size and quality columns only (``--rounds 0``)."""
    print(
        "| run | storage | precision | rows storing nothing | embedding bytes | x reference fp32 | test AUC "
        "| test logloss |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['run']} | {row['storage']} | {row['precision']} | {row['rows_storing_nothing']:,} "
            f"| {row['embedding_bytes']:,} | {row['embedding_bytes'] / reference_bytes:.3f} "
            f"| {_metric(row['test_auc'])} | {_metric(row['test_logloss'])} |"
        )


def _metric(value: float | None) -> str:
    """A test metric to 4 digits, ``-`` when not measured (``--no-quality``)."""
    return "-" if value is None else f"{value:.4f}"


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__":
    main()
