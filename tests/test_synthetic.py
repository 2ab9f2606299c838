"""Synthetic data: shapes, determinism, Zipf skew, labels, planted truth, Criteo text, fast path."""

from __future__ import annotations

import gzip

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import roc_auc_score

from embdim.data.prepare import prepare
from embdim.data.stats import dataset_stats
from embdim.data.synthetic import (
    CRITEO_CARDINALITIES,
    CRITEO_KAGGLE_ROWS,
    CRITEO_NUM_CATEGORICAL,
    CRITEO_NUM_DENSE,
    SyntheticReader,
    SyntheticSpec,
    Teacher,
    _hex_codes,
    criteo_kaggle,
    criteo_like,
    generate,
    generate_raw,
    prepare_arrays,
    rank_weights,
    write_criteo_text,
)
from embdim.plugins import READERS

SMALL = SyntheticSpec(
    cardinalities=[40, 500, 6],
    zipf_exponents=[1.2, 1.0, 0.0],
    intrinsic_dims=[4, 2, 4],
    missing_rates=[0.2, 0.0, 0.0],
    rows=20_000,
    num_dense=2,
    dense_missing_rate=0.1,
    rare_value_dim=1,
    frequent_share=0.2,
)


def test_shapes_dtypes_and_raw_columns():
    sample = generate(SMALL)
    assert sample.values.shape == (20_000, 3) and sample.values.dtype == np.int32
    assert sample.dense.shape == (20_000, 2) and sample.labels.dtype == np.float32
    assert sample.values.max(axis=0).tolist() <= [40, 500, 6]  # n_f is the missing value
    raw = generate_raw(SMALL)
    df = raw.splits["all"]
    assert raw.categorical == ["C1", "C2", "C3"] and raw.numeric == ["I1", "I2"]
    assert df.schema["C1"] == pl.Utf8 and df.schema["I1"] == pl.Float64 and df.schema["label"] == pl.Float32
    assert df.get_column("C2").str.len_chars().to_list()[:5] == [8] * 5
    # missing values are nulls at about the planted rates
    assert df.get_column("C1").null_count() / df.height == pytest.approx(0.2, abs=0.02)
    assert df.get_column("I1").null_count() / df.height == pytest.approx(0.1, abs=0.02)
    assert df.get_column("C2").null_count() == 0


def test_deterministic_per_seed_and_prefix_stable():
    a, b = generate(SMALL), generate(SMALL)
    assert np.array_equal(a.values, b.values) and np.array_equal(a.labels, b.labels)
    other = generate(SMALL.model_copy(update={"seed": 1}))
    assert not np.array_equal(a.values, other.values)
    short = generate(SMALL.model_copy(update={"rows": 1000}))
    assert np.array_equal(short.values, a.values[:1000]) and np.array_equal(short.logits, a.logits[:1000])


def test_zipf_skew_matches_exponents():
    spec = SyntheticSpec(cardinalities=[1000] * 3, zipf_exponents=[0.0, 1.0, 1.5], rows=50_000)
    values = generate(spec).values
    top = [np.bincount(values[:, f]).max() / len(values) for f in range(3)]
    for f, s in enumerate(spec.zipf_exponents):
        expected = 1.0 / np.sum(np.arange(1, 1001, dtype=float) ** -s)
        assert top[f] == pytest.approx(expected, rel=0.2 if s else 2.0)
    assert top[0] < top[1] < top[2]
    # rank 0 is the most frequent value, and value strings are not in frequency order
    assert np.bincount(values[:, 2]).argmax() == 0
    codes = Teacher.build(spec).codes[2].astype(str)
    assert abs(np.corrcoef(np.argsort(np.argsort(codes)), np.arange(1000))[0, 1]) < 0.2


def test_labels_and_teacher_scale():
    sample = generate(SMALL)
    assert sample.labels.mean() == pytest.approx(SMALL.positive_rate, abs=0.03)
    assert sample.logits.std() == pytest.approx(SMALL.teacher_scale, rel=0.15)
    bayes_auc = roc_auc_score(sample.labels, sample.logits)
    assert 0.8 < bayes_auc < 0.93


def test_planted_dims_follow_the_frequency_rule():
    teacher = Teacher.build(SMALL)
    frequent = SMALL.frequent_values()
    assert frequent == [8, 100, 2]
    for f, r in enumerate(SMALL.intrinsic_dims):
        used = (teacher.u[f] != 0).sum(axis=1)  # [n_f + 1] dims in use per value
        assert used[: frequent[f]].max() == r and used[-1] == r  # frequent values and missing
        assert used[frequent[f] : -1].max() == min(SMALL.rare_value_dim, r)
        assert not teacher.u[f][:, r:].any()
    truth = SMALL.truth()
    assert truth["intrinsic_dims"] == [4, 2, 4] and truth["effective_dims"] == [4, 2, 4]
    assert truth["teacher_seed"] == SMALL.seed and truth["frequent_values"] == frequent
    assert SyntheticSpec(cardinalities=[3, 3], intrinsic_dims=[8, 2]).effective_dims() == [2, 2]


