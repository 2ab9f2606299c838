"""Encoder: OOV, frequency-ranked ids, missing category, Criteo discretisation, dense features, state."""

from __future__ import annotations

import json
import math

import numpy as np
import polars as pl
import pytest

from embdim.data.encoder import (
    FLOAT32_MAX,
    LOG_BUCKET_PREFIX,
    MISSING_TOKEN,
    OOV_ID,
    Encoder,
    discretize_expr,
    usable_number,
)
from embdim.data.raw import DataError


def frame(**columns: list) -> pl.DataFrame:
    """Categorical lists -> Utf8, numeric lists -> Float64 (None = missing)."""
    out = {}
    for name, values in columns.items():
        is_text = any(isinstance(v, str) for v in values)
        out[name] = pl.Series(name, values, dtype=pl.Utf8 if is_text else pl.Float64)
    return pl.DataFrame(out)


TRAIN = frame(c=["b", "a", "c", "a", "b", "d", "a"])


def test_ids_follow_descending_train_count_with_ties_by_value():
    enc = Encoder().fit(TRAIN, ["c"])
    # a: 3, b: 2, then c and d with 1 each, tie broken by value
    assert list(enc.vocab_["c"]) == ["a", "b", "c", "d"]
    assert enc.vocab_["c"]["a"] == 1 and enc.vocab_["c"]["d"] == 4
    ids, dense = enc.transform(frame(c=["d", "c", "b", "a"]))
    assert ids.dtype == np.int32 and ids.shape == (4, 1) and ids.flags.c_contiguous
    assert ids[:, 0].tolist() == [4, 3, 2, 1]
    assert dense.shape == (4, 0) and dense.dtype == np.float32
    np.testing.assert_array_equal(enc.counts_["c"], [0, 3, 2, 1, 1])


def test_rare_and_unseen_values_map_to_oov_and_are_counted():
    enc = Encoder(min_count=2).fit(TRAIN, ["c"])
    assert list(enc.vocab_["c"]) == ["a", "b"]
    # counts_[0] = training rows whose value fell into OOV (c and d once each)
    np.testing.assert_array_equal(enc.counts_["c"], [2, 3, 2])
    assert enc.counts_["c"].sum() == TRAIN.height
    ids, _ = enc.transform(frame(c=["a", "c", "zzz", "b"]))
    assert ids[:, 0].tolist() == [1, OOV_ID, OOV_ID, 2]


def test_counts_come_from_train_only():
    enc = Encoder().fit(TRAIN, ["c"])
    schema_before = enc.schema()
    enc.transform(frame(c=["new"] * 100))  # transforming never changes the vocabulary
    assert "new" not in enc.vocab_["c"]
    assert enc.schema().vocab_sizes == schema_before.vocab_sizes == [5]
    ids, _ = enc.transform(frame(c=["new"]))
    assert ids[0, 0] == OOV_ID


def test_missing_is_its_own_category_even_when_rare():
    train = frame(c=[None, "a", "a", "a", "b", "b", "b", None, "a"])
    enc = Encoder(min_count=3).fit(train, ["c"])
    # a: 4, b: 3 kept; missing occurs twice (< min_count) and is still kept
    assert list(enc.vocab_["c"]) == ["a", "b", MISSING_TOKEN]
    np.testing.assert_array_equal(enc.counts_["c"], [0, 4, 3, 2])
    ids, _ = enc.transform(frame(c=[None, "a", "x"]))
    assert ids[:, 0].tolist() == [3, 1, OOV_ID]


def test_missing_unseen_in_train_maps_to_oov():
    enc = Encoder().fit(frame(c=["a", "b"]), ["c"])
    ids, _ = enc.transform(frame(c=[None, "b"]))
    assert ids[:, 0].tolist() == [OOV_ID, 2]


