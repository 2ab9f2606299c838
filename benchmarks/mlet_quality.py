"""MLET vs ``full`` quality: seeds, a d x k grid, AUC by id frequency and effective ranks.

Every run is an ordinary run folder (``runs/mlet_q_<dataset>_<method>_d<d>[_k<k>]_s<seed>``), so a
killed sweep resumes and finished runs are not trained again. After each run the exported model
is scored on test rows grouped by the training count of their ids, and the effective rank of
each field's table is computed; one JSON line per run goes to ``--out``.

    # the acceptance comparison (full d=4, mlet d=4 k=64, full d=16), 5 seeds
    .venv/bin/python benchmarks/mlet_quality.py --dataset movielens --plan main --seeds 1 2 3 4 5
    # the d x k grid
    .venv/bin/python benchmarks/mlet_quality.py --dataset movielens --plan grid --seeds 1 2 3
    # the same cells under another optimizer / lr (run names get a suffix, e.g. _adagrad_lr0.01)
    .venv/bin/python benchmarks/mlet_quality.py --dataset movielens --optimizer adagrad --lr 0.01 --seeds 1 2 3
    # any other key of the run config (also part of the run name): --override train.batch_size=512
    # tables for BENCHMARKS.md from every line collected so far, one section per optimizer variant
    .venv/bin/python benchmarks/mlet_quality.py --summarise

Settings are identical between ``full`` and ``mlet`` for a seed (the experiment config
``configs/experiments/mlet_<dataset>.yaml`` with only method, d and k replaced, plus the same
``--optimizer`` / ``--lr`` / ``--override`` for every cell of a sweep). Without those flags run names
are the original ones; with them the names end in a suffix built from them (``_adagrad_lr0.01``),
so variants never share a run folder, and ``--summarise`` keeps each variant (optimizer, lr,
overrides; lines from before these flags count as the configs' Adam lr 0.001) in its own section.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from collections import defaultdict
from pathlib import Path

import torch

from embdim.config import load_config
from embdim.measures import effective_rank
from embdim.recommender import load_model
from embdim.train.evaluate import frequency_report
from embdim.train.run import prepare_dataset, run_dir_for, run_experiment

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "out" / "mlet_quality.jsonl"
CONFIGS = {"movielens": "mlet_movielens.yaml", "frappe": "mlet_frappe.yaml"}
ITEM_FIELD = {"movielens": "item_id", "frappe": "item"}
# (method, d, k); k None for full
MAIN = [("full", 4, None), ("mlet", 4, 64), ("full", 16, None)]
# the d x k grid (MAIN's cells come on top): d in {2, 4, 8}, k in {16, 64}, and k=256 at d=4
GRID = [
    ("full", 2, None),
    ("mlet", 2, 16),
    ("mlet", 2, 64),
    ("mlet", 4, 16),
    ("mlet", 4, 256),
    ("full", 8, None),
    ("mlet", 8, 16),
    ("mlet", 8, 64),
]
BUCKETS = (0, 5, 20, 100, 1000)


DEFAULT_VARIANT = "adam lr0.001"  # the experiment configs' optimizer; lines without a "variant" key ran with it


def variant_suffix(optimizer: str | None, lr: float | None, overrides: list[str]) -> str:
    """Run-name suffix of a variant: '' for the configs' own settings, else e.g. ``_adagrad_lr0.01``."""
    parts = ([optimizer] if optimizer else []) + ([f"lr{lr:g}"] if lr is not None else [])
    parts += [re.sub(r"[^A-Za-z0-9.=-]+", "-", o).replace("=", "-") for o in overrides]
    return "".join(f"_{x}" for x in parts)


def variant_label(optimizer: str, lr: float, overrides: list[str]) -> str:
    """How ``--summarise`` names (and separates) a variant: resolved optimizer and lr, then overrides."""
    return " ".join([optimizer, f"lr{lr:g}", *overrides])


def run_name(dataset: str, method: str, d: int, k: int | None, seed: int, suffix: str = "") -> str:
    return f"mlet_q_{dataset}_{method}_d{d}" + (f"_k{k}" if k else "") + f"_s{seed}" + suffix


