"""Splits, the prepare pipeline on in-memory RawData, its config, and dataset statistics."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from pydantic import ValidationError

from embdim.data.encoder import OOV_ID
from embdim.data.prepare import LABEL_SKIP_REASON, PreprocessConfig, prepare
from embdim.data.raw import DataError, RawData
from embdim.data.split import split_frames, split_indices
from embdim.data.stats import dataset_stats, format_stats, gini, top_share, zipf_exponent


def pool(n: int, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    return pl.DataFrame(
        {
            "row": np.arange(n),
            "c": [f"v{i}" for i in rng.integers(0, 30, n)],
            "x": rng.exponential(3.0, n),
            "label": rng.integers(0, 2, n).astype(np.float32),
        }
    )


# ---------------------------------------------------------------------- splits
def test_split_indices_follow_ratios_and_partition_the_rows():
    parts = split_indices(1000, (0.8, 0.1, 0.1), seed=3)
    assert {k: len(v) for k, v in parts.items()} == {"train": 800, "valid": 100, "test": 100}
    together = np.concatenate(list(parts.values()))
    assert np.array_equal(np.sort(together), np.arange(1000))
    assert all(np.all(np.diff(v) > 0) for v in parts.values()), "rows keep their source order"


def test_split_is_deterministic_per_seed():
    a, b, c = (split_indices(500, (0.7, 0.2, 0.1), seed=s) for s in (5, 5, 6))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["test"], c["test"])


def test_zero_ratio_leaves_a_split_out_and_bad_ratios_fail():
    assert set(split_indices(10, (0.9, 0.1, 0.0))) == {"train", "valid"}
    with pytest.raises(ValueError, match="ratios"):
        split_indices(10, (0.0, 0.5, 0.5))
    with pytest.raises(ValueError, match="ratios"):
        split_indices(10, (0.8, 0.2))


def test_split_frames_shuffles_a_pool():
    frames = split_frames({"all": pool(200)}, (0.5, 0.25, 0.25), seed=1)
    assert [f.height for f in frames.values()] == [100, 50, 50]
    rows = pl.concat(list(frames.values())).get_column("row").sort()
    assert rows.to_list() == list(range(200))


def test_given_files_are_respected():
    given = {"train": pool(50), "valid": pool(7, 1), "test": pool(9, 2)}
    frames = split_frames(given, seed=1, valid_ratio=0.5)
    assert all(frames[k].equals(given[k]) for k in given)


def test_valid_is_carved_from_train_when_absent():
    given = {"train": pool(400), "test": pool(30, 2)}
    frames = split_frames(given, seed=4, valid_ratio=0.25)
    assert (frames["train"].height, frames["valid"].height) == (300, 100)
    assert frames["test"].equals(given["test"])
    carved = set(frames["valid"].get_column("row"))
    assert carved.isdisjoint(frames["train"].get_column("row"))
    again = split_frames(given, seed=4, valid_ratio=0.25)
    assert again["valid"].equals(frames["valid"])
    assert set(split_frames(given, valid_ratio=0.0)) == {"train", "test"}


def test_bad_split_keys_fail():
    with pytest.raises(DataError, match="train"):
        split_frames({"valid": pool(5)})


# ---------------------------------------------------------------------- config
def test_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ValidationError, match="min_cnt"):
        PreprocessConfig.model_validate({"min_cnt": 3})
    with pytest.raises(ValidationError, match="ratios"):
        PreprocessConfig.model_validate({"split": {"ratios": [0.5, 0.5]}})
    with pytest.raises(ValidationError, match="numeric"):
        PreprocessConfig(numeric="bucket")
    cfg = PreprocessConfig.model_validate({"min_count": 10, "split": {"seed": 3}})
    assert cfg.split.ratios == [0.8, 0.1, 0.1] and cfg.split.valid_ratio == 0.1


# ---------------------------------------------------------------------- pipeline
def raw_data(n: int = 400) -> RawData:
    df = pool(n).drop("row")
    labels = df.get_column("label").to_numpy().copy()
    labels[:3] = [np.nan, 2.0, np.nan]  # rows with a bad label are dropped and reported
    df = df.with_columns(pl.Series("label", labels, dtype=pl.Float32).fill_nan(None))
    return RawData({"all": df}, ["c"], ["x"], skipped={"reader: bad line": 4})


def test_prepare_encodes_splits_and_reports_skipped_rows(tmp_path):
    cfg = {"min_count": 5, "numeric": "both", "dense_transform": "log1p", "split": {"seed": 2}}
    data = prepare(raw_data(), cfg, tmp_path, "mem", progress=False)
    assert data.schema.skipped == {"reader: bad line": 4, LABEL_SKIP_REASON: 3}
    assert sum(data.schema.rows.values()) == 397
    assert data.schema.field_names == ["c", "x"] and data.schema.dense_names == ["x"]
    train = data["train"]
    assert set(np.unique(train.labels)) <= {0.0, 1.0}
    for j, info in enumerate(data.schema.fields):
        # counts are training counts of each id, OOV included
        np.testing.assert_array_equal(np.bincount(train.ids[:, j], minlength=info.vocab_size), info.counts)
        assert np.all(np.diff(info.counts[OOV_ID + 1 :]) <= 0), "ids are ranked by training count"
    assert data.schema.meta["preprocess"]["min_count"] == 5
    assert "content" in data.schema.meta  # in-memory RawData is keyed by its content
    again = prepare(raw_data(), cfg, tmp_path, "mem", progress=False)
    assert again.cache_dir == data.cache_dir


def test_prepare_rejects_bad_names_and_columns(tmp_path):
    with pytest.raises(ValueError, match="name"):
        prepare(raw_data(), None, tmp_path, "../escape", progress=False)
    broken = RawData({"all": pool(10)}, ["missing_col"])
    with pytest.raises(DataError, match="missing_col"):
        prepare(broken, None, tmp_path, "broken", progress=False)


# ---------------------------------------------------------------------- stats
def test_skew_measures():
    assert gini(np.full(10, 5)) == pytest.approx(0.0)
    assert gini(np.array([0] * 99 + [100])) == pytest.approx(0.99)
    assert top_share(np.array([50, 30, 10, 10]), total=200) == pytest.approx(0.25)
    ranks = np.arange(1, 2001)
    assert zipf_exponent(np.rint(1e6 * ranks**-1.3)) == pytest.approx(1.3, abs=0.02)
    assert zipf_exponent(np.array([1, 1, 1])) is None


def test_dataset_stats_and_table(tmp_path):
    data = prepare(raw_data(), {"min_count": 8}, tmp_path, "mem", progress=False)
    stats = dataset_stats(data)
    assert stats["rows"] == data.schema.rows
    assert all(0.0 <= p <= 1.0 for p in stats["positive_rate"].values())
    field = stats["fields"][0]
    assert field["name"] == "c" and field["vocab_size"] == data.schema.fields[0].vocab_size
    expected_oov = float(np.mean(np.asarray(data["valid"].ids[:, 0]) == OOV_ID))
    assert field["oov_share"]["valid"] == pytest.approx(expected_oov)
    assert set(field) >= {"train_oov_share", "top1pct_share", "gini", "zipf_exponent"}
    table = format_stats(stats)
    assert "train" in table and "oov valid" in table and "\nc " in table