def test_spec_validation_and_broadcasting():
    spec = SyntheticSpec(cardinalities=[3, 4, 5], zipf_exponents=1.3, intrinsic_dims=2)
    assert spec.zipf_exponents == [1.3] * 3 and spec.intrinsic_dims == [2] * 3 and spec.missing_rates == [0.0] * 3
    with pytest.raises(ValueError, match="intrinsic_dims"):
        SyntheticSpec(cardinalities=[3, 4, 5], intrinsic_dims=[1, 2])
    with pytest.raises(ValueError, match="rows"):
        SyntheticSpec(cardinalities=[3], rows=-1)
    with pytest.raises(ValueError, match="unknown_key"):
        SyntheticSpec(cardinalities=[3], unknown_key=1)


def test_reader_is_registered_and_fast_path_matches_prepare(tmp_path):
    assert READERS.get("synthetic") is SyntheticReader
    cfg = {"min_count": 2, "numeric": "both", "dense_transform": "log1p", "split": {"seed": 7}}
    spec = SMALL.model_copy(update={"rows": 5000})
    slow = prepare(SyntheticReader(spec), cfg, tmp_path, "syn", progress=False)
    fast = prepare_arrays(spec, cfg)
    assert fast.schema.field_names == slow.schema.field_names == ["C1", "C2", "C3", "I1", "I2"]
    assert fast.schema.vocab_sizes == slow.schema.vocab_sizes
    for a, b in zip(fast.schema.fields, slow.schema.fields, strict=True):
        np.testing.assert_array_equal(a.counts, b.counts)
    for split in slow.splits:
        for attr in ("ids", "dense", "labels"):
            np.testing.assert_array_equal(getattr(fast[split], attr), getattr(slow[split], attr))
    assert slow.schema.meta["reader_options"]["intrinsic_dims"] == [4, 2, 4]  # truth kept with the cache
    assert fast.schema.meta["truth"] == spec.truth()


def test_stats_recover_the_zipf_order():
    spec = SyntheticSpec(cardinalities=[5000] * 2, zipf_exponents=[0.8, 1.4], rows=40_000)
    fields = dataset_stats(prepare_arrays(spec))["fields"]
    assert fields[0]["zipf_exponent"] < fields[1]["zipf_exponent"]
    assert fields[0]["top1pct_share"] < fields[1]["top1pct_share"]


@pytest.mark.parametrize("name", ["small.txt", "small.txt.gz"])
def test_criteo_text_round_trip(tmp_path, name):
    rows = 3000
    spec = criteo_like(rows, total_vocab=20_000, seed=3)
    path = write_criteo_text(tmp_path / name, rows, seed=3, spec=spec)
    opener = gzip.open if name.endswith(".gz") else open
    with opener(path, "rt") as fh:
        lines = fh.read().splitlines()
    assert len(lines) == rows
    cells = [line.split("\t") for line in lines]
    assert {len(c) for c in cells} == {1 + CRITEO_NUM_DENSE + CRITEO_NUM_CATEGORICAL}
    assert any(v == "" for c in cells for v in c[1 + CRITEO_NUM_DENSE :]), "no empty categorical value"
    assert any(v == "" for c in cells for v in c[1 : 1 + CRITEO_NUM_DENSE]), "no empty numeric value"
    assert {c[0] for c in cells} == {"0", "1"}
    hexes = [v for c in cells for v in c[1 + CRITEO_NUM_DENSE :] if v]
    assert all(len(v) == 8 for v in hexes) and int(hexes[0], 16) >= 0
    # same rows as the in-memory data of the same spec
    df = generate_raw(spec).splits["all"]
    assert [c[0] for c in cells] == [str(int(v)) for v in df.get_column("label")]
    assert [c[1 + CRITEO_NUM_DENSE] or None for c in cells] == df.get_column("C1").to_list()
    assert [float(c[1]) if c[1] else None for c in cells] == df.get_column("I1").to_list()
    assert not path.with_name(path.name + ".part").exists()


