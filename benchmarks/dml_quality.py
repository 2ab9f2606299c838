"""Table of the DML quality runs made by ``benchmarks/dml_quality.sh`` (markdown, for BENCHMARKS.md).

Reads ``runs/dml_q_<dataset>_<method>_s<seed>/result.json``; unfinished runs are listed as such.

    .venv/bin/python benchmarks/dml_quality.py [--runs runs]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

DATASETS = ("frappe", "movielens")
MAX_AUC_LOSS = 0.002  # acceptance: test AUC >= full - 0.002
MIN_SAVING = 0.40  # acceptance: >= 40 % fewer embedding parameters


def mean_std(values: list[float], digits: int = 4) -> str:
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {std:.{digits}f}"


def load(runs: Path, dataset: str, method: str) -> dict[int, dict]:
    out = {}
    for folder in sorted(runs.glob(f"dml_q_{dataset}_{method}_s*")):
        if not folder.is_dir():
            continue
        result = folder / "result.json"
        seed = int(folder.name.rsplit("_s", 1)[1])
        out[seed] = json.loads(result.read_text()) if result.exists() else {}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", default="runs")
    runs = Path(ap.parse_args().runs)
    print(
        "| dataset | method | seeds | test AUC | test logloss | emb. params (ratio to full) "
        "| AUC before cut (search, test) | valid AUC before -> right after cut | epochs search + fine-tune "
        "| train seconds | search steps, repair moves at the cut |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    verdicts = []
    for ds in DATASETS:
        full, dml = load(runs, ds, "full"), load(runs, ds, "dml")
        for method, res in (("full", full), ("dml", dml)):
            done = {s: r for s, r in res.items() if r}
            pending = sorted(s for s, r in res.items() if not r)
            if not res:
                continue
            aucs = [r["test_auc"] for r in done.values()]
            lls = [r["test_logloss"] for r in done.values()]
            ratios = [r["params_ratio"] for r in done.values()]
            secs = [r["train_seconds"] for r in done.values()]
            if method == "dml":
                before = [r["stages"]["search"]["test_auc"] for r in done.values()]
                vb = [r["stages"]["search"]["valid_auc"] for r in done.values()]
                va = [r["stages"]["finetune"]["valid_auc_at_start"] for r in done.values()]
                cut = f"{mean_std(vb)} -> {mean_std(va)}"
                epochs = mean_std(
                    [r["stages"]["search"]["epochs"] + r["stages"]["finetune"]["epochs"] for r in done.values()], 1
                )
                before_s = mean_std(before)
                search = "; ".join(
                    f"{r['searcher']['search_steps']}, {r['searcher']['budget_repair_moves']}" for r in done.values()
                )
            else:
                cut, before_s, search = "-", "-", "-"
                epochs = mean_std([r["stages"]["train"]["epochs"] for r in done.values()], 1)
            seeds = ",".join(str(s) for s in sorted(done)) + (f" (unfinished: {pending})" if pending else "")
            print(
                f"| {ds} | {method} | {seeds} | {mean_std(aucs)} | {mean_std(lls)} | {mean_std(ratios, 3)} "
                f"| {before_s} | {cut} | {epochs} | {mean_std(secs, 0)} | {search} |"
            )
        both = sorted(s for s in full if full[s] and s in dml and dml[s])
        if both:
            diffs = [dml[s]["test_auc"] - full[s]["test_auc"] for s in both]
            saving = 1 - statistics.mean(dml[s]["params_ratio"] for s in both)
            gap = statistics.mean(statistics.mean(full[s]["test_auc"] for s in both) for _ in [0])
            d_mean = statistics.mean(diffs)
            ok = d_mean >= -MAX_AUC_LOSS and saving >= MIN_SAVING
            verdicts.append(
                f"- {ds}: seeds {both}: test AUC dml - full = {d_mean:+.4f} (per seed "
                f"{', '.join(f'{d:+.4f}' for d in diffs)}; full mean {gap:.4f}), embedding parameters "
                f"{saving:.1%} fewer -> target {'met' if ok else 'NOT met'}"
            )
    print()
    print("\n".join(verdicts))


if __name__ == "__main__":
    main()
