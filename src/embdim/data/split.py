"""Seeded train / valid / test splits of reader output.

Two cases, decided by the keys of ``RawData.splits``:

* ``{"all": df}``: rows are shuffled with ``numpy.random.default_rng(seed)`` and cut by ``ratios``
  (default 8:1:1) into ``train``, ``valid``, ``test``. A split whose ratio is 0 is left out.
* given files ``{"train": df, "valid": df?, "test": df?}``: used as they are; when ``valid`` is
  absent, a seeded ``valid_ratio`` share of ``train`` becomes ``valid`` (``valid_ratio=0`` keeps
  train whole and produces no ``valid``).

Within each split the rows keep their source order (the permutation only decides membership), so
the same seed always gives the same frames.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl

from embdim.data.raw import DataError

SPLIT_NAMES: tuple[str, ...] = ("train", "valid", "test")
POOL = "all"
DEFAULT_RATIOS: tuple[float, float, float] = (0.8, 0.1, 0.1)
DEFAULT_VALID_RATIO = 0.1


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
    unknown = keys - set(SPLIT_NAMES)
    if unknown or "train" not in keys:
        raise DataError(f"splits must be {{'{POOL}'}} or include 'train' among {SPLIT_NAMES}; got {sorted(keys)}")
    if not 0 <= valid_ratio < 1:
        raise ValueError(f"valid_ratio must be in [0, 1), got {valid_ratio}")
    out = {name: splits[name] for name in SPLIT_NAMES if name in splits}
    if "valid" not in out and valid_ratio > 0:
        train = out["train"]
        parts = split_indices(train.height, (1 - valid_ratio, valid_ratio, 0.0), seed)
        out["train"], out["valid"] = train[parts["train"]], train[parts["valid"]]
    return {name: out[name] for name in SPLIT_NAMES if name in out}
