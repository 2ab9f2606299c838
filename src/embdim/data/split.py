"""Seeded train / valid / test splits of reader output.

Two cases, decided by the keys of ``RawData.splits``:

* ``{"all": df}``: rows are shuffled with ``numpy.random.default_rng(seed)`` and cut by ``ratios``
  (default 8:1:1) into ``train``, ``valid``, ``test``. A split whose ratio is 0 is left out.
* given files ``{"train": df, "valid": df?, "test": df?}``: used as they are; when ``valid`` is
  absent, a seeded ``valid_ratio`` share of ``train`` becomes ``valid`` (``valid_ratio=0`` keeps
  train whole and produces no ``valid``).

Within each split the rows keep their source order (the permutation only decides membership), so
the same seed always gives the same frames.

:func:`split_warnings` says, from the labels of the finished splits, what makes a run's metrics
doubtful (a training split with one label, a missing or small test split, few positives in valid).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import polars as pl

from embdim.data.raw import DataError

SPLIT_NAMES: tuple[str, ...] = ("train", "valid", "test")
POOL = "all"
DEFAULT_RATIOS: tuple[float, float, float] = (0.8, 0.1, 0.1)
DEFAULT_VALID_RATIO = 0.1
MIN_EVAL_ROWS = 100
"""A valid or test split with fewer rows gets a warning: its AUC moves a lot from row to row."""
MIN_EVAL_LABEL_ROWS = 10
"""A valid or test split with fewer positives (or negatives) than this gets a warning."""
EVAL_SPLITS = ("valid", "test")


def split_indices(n: int, ratios: Sequence[float] = DEFAULT_RATIOS, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded random partition of ``range(n)``.

    Args:
        n: number of rows.
        ratios: non-negative weights for train, valid, test (normalised; train must be > 0).
        seed: seed of the permutation.

    Returns:
        ``{name: int64 [n_split]}`` sorted row indices per split with a positive ratio; sizes are
        ``round(n * cumulative share)`` differences, so they add up to ``n``.
    """
    weights = np.asarray(ratios, dtype=np.float64)
    if weights.shape != (len(SPLIT_NAMES),) or (weights < 0).any() or weights[0] <= 0:
        raise ValueError(f"ratios must be 3 non-negative numbers (train > 0) for {SPLIT_NAMES}, got {list(ratios)}")
    bounds = np.rint(np.cumsum(weights) / weights.sum() * n).astype(np.int64)
    bounds[-1] = n
    perm = np.random.default_rng(seed).permutation(n)
    out: dict[str, np.ndarray] = {}
    start = 0
    for name, weight, stop in zip(SPLIT_NAMES, weights, bounds, strict=True):
        if weight > 0:
            out[name] = np.sort(perm[start:stop])
        start = stop
    return out


def split_frames(
    splits: dict[str, pl.DataFrame],
    ratios: Sequence[float] = DEFAULT_RATIOS,
    seed: int = 0,
    valid_ratio: float = DEFAULT_VALID_RATIO,
) -> dict[str, pl.DataFrame]:
    """Turn reader splits into ``train`` / ``valid`` / ``test`` frames (see module docstring).

    Args:
        splits: ``{"all": df}`` or given ``{"train": df, "valid": df, "test": df}`` (valid/test optional).
        ratios: train/valid/test weights for the ``"all"`` case.
        seed: seed for the shuffle (``"all"``) or for carving ``valid`` out of ``train``.
        valid_ratio: share of ``train`` that becomes ``valid`` when ``valid`` is not given.
    """
    keys = set(splits)
    if keys == {POOL}:
        pool = splits[POOL]
        return {name: pool[idx] for name, idx in split_indices(pool.height, ratios, seed).items()}
    check_split_names(keys)
    if not 0 <= valid_ratio < 1:
        raise ValueError(f"valid_ratio must be in [0, 1), got {valid_ratio}")
    out = {name: splits[name] for name in SPLIT_NAMES if name in splits}
    if "valid" not in out and valid_ratio > 0:
        train = out["train"]
        parts = split_indices(train.height, (1 - valid_ratio, valid_ratio, 0.0), seed)
        out["train"], out["valid"] = train[parts["train"]], train[parts["valid"]]
    return {name: out[name] for name in SPLIT_NAMES if name in out}


