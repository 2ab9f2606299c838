"""PEP quality: seeds x datasets, ``full`` and ``pep`` trained identically per seed; summary as Markdown.

Runs (in sequence, one thread each, so they can run beside other work)::

    .venv/bin/python benchmarks/pep_quality.py run --seeds 1 2 3 > pep_quality.log 2>&1 &
    .venv/bin/python benchmarks/pep_quality.py summary --seeds 1 2 3

Each pair uses one experiment config (``configs/experiments/pep_<dataset>.yaml``); the ``full`` run is
the same config with ``method=full``, so data, model, optimizer, init, epochs and seed are identical.
Run folders: ``runs/pepq_<dataset>_<method>_s<seed>``; a finished run is skipped when run again.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ["frappe", "movielens_100k", "synthetic", "synthetic_criteo"]
METHODS = ["full", "pep"]
AUC_MARGIN = 0.002  # acceptance: pep test AUC >= full's minus this
SPARSITY_TARGET = 0.9  # acceptance: at >= 90 % embedding sparsity


def run_name(dataset: str, method: str, seed: int) -> str:
    return f"pepq_{dataset}_{method}_s{seed}"


def run_all(datasets: list[str], seeds: list[int], extra: list[str]) -> None:
    for seed in seeds:  # seed-major: every dataset gets its first seed before any gets a second
        for dataset in datasets:
            for method in METHODS:
                name = run_name(dataset, method, seed)
                if (ROOT / "runs" / name / "result.json").exists():
                    print(f"skip {name} (finished)", flush=True)
                    continue
                cmd = [
                    str(ROOT / ".venv" / "bin" / "embdim"),
                    "run",
                    f"configs/experiments/pep_{dataset}.yaml",
                    f"name={name}",
                    f"train.seed={seed}",
                    "train.threads=1",
                    "--no-progress",
                ]
                if method == "full":
                    cmd.append("method=full")
                cmd += extra
                start = time.time()
                print(" ".join(cmd), flush=True)
                done = subprocess.run(cmd, cwd=ROOT, check=False)
                print(f"{name}: rc={done.returncode} in {time.time() - start:.0f} s", flush=True)


def _load(name: str) -> dict | None:
    path = ROOT / "runs" / name / "result.json"
    return json.loads(path.read_text()) if path.exists() else None


def _mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def summary(datasets: list[str], seeds: list[int]) -> str:
    lines = [
        "| dataset | seeds done | full test AUC | pep test AUC before retrain | pep test AUC | "
        "pep - full (mean) | sparsity | bytes ratio (CSR) | dropped features | met? |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for dataset in datasets:
        full, pep, before, diffs, sparsity, ratio, dropped = [], [], [], [], [], [], []
        for seed in seeds:
            f, p = _load(run_name(dataset, "full", seed)), _load(run_name(dataset, "pep", seed))
            if f is None or p is None:
                continue
            full.append(f["test_auc"])
            pep.append(p["test_auc"])
            diffs.append(p["test_auc"] - f["test_auc"])
            if "test_auc" in p["stages"].get("search", {}):  # absent when the run resumed after the search
                before.append(p["stages"]["search"]["test_auc"])
            sparsity.append(p["searcher"]["final_sparsity"])
            ratio.append(p["bytes_ratio"])
            dropped.append(p["dropped_features"])
        if not full:
            lines.append(f"| {dataset} | 0 | - | - | - | - | - | - | - | unfinished |")
            continue
        met = statistics.mean(diffs) >= -AUC_MARGIN and min(sparsity) >= SPARSITY_TARGET - 1e-6
        partial = "" if len(full) == len(seeds) else f" ({len(full)} of {len(seeds)} seeds)"
        verdict = ("yes" if met else "no") + partial
        lines.append(
            f"| {dataset} | {len(full)} | {_mean_std(full)} | {_mean_std(before)} | {_mean_std(pep)} | "
            f"{statistics.mean(diffs):+.4f} | {statistics.mean(sparsity):.3f} | {statistics.mean(ratio):.3f} | "
            f"{statistics.mean(dropped):.0f} | {verdict} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["run", "summary"])
    parser.add_argument("--datasets", nargs="+", default=DATASETS, choices=DATASETS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("overrides", nargs="*", help="key=value overrides for every run (run only)")
    args = parser.parse_args()
    if args.what == "run":
        run_all(args.datasets, args.seeds, args.overrides)
    else:
        print(summary(args.datasets, args.seeds))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