@pytest.mark.parametrize(
    ("x", "expected"),
    [
        (0.0, "0"),
        (1.0, "1"),
        (2.0, "2"),
        (-1.0, "-1"),
        (1.5, "1"),
        (2.5, LOG_BUCKET_PREFIX + "0"),  # log(2.5)^2 = 0.84
        (3.0, LOG_BUCKET_PREFIX + "1"),  # log(3)^2 = 1.21, not the raw value 1
        (100.0, LOG_BUCKET_PREFIX + str(math.floor(math.log(100.0) ** 2))),
        (None, None),
        (float("nan"), None),
        (float("inf"), None),
        (-float("inf"), None),
        (1e39, None),  # beyond float32
        (-1e19, None),  # integer part below int64
        (9.3e18, None),  # integer part above int64, although it would be log-bucketed
        (-(2.0**63), str(-(2**63))),  # the smallest int64 still fits
    ],
)
def test_criteo_discretisation_rule(x, expected):
    out = pl.DataFrame({"x": pl.Series([x], dtype=pl.Float64)}).select(discretize_expr("x"))
    assert out.item() == expected


def test_discretised_bucket_does_not_collide_with_raw_value():
    train = frame(c=["u"] * 4, x=[1.0, 3.0, 3.0, None])
    enc = Encoder(numeric="discretize").fit(train, ["c"], ["x"])
    assert enc.field_names_ == ["c", "x"] and enc.dense_names_ == []
    assert list(enc.vocab_["x"]) == [LOG_BUCKET_PREFIX + "1", "1", MISSING_TOKEN]
    ids, dense = enc.transform(frame(c=["u", "u", "u", "u"], x=[3.0, 1.0, None, 4.0]))
    # 4 -> floor(log(4)^2) = 1, the same bucket as 3
    assert ids[:, 1].tolist() == [1, 2, 3, 1]
    assert dense.shape == (4, 0)


def test_dense_missing_is_zero_and_log1p_clips_negatives():
    df = frame(x=[None, -5.0, 0.0, math.e - 1, float("nan")])
    raw = Encoder(numeric="dense").fit(df, [], ["x"]).transform(df)[1]
    np.testing.assert_allclose(raw[:, 0], [0.0, -5.0, 0.0, math.e - 1, 0.0], rtol=1e-6)
    logged = Encoder(numeric="dense", dense_transform="log1p").fit(df, [], ["x"]).transform(df)[1]
    assert logged.dtype == np.float32
    np.testing.assert_allclose(logged[:, 0], [0.0, 0.0, 0.0, 1.0, 0.0], rtol=1e-6)


UNUSABLE = [float("nan"), float("inf"), -float("inf"), 1e39, -1e300, 3.5e38]
"""Missing in every mode: non-finite or beyond float32."""
BEYOND_INT64 = [-1e19, 9.3e18, -9.3e18]
"""Usable as float32 features, missing once discretised."""


def test_usable_number_is_the_documented_rule():
    values = [1.5, FLOAT32_MAX, -FLOAT32_MAX, *UNUSABLE, *BEYOND_INT64, None]
    frame_ = pl.DataFrame({"x": pl.Series(values, dtype=pl.Float64)})
    as_float = frame_.select(usable_number(pl.col("x"))).to_series().to_list()
    assert as_float == [1.5, FLOAT32_MAX, -FLOAT32_MAX, *[None] * len(UNUSABLE), *BEYOND_INT64, None]
    as_integer = frame_.select(usable_number(pl.col("x"), integer=True)).to_series().to_list()
    assert as_integer == [1.5, *[None] * (len(values) - 1)]  # float32's maximum is far beyond int64