def split_warnings(labels: Mapping[str, np.ndarray]) -> list[str]:
    """What makes metrics on these splits doubtful, one sentence each (JSON-able, in split order).

    Args:
        labels: split name -> float [N] 0/1 labels (memory-mapped arrays are fine; read once).

    Returns:
        Warnings for: a training split whose labels are all one value; a test split that is absent
        or empty; a valid or test split with fewer than :data:`MIN_EVAL_ROWS` rows or fewer than
        :data:`MIN_EVAL_LABEL_ROWS` rows of either label. An absent or empty valid split is not
        warned about here: :func:`embdim.data.prepare.prepare` refuses it.
    """
    out: list[str] = []
    counts = {}
    for name, values in labels.items():
        n = len(values)
        positives = int(np.count_nonzero(np.asarray(values) == 1.0))
        counts[name] = (n, positives, n - positives)
    if "train" in counts:
        n, positives, negatives = counts["train"]
        if n and (positives == 0 or negatives == 0):
            value = 1 if positives else 0
            out.append(f"train split: every one of its {n:,} labels is {value}; the model cannot learn to rank")
    if counts.get("test", (0, 0, 0))[0] == 0:
        state = "empty" if "test" in counts else "absent"
        out.append(f"test split is {state}: there will be no test metrics")
    for name in EVAL_SPLITS:
        n, positives, negatives = counts.get(name, (0, 0, 0))
        if n == 0:
            continue
        if n < MIN_EVAL_ROWS:
            rows = "row" if n == 1 else "rows"
            out.append(f"{name} split has {n:,} {rows} (fewer than {MIN_EVAL_ROWS}): its metrics are noisy")
        for count, what in ((positives, "positives"), (negatives, "negatives")):
            if count == 0:
                out.append(f"{name} split has no {what}: its AUC is undefined")
            elif count < MIN_EVAL_LABEL_ROWS:
                out.append(
                    f"{name} split has {count:,} {what} (fewer than {MIN_EVAL_LABEL_ROWS}): its AUC is unreliable"
                )
    return out


def check_split_names(names: set[str]) -> None:
    """Raise :class:`DataError` unless the reader's splits are one pool or given files with a train file."""
    if names == {POOL}:
        return
    if names - set(SPLIT_NAMES) or "train" not in names:
        raise DataError(
            f"the reader gives the splits {sorted(names)}: give one pool of rows (dataset.options.path) or a train "
            f"file among {', '.join(SPLIT_NAMES)} (dataset.options.files.train)"
        )


def require_rows(
    sizes: Mapping[str, int],
    given: Mapping[str, int],
    ratios: Sequence[float],
    valid_ratio: float,
    files: Mapping[str, str],
) -> None:
    """Raise :class:`DataError` when the split left ``train`` or ``valid`` without rows, saying why.

    Args:
        sizes: rows of each split made (``train``, ``valid``, ``test``; absent when not made).
        given: rows per reader split (``{"all": n}`` or the given files), rows without a 0/1 label not counted.
        ratios, valid_ratio: the split settings, named in the message.
        files: reader split -> the file it was read from, where known.
    """

    def file_of(name: str) -> str:
        return f" ({files[name]})" if name in files else ""

    for name in ("train", "valid"):
        if sizes.get(name, 0) > 0:
            continue
        need = "training needs rows" if name == "train" else "selection on validation needs rows"
        if POOL in given:
            raise DataError(
                f"the {name} split is empty: split.ratios {list(ratios)} give it none of the {given[POOL]:,} rows"
                f"{file_of(POOL)}; {need} (use more rows or a larger {name} ratio)"
            )
        if name in given:  # always so for train: a train file is required
            raise DataError(f"the given {name} file{file_of(name)} has no rows with a 0/1 label; {need}")
        carved = f"split.valid_ratio {valid_ratio}"
        if valid_ratio == 0:
            raise DataError(f"no valid split: no valid file is given and {carved} carves none out of train; {need}")
        raise DataError(
            f"the valid split is empty: {carved} of the {given.get('train', 0):,} train rows{file_of('train')} "
            f"rounds to none; {need} (give a valid file or a larger valid_ratio)"
        )
