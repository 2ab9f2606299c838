"""Splits, the prepare pipeline on in-memory RawData, its config, and dataset statistics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from pydantic import ValidationError

from embdim.data.cache import load_prepared
from embdim.data.encoder import MISSING_TOKEN, OOV_ID
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


# ---------------------------------------------------------------------- unusable numbers
@pytest.mark.parametrize("mode", ["dense", "discretize", "both"])
def test_non_finite_and_out_of_range_numbers_reach_the_cache_as_missing(tmp_path, mode):
    unusable = [np.inf, -np.inf, np.nan, 1e39, -1e300]  # missing in every mode
    beyond_int64 = [-1e19, 9.3e18]  # float32 features, but missing once discretised
    n, per_value = 300, 20
    odd = np.repeat([*unusable, *beyond_int64], per_value)
    x = np.concatenate([odd, np.arange(n - len(odd)) % 7]).astype(np.float64)
    kind = ["unusable"] * (len(unusable) * per_value) + ["beyond"] * (len(beyond_int64) * per_value)
    kind += ["plain"] * (n - len(odd))
    df = pl.DataFrame({"kind": kind, "x": x, "label": (np.arange(n) % 2).astype(np.float32)})
    data = prepare(RawData({"all": df}, ["kind"], ["x"]), {"numeric": mode}, tmp_path, "odd", progress=False)
    encoder, train = data.encoder(), data["train"]
    kinds = {name: train.ids[:, 0] == encoder.vocab_["kind"][name] for name in ("unusable", "beyond", "plain")}
    for split in data.splits.values():
        assert np.isfinite(split.dense).all()
    if mode != "discretize":
        dense = np.asarray(train.dense[:, 0])
        assert (dense[kinds["unusable"]] == 0).all()
        assert set(dense[kinds["beyond"]]) == {np.float32(-1e19), np.float32(9.3e18)}
        assert set(dense[kinds["plain"]]) <= set(map(float, range(7)))
    if mode != "dense":
        ids = np.asarray(train.ids[:, data.schema.field_names.index("x")])
        missing = encoder.vocab_["x"][MISSING_TOKEN]
        assert (ids[kinds["unusable"] | kinds["beyond"]] == missing).all()
        assert (ids[kinds["plain"]] != missing).all()
        assert set(encoder.vocab_["x"]) == {MISSING_TOKEN, "0", "1", "2", "log:1", "log:2", "log:3"}


# ---------------------------------------------------------------------- degenerate splits
def test_split_ratios_need_a_train_and_a_valid_share():
    for ratios in ([1, 0, 0], [0.9, 0, 0.1], [0, 0.5, 0.5], [float("nan"), 0.1, 0.1], [1e308, 1e308, 1e308]):
        with pytest.raises(ValidationError, match=r"selection on validation needs rows|finite number"):
            PreprocessConfig.model_validate({"split": {"ratios": ratios}})
    assert PreprocessConfig.model_validate({"split": {"ratios": [0.9, 0.1, 0]}}).split.ratios == [0.9, 0.1, 0]


def test_a_bad_ratio_in_a_config_file_names_its_key(tmp_path):
    from embdim.config import load_config
    from embdim.errors import ConfigError

    path = tmp_path / "x.yaml"
    path.write_text(
        "name: x\nmodel: fm\ndataset: {name: d, reader: criteo, options: {path: a.txt}, "
        "preprocess: {split: {ratios: [1, 0, 0]}}}\n"
    )
    with pytest.raises(ConfigError, match=r"dataset\.preprocess\.split\.ratios: .*valid > 0"):
        load_config(path)


def test_an_empty_valid_split_is_an_error_naming_the_ratios_and_leaves_no_cache(tmp_path):
    tiny = RawData({"all": pool(5).drop("row")}, ["c"], ["x"])
    with pytest.raises(DataError, match=r"valid split is empty: split\.ratios \[0\.8, 0\.1, 0\.1\] .* 5 rows"):
        prepare(tiny, None, tmp_path / "cache", "tiny", progress=False)
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").iterdir())


def test_given_files_without_valid_need_a_valid_ratio(tmp_path):
    given = RawData({"train": pool(50).drop("row"), "test": pool(20, 1).drop("row")}, ["c"], ["x"])
    with pytest.raises(DataError, match=r"no valid split: no valid file is given and split\.valid_ratio 0\.0"):
        prepare(given, {"split": {"valid_ratio": 0}}, tmp_path, "given", progress=False)
    three = RawData({"train": pool(3).drop("row")}, ["c"], ["x"])
    with pytest.raises(DataError, match=r"valid_ratio 0\.1 of the 3 train rows rounds to none"):
        prepare(three, None, tmp_path, "three", progress=False)
    no_labels = pool(30).drop("row").with_columns(pl.lit(None, dtype=pl.Float32).alias("label"))
    with pytest.raises(DataError, match=r"the given valid file has no rows with a 0/1 label"):
        prepare(
            RawData({"train": pool(50).drop("row"), "valid": no_labels}, ["c"]), None, tmp_path, "v", progress=False
        )


def test_a_reader_that_gives_no_train_split_names_the_option():
    with pytest.raises(DataError, match=r"dataset\.options\.files\.train"):
        split_frames({"valid": pool(5), "test": pool(5)})


def labels_raw(train: list[float], valid: list[float], test: list[float] | None) -> RawData:
    def frame(labels: list[float]) -> pl.DataFrame:
        return pl.DataFrame(
            {"c": [f"v{i % 3}" for i in range(len(labels))], "label": pl.Series(labels, dtype=pl.Float32)}
        )

    splits = {"train": frame(train), "valid": frame(valid)}
    if test is not None:
        splits["test"] = frame(test)
    return RawData(splits, ["c"])


def test_warnings_say_what_makes_the_metrics_doubtful(tmp_path):
    balanced = [0.0, 1.0] * 100
    data = prepare(labels_raw(balanced, balanced, balanced), None, tmp_path, "fine", progress=False)
    assert data.warnings == []

    one_label = labels_raw([1.0] * 50, [0.0] * 30 + [1.0] * 5, None)
    data = prepare(one_label, None, tmp_path, "odd", progress=False)
    assert data.warnings == [
        "train split: every one of its 50 labels is 1; the model cannot learn to rank",
        "test split is absent: there will be no test metrics",
        "valid split has 35 rows (fewer than 100): its metrics are noisy",
        "valid split has 5 positives (fewer than 10): its AUC is unreliable",
    ]
    assert json.loads(json.dumps(data.warnings)) == data.warnings
    # computed from the cached labels: a cache opened again (or written before warnings existed) has them too
    assert load_prepared(data.cache_dir).warnings == data.warnings

    empty_test = labels_raw(balanced, balanced, [])
    data = prepare(empty_test, None, tmp_path, "empty", progress=False)
    assert data.warnings == ["test split is empty: there will be no test metrics"]
    no_negatives = labels_raw(balanced, balanced, [1.0] * 150)
    assert prepare(no_negatives, None, tmp_path, "pos", progress=False).warnings == [
        "test split has no negatives: its AUC is undefined"
    ]


# ---------------------------------------------------------------------- missing sources
def test_a_missing_source_names_the_data_root_and_how_to_set_it(tmp_path):
    from embdim.data.readers.criteo import CriteoOptions, CriteoReader

    hint = r"\(\$EMBDIM_DATA_ROOT or the config key data_root sets it\)"
    absent_root = CriteoReader(CriteoOptions(path="criteo/a.txt"), tmp_path / "nowhere")
    with pytest.raises(DataError, match=rf"the data root \S*nowhere does not exist; .*'criteo/a.txt' .*{hint}"):
        prepare(absent_root, None, tmp_path / "cache", "c", progress=False)
    absent_file = CriteoReader(CriteoOptions(path="criteo/a.txt"), tmp_path)
    with pytest.raises(DataError, match=rf"criteo/a.txt: file not found below the data root {tmp_path} {hint}"):
        prepare(absent_file, None, tmp_path / "cache", "c", progress=False)
    relative_root = CriteoReader(CriteoOptions(path="a.txt"), Path("no/such/root"))
    with pytest.raises(DataError, match=r"data root no/such/root \(= /\S+/no/such/root\) does not exist"):
        prepare(relative_root, None, tmp_path / "cache", "c", progress=False)
    absolute = CriteoReader(CriteoOptions(path=str(tmp_path / "abs.txt")), tmp_path / "nowhere")
    with pytest.raises(DataError, match=rf"^{tmp_path}/abs.txt: file not found$"):
        prepare(absolute, None, tmp_path / "cache", "c", progress=False)
    assert not (tmp_path / "cache").exists()