@pytest.mark.parametrize("mode", ["dense", "discretize", "both"])
def test_non_finite_and_out_of_range_numbers_are_missing_in_every_mode(mode):
    odd = [*UNUSABLE, *BEYOND_INT64]
    train = frame(x=[1.0, 5.0, None, *odd])
    enc = Encoder(numeric=mode).fit(train, [], ["x"])
    ids, dense = enc.transform(train)
    missing = slice(2, None)  # the null and every odd value
    if enc.keeps_dense:
        expected = [1.0, 5.0, 0.0, *[0.0] * len(UNUSABLE), *BEYOND_INT64]
        np.testing.assert_array_equal(dense[:, 0], np.asarray(expected, dtype=np.float32))
        assert np.isfinite(dense).all()
        logged = Encoder(numeric=mode, dense_transform="log1p").fit(train, [], ["x"]).transform(train)[1]
        assert np.isfinite(logged).all() and (logged[2 : 2 + 1 + len(UNUSABLE), 0] == 0).all()
    if enc.discretizes:
        # the odd values are counted as missing in training, the most frequent value here
        assert list(enc.vocab_["x"]) == [MISSING_TOKEN, "1", LOG_BUCKET_PREFIX + "2"]
        assert enc.counts_["x"].tolist() == [0, 1 + len(odd), 1, 1]
        assert (ids[missing, 0] == enc.vocab_["x"][MISSING_TOKEN]).all()


def test_both_mode_orders_fields_categorical_then_numeric():
    df = frame(a=["x", "y"], b=["p", "p"], n=[5.0, 1.0], m=[0.0, None])
    enc = Encoder(numeric="both").fit(df, ["a", "b"], ["n", "m"])
    ids, dense = enc.transform(df)
    assert enc.field_names_ == ["a", "b", "n", "m"] and enc.dense_names_ == ["n", "m"]
    assert ids.shape == (2, 4) and dense.shape == (2, 2)
    schema = enc.schema(rows={"train": 2})
    assert schema.field_names == ["a", "b", "n", "m"] and schema.dense_names == ["n", "m"]
    assert all(f.counts.sum() == 2 for f in schema.fields)
    assert schema.vocab_sizes == [len(enc.vocab_[n]) + 1 for n in enc.field_names_]


def test_state_round_trip_gives_identical_transform():
    rng = np.random.default_rng(0)
    n = 500
    train = frame(
        a=[f"v{i}" for i in rng.integers(0, 60, n)],
        b=[None if i == 0 else f"w{i}" for i in rng.integers(0, 5, n)],
        x=[None if v < 0.1 else float(v) for v in rng.exponential(20, n)],
    )
    enc = Encoder(min_count=3, numeric="both", dense_transform="log1p").fit(train, ["a", "b"], ["x"])
    clone = Encoder.from_dict(json.loads(json.dumps(enc.to_dict())))
    test = frame(a=["v1", "unseen", None], b=["w1", None, "w3"], x=[250.0, None, 1.0])
    for df in (train, test):
        for got, want in zip(clone.transform(df), enc.transform(df), strict=True):
            np.testing.assert_array_equal(got, want)
    assert clone.get_params() == enc.get_params()
    for name in enc.field_names_:
        np.testing.assert_array_equal(clone.counts_[name], enc.counts_[name])


def test_errors_name_the_problem():
    with pytest.raises(DataError, match="nope"):
        Encoder().fit(TRAIN, ["nope"])
    with pytest.raises(RuntimeError, match="not fitted"):
        Encoder().transform(TRAIN)
    with pytest.raises(ValueError, match="min_count"):
        Encoder(min_count=0)
    with pytest.raises(DataError, match="twice"):
        Encoder().fit(frame(c=["a"]), ["c", "c"])


@pytest.mark.slow
def test_a_million_rows_encode_to_frequency_ranked_ids_within_each_vocabulary():
    """1e6 rows x 26 fields (the speed is measured in benchmarks/preprocess.py, not asserted here)."""
    rows, fields, vocab = 1_000_000, 26, 100_000
    rng = np.random.default_rng(0)
    values = pl.Series([f"{i:x}" for i in range(vocab)])
    df = pl.DataFrame({f"C{f}": values.gather(rng.zipf(1.2, rows) % vocab) for f in range(fields)})
    encoder = Encoder(min_count=2)
    ids, _ = encoder.fit_transform(df, df.columns)
    assert ids.shape == (rows, fields)
    for f, info in enumerate(encoder.schema().fields):
        assert ids[:, f].min() >= 0 and ids[:, f].max() < info.vocab_size
        counts = np.bincount(ids[:, f], minlength=info.vocab_size)
        assert (np.diff(counts[1:]) <= 0).all()  # id k is the k-th most frequent kept value