def one_run(
    dataset: str,
    method: str,
    d: int,
    k: int | None,
    seed: int,
    threads: int,
    optimizer: str | None = None,
    lr: float | None = None,
    extra: list[str] | None = None,
) -> dict:
    extra = list(extra or [])
    suffix = variant_suffix(optimizer, lr, extra)
    overrides = [
        f"name={run_name(dataset, method, d, k, seed, suffix)}",
        f"method={method}",
        f"embedding.dim={d}",
        f"train.seed={seed}",
        f"train.threads={threads}",
        "train.progress=false",
    ]
    if k is not None:
        overrides.append(f"method.inner_dim={k}")
    if optimizer is not None:
        overrides.append(f"train.optimizer={optimizer}")
    if lr is not None:
        overrides.append(f"train.lr={lr}")
    overrides += extra  # last, so they win
    cfg = load_config(ROOT / "configs" / "experiments" / CONFIGS[dataset], overrides)
    result = run_experiment(cfg)
    data = prepare_dataset(cfg, progress=False)
    fields = data.schema.fields
    slim = load_model(run_dir_for(cfg) / "model")
    test = data.splits["test"]
    weight = slim.embedding.groups[0].weight.detach()  # [sum n_f, d]: one dense group for full and mlet
    ranks, start = {}, 0
    for f in fields:
        ranks[f.name] = effective_rank(weight[start : start + f.vocab_size])
        start += f.vocab_size
    return {
        "dataset": dataset,
        "method": method,
        "d": d,
        "k": k,
        "seed": seed,
        "variant": variant_label(cfg.train.optimizer, cfg.train.lr, extra),
        "optimizer": cfg.train.optimizer,
        "lr": cfg.train.lr,
        "overrides": extra,
        "run": cfg.name,
        "test_auc": result["test_auc"],
        "test_logloss": result["test_logloss"],
        "valid_auc": result["valid_auc"],
        "embedding_bytes": result["embedding_bytes"],
        "training_embedding_bytes": result.get("searcher", {}).get(
            "training_embedding_bytes", result["embedding_bytes"]
        ),
        "train_seconds": result["train_seconds"],
        "epochs": result["stages"]["train"]["epochs"],
        "export_max_abs_logit_diff": result["export_max_abs_logit_diff"],
        "effective_rank": ranks,
        "by_rarest_id": frequency_report(slim, test, fields, None, BUCKETS),
        "by_item": frequency_report(slim, test, fields, ITEM_FIELD[dataset], BUCKETS),
    }


