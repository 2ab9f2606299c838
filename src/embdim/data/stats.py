"""Descriptive statistics of a prepared dataset (used by ``embdim inspect``).

Per split: rows and positive rate. Per field: vocabulary size, share of OOV ids in each split,
and how skewed the training frequencies are:

* ``top1pct_share``: share of training rows whose id is among the top 1 % most frequent kept ids
  (at least one id);
* ``gini``: Gini coefficient of the kept ids' training counts (0 = all equally frequent, towards 1
  = a few ids take everything);
* ``zipf_exponent``: ``s`` of a least-squares fit ``log count = c - s * log rank`` over the kept ids
  with a training count of at least :data:`ZIPF_FIT_MIN_COUNT` (the singleton tail of a sample is
  flat and would bias the slope); ``None`` when fewer than :data:`ZIPF_FIT_MIN_POINTS` ids qualify.
"""

from __future__ import annotations

import math

import numpy as np

from embdim.data.cache import PreparedData
from embdim.data.encoder import OOV_ID

TOP_SHARE = 0.01
"""Top share of ids whose row coverage is reported as ``top1pct_share``."""
ZIPF_FIT_MIN_COUNT = 5
ZIPF_FIT_MIN_POINTS = 3
SCAN_CHUNK_ROWS = 1 << 20
"""Rows scanned at a time when counting OOV ids (bounded memory on memory-mapped arrays)."""


def oov_share(ids: np.ndarray) -> np.ndarray:
    """float64 [F]: share of rows whose id is OOV, per column of ``ids`` int [N, F] (NaN when N = 0)."""
    n, f = ids.shape
    if n == 0:
        return np.full(f, np.nan)
    hits = np.zeros(f, dtype=np.int64)
    for start in range(0, n, SCAN_CHUNK_ROWS):
        hits += (np.asarray(ids[start : start + SCAN_CHUNK_ROWS]) == OOV_ID).sum(axis=0)
    return hits / n


def top_share(counts: np.ndarray, total: int, share: float = TOP_SHARE) -> float:
    """Share of ``total`` rows covered by the top ``ceil(share * len(counts))`` (>= 1) of ``counts``."""
    if len(counts) == 0 or total == 0:
        return 0.0
    k = max(1, math.ceil(share * len(counts)))
    return float(np.sort(counts)[::-1][:k].sum() / total)


def gini(counts: np.ndarray) -> float:
    """Gini coefficient of non-negative ``counts`` (0 when fewer than 2 or all zero)."""
    x = np.sort(np.asarray(counts, dtype=np.float64))
    n = len(x)
    if n < 2 or x.sum() == 0:
        return 0.0
    ranks = np.arange(1, n + 1)
    return float((2 * (ranks * x).sum() / (n * x.sum())) - (n + 1) / n)


def zipf_exponent(counts: np.ndarray, min_count: int = ZIPF_FIT_MIN_COUNT) -> float | None:
    """Fitted Zipf exponent ``s`` of counts (any order), see module docstring; ``None`` if too few."""
    x = np.sort(np.asarray(counts, dtype=np.float64))[::-1]
    ranks = np.arange(1, len(x) + 1, dtype=np.float64)
    keep = x >= min_count
    if keep.sum() < ZIPF_FIT_MIN_POINTS:
        return None
    slope = np.polyfit(np.log(ranks[keep]), np.log(x[keep]), 1)[0]
    return float(-slope)


def dataset_stats(prepared: PreparedData) -> dict:
    """Statistics as a JSON-able dict.

    Returns:
        ``{"rows": {split: n}, "positive_rate": {split: p}, "num_fields", "num_dense",
        "dense_names", "skipped", "fields": [{"name", "vocab_size", "train_oov_share",
        "oov_share": {split: share}, "top1pct_share", "gini", "zipf_exponent"}, ...]}``.
        Training-count figures need ``FieldInfo.counts``; they are ``None`` where counts are unknown.
    """
    schema = prepared.schema
    rows = {name: len(arrays) for name, arrays in prepared.splits.items()}
    positive_rate = {
        name: (float(np.mean(arrays.labels, dtype=np.float64)) if len(arrays) else None)
        for name, arrays in prepared.splits.items()
    }
    oov = {name: oov_share(arrays.ids) for name, arrays in prepared.splits.items() if name != "train"}
    fields = []
    for j, info in enumerate(schema.fields):
        entry: dict = {"name": info.name, "vocab_size": info.vocab_size}
        counts = info.counts
        if counts is not None:
            total = int(counts.sum())
            kept = counts[OOV_ID + 1 :]
            entry["train_oov_share"] = float(counts[OOV_ID] / total) if total else None
            entry["top1pct_share"] = top_share(kept, total)
            entry["gini"] = gini(kept)
            entry["zipf_exponent"] = zipf_exponent(kept)
        else:
            entry.update(train_oov_share=None, top1pct_share=None, gini=None, zipf_exponent=None)
        entry["oov_share"] = {name: (None if math.isnan(v[j]) else float(v[j])) for name, v in oov.items()}
        fields.append(entry)
    return {
        "rows": rows,
        "positive_rate": positive_rate,
        "num_fields": schema.num_fields,
        "num_dense": schema.num_dense,
        "dense_names": list(schema.dense_names),
        "skipped": dict(schema.skipped),
        "fields": fields,
    }


def _cell(value: float | None, spec: str, width: int) -> str:
    """``value`` formatted with ``spec``, or "-" when unknown, right-aligned to ``width``."""
    text = "-" if value is None else format(value, spec)
    return f"{text:>{width}}"


def format_stats(stats: dict) -> str:
    """A plain-text report of :func:`dataset_stats` output (splits, then one line per field)."""
    lines = [f"{'split':<10} {'rows':>12} {'positive rate':>14}"]
    for name, n in stats["rows"].items():
        lines.append(f"{name:<10} {n:>12,d} {_cell(stats['positive_rate'][name], '.4f', 14)}")
    if stats["skipped"]:
        lines.append("skipped: " + ", ".join(f"{k}: {v:,d}" for k, v in stats["skipped"].items()))
    lines.append(f"fields: {stats['num_fields']} categorical, {stats['num_dense']} dense")
    eval_splits = [s for s in stats["rows"] if s != "train"]
    columns = [("oov train", "train_oov_share", ".2%", 9)]
    columns += [(f"oov {s}", s, ".2%", 9) for s in eval_splits]
    columns += [
        ("top 1%", "top1pct_share", ".1%", 7),
        ("gini", "gini", ".3f", 6),
        ("zipf s", "zipf_exponent", ".2f", 6),
    ]
    lines.append(f"{'field':<16} {'vocab':>10}" + "".join(f" {title:>{width}}" for title, _, _, width in columns))
    for f in stats["fields"]:
        cells = []
        for _, key, spec, width in columns:
            value = f["oov_share"].get(key) if key in eval_splits else f[key]
            cells.append(" " + _cell(value, spec, width))
        lines.append(f"{f['name']:<16} {f['vocab_size']:>10,d}" + "".join(cells))
    return "\n".join(lines)