@pytest.mark.parametrize("total", [1_000_000, 100_000])
def test_criteo_like_profile(total):
    spec = criteo_like(1000, total_vocab=total)
    cards = spec.cardinalities
    assert len(cards) == CRITEO_NUM_CATEGORICAL and spec.num_dense == CRITEO_NUM_DENSE
    assert sum(cards) == pytest.approx(total, rel=0.01)
    assert max(cards) > 0.2 * total and sorted(cards)[CRITEO_NUM_CATEGORICAL // 2] < 0.01 * total
    assert spec.intrinsic_dims.count(max(spec.intrinsic_dims)) >= 2
    assert spec.effective_dims() == spec.intrinsic_dims
    assert any(m > 0 for m in spec.missing_rates)


def test_criteo_text_needs_the_criteo_shape(tmp_path):
    with pytest.raises(ValueError, match="26 categorical"):
        write_criteo_text(tmp_path / "x.txt", 10, spec=SMALL)


def expected_distinct(weights: np.ndarray, draws: float) -> float:
    """Expected distinct values among ``draws`` draws with these probability weights (Poisson limit)."""
    p = weights / weights.sum()
    return float(-np.expm1(-draws * p).sum())


@pytest.mark.slow
def test_the_criteo_kaggle_profile_has_criteo_kaggles_distinct_values_at_its_row_count():
    spec = criteo_kaggle(1000)
    assert spec.num_fields == CRITEO_NUM_CATEGORICAL and spec.num_dense == CRITEO_NUM_DENSE
    assert spec.positive_rate == 0.25
    for f, card in enumerate(CRITEO_CARDINALITIES):
        weights = rank_weights(spec.cardinalities[f], spec.zipf_exponents[f], spec.uniform_shares[f])
        draws = CRITEO_KAGGLE_ROWS * (1 - spec.missing_rates[f])
        assert expected_distinct(weights, draws) == pytest.approx(card, rel=0.01), f
        if spec.uniform_shares[f]:  # the long tail: most distinct values are drawn once or twice
            p = weights / weights.sum()
            seen = -np.expm1(-draws * p)
            once_or_twice = draws * p * np.exp(-draws * p) * (1 + draws * p / 2)
            assert once_or_twice.sum() / seen.sum() > 0.5, f


def test_a_uniform_share_gives_the_tail_the_distinct_values_expected():
    spec = SyntheticSpec(cardinalities=[5000, 5000], zipf_exponents=1.2, uniform_shares=[0.0, 0.4], rows=20_000)
    values = generate(spec).values
    for f in range(2):
        weights = rank_weights(5000, 1.2, spec.uniform_shares[f])
        drawn = len(np.unique(values[:, f]))
        assert drawn == pytest.approx(expected_distinct(weights, spec.rows), rel=0.03), f
    assert len(np.unique(values[:, 1])) > 2 * len(np.unique(values[:, 0]))


def test_a_spec_without_a_uniform_share_draws_its_zipf_law_unchanged():
    weights = rank_weights(100, 1.1)
    assert np.array_equal(weights, np.arange(1, 101, dtype=np.float64) ** -1.1)
    with pytest.raises(ValueError, match="uniform_shares"):
        SyntheticSpec(cardinalities=[10], uniform_shares=[1.5])


def test_value_codes_are_their_numbers_in_eight_hex_digits():
    codes = np.array([0, 1, 0xA0B0C0D, 0xDEADBEEF, 0xFFFFFFFF, *np.random.default_rng(0).integers(0, 1 << 32, 50)])
    assert [c.decode() for c in _hex_codes(codes)] == [f"{int(c):08x}" for c in codes]


def test_embdim_generate_writes_criteo_text_that_the_criteo_reader_prepares(tmp_path):
    import json

    from typer.testing import CliRunner

    from embdim.cli import app
    from embdim.data.prepare import PreprocessConfig
    from embdim.data.readers.criteo import CriteoOptions, CriteoReader

    out = tmp_path / "gen" / "criteo.txt.gz"
    args = ["generate", str(out), "--rows", "2000", "--profile", "criteo-like", "--vocab", "3000", "--no-progress"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    written = json.loads(out.with_name("criteo.txt.gz.spec.json").read_text())
    assert written["truth"]["intrinsic_dims"] == criteo_like(2000, 3000, 0).intrinsic_dims
    reader = CriteoReader(CriteoOptions(path=str(out)), tmp_path)
    data = prepare(reader, PreprocessConfig(numeric="discretize"), tmp_path / "cache", "gen", progress=False)
    assert sum(data.schema.rows.values()) == 2000
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 2 and "exists: use --force" in again.output
    unknown = CliRunner().invoke(app, [*args[:-1], "--profile", "avazu", "--force"])
    assert unknown.exit_code == 2 and "--profile 'avazu'" in unknown.output