def _ms(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def _comparison(runs: dict[tuple, dict[int, dict]], k: int) -> list[str]:
    """Per-seed test AUC of MLET d=4 at inner width k vs full d=4 / d=16, and AUC by id frequency
    averaged over the seeds MLET and full d=4 share."""
    out = ["", f"Per seed, MLET d=4 k={k} vs full d=4 and vs full d=16 (test AUC):", ""]
    out += [
        f"| dataset | seed | full d=4 | mlet d=4 k={k} | full d=16 | mlet - full@4 | mlet - full@16 |",
        "|---|---|---|---|---|---|---|",
    ]
    nan = float("nan")
    for ds in sorted({key[0] for key in runs}):
        f4, ml, f16 = runs[(ds, "full", 4, None)], runs[(ds, "mlet", 4, k)], runs[(ds, "full", 16, None)]
        seeds = sorted(set(f4) & set(ml))
        if not seeds:
            continue
        for s in seeds:
            a16 = f16[s]["test_auc"] if s in f16 else nan
            out.append(
                f"| {ds} | {s} | {f4[s]['test_auc']:.4f} | {ml[s]['test_auc']:.4f} | {a16:.4f} | "
                f"{ml[s]['test_auc'] - f4[s]['test_auc']:+.4f} | {ml[s]['test_auc'] - a16:+.4f} |"
            )
        wins = sum(ml[s]["test_auc"] > f4[s]["test_auc"] for s in seeds)
        out.append(f"| {ds} | wins | | {wins} of {len(seeds)} | | | |")
    for key in ("by_item", "by_rarest_id"):
        out += ["", f"Test AUC by training frequency ({key}; mean over the shared seeds; d=4, k={k}):", ""]
        out += [
            f"| dataset | bucket (train count) | rows | full d=4 | mlet d=4 k={k} | gain | full d=16 |",
            "|---|---|---|---|---|---|---|",
        ]
        for ds in sorted({key_[0] for key_ in runs}):
            f4, ml = runs[(ds, "full", 4, None)], runs[(ds, "mlet", 4, k)]
            seeds = set(f4) & set(ml)
            if not seeds:
                continue
            settings = [runs[(ds, "full", 4, None)], runs[(ds, "mlet", 4, k)], runs[(ds, "full", 16, None)]]
            buckets = {(b["lo"], b["hi"]): b["rows"] for s in seeds for b in f4[s][key]}
            for lo, hi in sorted(buckets):
                vals = []
                for by_seed in settings:
                    aucs = [
                        b["auc"]
                        for s in seeds
                        if s in by_seed
                        for b in by_seed[s][key]
                        if (b["lo"], b["hi"]) == (lo, hi)
                    ]
                    aucs = [a for a in aucs if a == a]
                    vals.append(statistics.mean(aucs) if aucs else nan)
                label = f"[{lo}, {hi})" if hi is not None else f">= {lo}"
                out.append(
                    f"| {ds} | {label} | {buckets[(lo, hi)]} | {vals[0]:.4f} | {vals[1]:.4f} | "
                    f"{vals[1] - vals[0]:+.4f} | {vals[2]:.4f} |"
                )
    return out


def summarise(lines: list[dict]) -> str:
    """One section per variant (optimizer, lr, overrides), each with :func:`summarise_variant`'s tables."""
    by_variant: dict[str, list[dict]] = defaultdict(list)
    for x in lines:
        by_variant[x.get("variant", DEFAULT_VARIANT)].append(x)
    order = sorted(by_variant, key=lambda v: (v != DEFAULT_VARIANT, v))
    out = [
        "Every variant and setting (mean over seeds; valid AUC is what picks a variant's lr):",
        "",
        "| variant | dataset | method | d | k | seeds | valid AUC | test AUC |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for variant in order:
        runs: dict[tuple, dict[int, dict]] = defaultdict(dict)
        for x in by_variant[variant]:
            runs[(x["dataset"], x["method"], x["d"], x["k"])][x["seed"]] = x
        for (ds, m, d, k), by_seed in sorted(runs.items(), key=lambda kv: (kv[0][0], kv[0][2], kv[0][3] or 0)):
            xs = list(by_seed.values())
            out.append(
                f"| {variant} | {ds} | {m} | {d} | {k or '-'} | {len(xs)} | "
                f"{_ms([x['valid_auc'] for x in xs])} | {_ms([x['test_auc'] for x in xs])} |"
            )
    out.append("")
    for variant in order:
        out += [f"### Optimizer variant: {variant}", "", summarise_variant(by_variant[variant]), ""]
    return "\n".join(out).rstrip() + "\n"


def summarise_variant(lines: list[dict]) -> str:
    """Markdown tables of one variant: mean ± std per setting, per-seed wins at d=4, frequency buckets, ranks."""
    runs: dict[tuple, dict[int, dict]] = defaultdict(dict)
    for x in lines:
        runs[(x["dataset"], x["method"], x["d"], x["k"])][x["seed"]] = x  # last line per seed wins
    out = [
        "| dataset | method | d | k | seeds | test AUC | test logloss | epochs | train s | bytes train / export |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (ds, m, d, k), by_seed in sorted(runs.items(), key=lambda kv: (kv[0][0], kv[0][2], kv[0][3] or 0, kv[0][1])):
        xs = list(by_seed.values())
        out.append(
            f"| {ds} | {m} | {d} | {k or '-'} | {len(xs)} | {_ms([x['test_auc'] for x in xs])} | "
            f"{_ms([x['test_logloss'] for x in xs])} | {statistics.mean(x['epochs'] for x in xs):.1f} | "
            f"{statistics.mean(x['train_seconds'] for x in xs):.0f} | "
            f"{xs[0]['training_embedding_bytes']:,} / {xs[0]['embedding_bytes']:,} |"
        )
    d4_ks = sorted({key[3] for key in runs if key[1] == "mlet" and key[2] == 4})
    for k in d4_ks:
        out += _comparison(runs, k)
    header = ["", "Effective rank of the exported tables (mean over seeds; d=4 tables have at most 4):", ""]
    for ds in sorted({k_[0] for k_ in runs}):
        settings = {"full d=4": runs[(ds, "full", 4, None)], "mlet d=4 k=64": runs[(ds, "mlet", 4, 64)]}
        if not all(settings.values()):
            continue
        out += header
        header = []
        names = list(next(iter(settings["full d=4"].values()))["effective_rank"])
        out += [f"| {ds} | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for label, by_seed in settings.items():
            means = [statistics.mean(x["effective_rank"][n] for x in by_seed.values()) for n in names]
            out.append(f"| {label} | " + " | ".join(f"{v:.2f}" for v in means) + " |")
        out.append("")
    return "\n".join(out)


def _cell(text: str) -> tuple[str, int, int | None]:
    method, d, *k = text.split(":")
    return method, int(d), int(k[0]) if k else None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", choices=sorted(CONFIGS))
    ap.add_argument("--plan", choices=["main", "grid"], default="main")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    ap.add_argument("--cells", nargs="+", help="run only these cells instead of --plan: method:d[:k], e.g. mlet:4:64")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--optimizer", choices=["adam", "adamw", "adagrad", "sgd"], help="train.optimizer for every cell")
    ap.add_argument("--lr", type=float, help="train.lr for every cell")
    ap.add_argument(
        "--override",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="further run-config overrides for every cell (part of the run name), e.g. train.batch_size=512",
    )
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--summarise", action="store_true", help="print tables from --out and exit")
    ap.add_argument(
        "--variant", nargs="+", help="with --summarise: only these variants (as the section titles name them)"
    )
    args = ap.parse_args()
    if args.summarise:
        lines = [json.loads(x) for x in args.out.read_text().splitlines() if x.strip()]
        if args.variant:
            lines = [x for x in lines if x.get("variant", DEFAULT_VARIANT) in args.variant]
        print(summarise(lines))
        return
    if args.dataset is None:
        ap.error("--dataset is required unless --summarise")
    torch.set_num_threads(args.threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    plan = MAIN if args.plan == "main" else GRID
    if args.cells:
        plan = [_cell(c) for c in args.cells]
    for seed in args.seeds:  # seed-major: an interrupted sweep still has whole comparisons
        for method, d, k in plan:
            line = one_run(args.dataset, method, d, k, seed, args.threads, args.optimizer, args.lr, args.override)
            with args.out.open("a") as f:
                f.write(json.dumps(line) + "\n")
            print(
                f"{args.dataset} [{line['variant']}] {method} d={d} k={k} seed={seed}: "
                f"valid AUC {line['valid_auc']:.4f} test AUC {line['test_auc']:.4f} ({line['epochs']} epochs)",
                flush=True,
            )


if __name__ == "__main__":
    main()
