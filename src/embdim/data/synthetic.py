"""Synthetic CTR data with a planted ground truth: how many embedding dimensions each field needs.

**Fields and frequencies.** Field ``f`` has ``cardinalities[f]`` values. A row's value is drawn from
a Zipf law over frequency ranks, ``P(rank k) ∝ (k + 1) ** -zipf_exponents[f]``, mixed with a share
``uniform_shares[f]`` (default 0) spread evenly over all ``n_f`` values: at scale, such a share gives
the long tail of real logs, values seen once or twice (vectorised: inverse CDF by ``searchsorted`` on
the precomputed cumulative distribution), except that with probability
``missing_rates[f]`` the value is *missing* (null in :class:`RawData`, empty in Criteo text).
Missing is a value of its own with its own teacher vector, as in real logs where "absent" is
informative. Each rank is spelled as a distinct random 8-hex-digit code drawn with the teacher seed
(a seeded injection rank -> code), so value strings are not in frequency order.

**Teacher.** Every value ``v`` of field ``f`` has a vector ``u_f[v]`` in ``R^R`` (``R = max r_f``)
whose entries are N(0, 1) in the first ``dim(v)`` coordinates and 0 after, and a first-order
weight ``w_f[v] ~ N(0, 1)``. The rule for ``dim(v)`` (frequency-dependent information):

* ``dim(v) = r_f = intrinsic_dims[f]`` when ``v`` is among the ``ceil(frequent_share * n_f)``
  most probable values of the field, and for the missing value;
* otherwise ``dim(v) = min(rare_value_dim, r_f)``; ``rare_value_dim=None`` (default) means
  ``r_f`` for every value.

Each numeric column ``j`` has a latent ``z_j ~ N(0, 1)`` and a weight ``c_j ~ N(0, 1)``; its
observed value is the count ``floor(exp(mu_j + sigma_j * z_j))`` (non-decreasing in ``z_j``), missing
with probability ``dense_missing_rate`` (then it contributes nothing). The raw logit has three
parts, each standardised on a calibration sample and mixed by variance shares::

    S1 = Σ_f w_f[x_f]                       share 1 - interaction_share - dense_share
    S2 = Σ_{f<g} <u_f[x_f], u_g[x_g]>       share interaction_share
    D  = Σ_j c_j z_j [present]              share dense_share (0 without numeric columns)
    logit = bias + teacher_scale * standardised mix;   label ~ Bernoulli(sigmoid(logit))

so ``teacher_scale`` is the logit's standard deviation (default 2.0: the Bayes AUC of the teacher
is about 0.86) and ``bias`` makes the positive rate about ``positive_rate``. Because the
interaction is a plain dot product in one shared coordinate system, a student whose field-``f``
embedding keeps a prefix of ``d_f >= r_f`` coordinates can represent the teacher exactly, and
fewer cannot: ``r_f`` is the field's intrinsic dimension, capped at the largest ``r_g`` of the other
fields (``truth()["effective_dims"]``), since coordinates no other field uses never enter a product.

**Seeds and determinism.** The teacher (codes, vectors, weights, numeric shapes, calibration)
depends on ``teacher_seed`` (default: ``seed``) and the spec, not on ``rows``. Rows are generated
in fixed blocks of :data:`GEN_BLOCK_ROWS` with one random stream per block (``seed``, block index),
and each row takes a fixed number of uniforms from its block's stream in row-major order, so row
``i`` depends only on ``seed`` and ``i``: the first ``n`` rows are the same whatever ``rows`` is,
and in-memory data, encoded arrays and Criteo text written in chunks all hold the same rows.

Outputs: :func:`generate` (values, dense, labels and true logits as arrays), :class:`RawData` via
:func:`generate_raw` or the registered reader ``"synthetic"``, encoded :class:`PreparedData`
straight from arrays via :func:`prepare_arrays` (the same as running ``prepare`` on the reader),
and Criteo-format text via :func:`write_criteo_text`. :func:`criteo_like` builds a Criteo-shaped
spec (26 skewed categorical fields, 13 count columns) of any vocabulary size; :func:`criteo_kaggle`
the spec whose distinct values at Criteo Kaggle's row count are Criteo Kaggle's per-field
cardinalities, most of them seen once or twice.
"""

from __future__ import annotations

import gzip
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
from pydantic import Field, model_validator
from scipy.optimize import brentq
from scipy.special import expit, ndtri
from tqdm.auto import tqdm

from embdim.data.cache import PreparedData, SplitArrays
from embdim.data.encoder import MISSING_TOKEN, OOV_ID
from embdim.data.prepare import PreprocessConfig
from embdim.data.raw import LABEL, RawData
from embdim.data.readers.base import Reader, ReaderOptions
from embdim.data.schema import DatasetSchema, FieldInfo
from embdim.data.split import split_indices
from embdim.registry import READERS

GEN_BLOCK_ROWS = 1 << 16
"""Rows per random-stream block; fixed so data never depends on how it is chunked."""
CALIBRATION_ROWS = 1 << 16
"""Rows of the teacher's own calibration sample (standardisation and bias)."""
CODE_SPACE = 1 << 32
"""Value codes are distinct random integers below this, spelled as 8 hex digits."""
HEX_DIGITS = 8
_HEX_PAIRS = np.frombuffer(b"".join(f"{byte:02x}".encode() for byte in range(256)), dtype=np.uint16)
"""Byte value -> its two hex digits as the two bytes of one uint16 (in memory order)."""
# Independent random streams, mixed into SeedSequence entropy with the seed.
_TEACHER_STREAM = 1
_CALIBRATION_STREAM = 2
_DATA_STREAM = 3
_PROFILE_STREAM = 4
# Numeric columns: observed count = floor(exp(mu + sigma * z)), mu and sigma drawn uniformly from these.
DENSE_MU_RANGE = (0.0, 3.0)
DENSE_SIGMA_RANGE = (0.5, 1.5)
BIAS_SEARCH_RANGE = (-50.0, 50.0)
_UNIFORM_EPS = 1e-12  # keeps the inverse normal CDF finite
_SORTED_SEARCH_MIN = 1 << 16  # values per field above which draws are searched in sorted order

CRITEO_NUM_DENSE = 13
CRITEO_NUM_CATEGORICAL = 26
CRITEO_CARDINALITIES: tuple[int, ...] = (
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194,
    27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572,
)  # fmt: skip
"""Distinct values per categorical field of the Criteo Kaggle data (C1..C26): the size profile."""
CRITEO_KAGGLE_ROWS = 45_840_617
"""Rows of the Criteo Kaggle (Display Advertising Challenge) training file."""
CRITEO_KAGGLE_SEED = 0
"""The :func:`criteo_like` seed whose Zipf exponents and missing rates the pools below were solved for."""
CRITEO_KAGGLE_POOLS: tuple[int, ...] = (
    1460, 583, 15275990, 2587634, 305, 24, 12517, 633, 3, 93145, 5683, 12706817, 3194,
    27, 14992, 8173291, 10, 5652, 2173, 4, 10442513, 18, 15, 286181, 105, 142572,
)  # fmt: skip
"""Values per field of :func:`criteo_kaggle`: the pool from which, at :data:`CRITEO_KAGGLE_ROWS`
rows, the expected number of distinct values drawn is :data:`CRITEO_CARDINALITIES` (solved by
bisection on ``sum_k 1 - exp(-rows * p_k)``; tests/test_synthetic.py checks it). Fields that Zipf
alone fills keep their cardinality; the five largest need a uniform tail and a larger pool."""
CRITEO_KAGGLE_UNIFORM_SHARES: tuple[float, ...] = (
    0, 0, 0.3332, 0.0564, 0, 0, 0, 0, 0, 0, 0, 0.2849, 0, 0, 0, 0.1783, 0, 0, 0, 0, 0.2278, 0, 0, 0, 0, 0,
)  # fmt: skip
"""Uniform shares of :func:`criteo_kaggle`: one expected draw per pool value at Criteo Kaggle's row
count, so that most distinct values of the large fields are seen once or twice."""
CRITEO_ZIPF_RANGE = (1.0, 1.3)
CRITEO_MISSING_FIELD_SHARE = 0.35
CRITEO_MISSING_RATE_RANGE = (0.02, 0.45)
CRITEO_DENSE_MISSING_RATE = 0.2
_CARD_EXPONENT_RANGE = (0.05, 1.5)
_CARD_MIN = 2
_BISECTION_STEPS = 60
_PER_FIELD = ("zipf_exponents", "intrinsic_dims", "missing_rates", "uniform_shares")


class SyntheticSpec(ReaderOptions):
    """What to generate; also the options of the ``"synthetic"`` reader. Scalars broadcast to fields.

    The planted truth is :meth:`truth`; see the module docstring for the exact model.
    """

    cardinalities: list[int] = Field(min_length=1, description="values per categorical field (missing excluded).")
    zipf_exponents: list[float] = Field(default=[1.1], description="Zipf exponent s_f per field (0 = uniform).")
    intrinsic_dims: list[int] = Field(default=[4], description="true dimension r_f of each field's teacher vectors.")
    missing_rates: list[float] = Field(default=[0.0], description="probability that a field's value is missing.")
    uniform_shares: list[float] = Field(
        default=[0.0], description="share of a field's draws spread evenly over its values (a long tail)."
    )
    field_names: list[str] | None = Field(default=None, description="categorical column names (default C1..CF).")
    rows: int = Field(default=10_000, ge=0, description="number of rows.")
    seed: int = Field(default=0, description="seed of the rows (value draws, numeric latents, labels).")
    teacher_seed: int | None = Field(default=None, description="seed of the teacher (default: seed).")
    num_dense: int = Field(default=0, ge=0, description="number of numeric (count) columns I1..I<n>.")
    dense_missing_rate: float = Field(
        default=0.0, ge=0.0, lt=1.0, description="probability a numeric value is missing."
    )
    teacher_scale: float = Field(default=2.0, ge=0.0, description="standard deviation of the true logit.")
    positive_rate: float = Field(default=0.25, gt=0.0, lt=1.0, description="target share of positive labels.")
    interaction_share: float = Field(default=0.7, ge=0.0, le=1.0, description="logit variance share of S2.")
    dense_share: float = Field(default=0.1, ge=0.0, le=1.0, description="logit variance share of numeric columns.")
    rare_value_dim: int | None = Field(default=None, ge=0, description="teacher dims of non-frequent values.")
    frequent_share: float = Field(default=0.1, gt=0.0, le=1.0, description="top share of values that are frequent.")

    @model_validator(mode="before")
    @classmethod
    def _wrap_scalars(cls, data: object) -> object:
        if isinstance(data, dict):
            data = {k: [v] if k in _PER_FIELD and isinstance(v, int | float) else v for k, v in data.items()}
        return data

    @model_validator(mode="after")
    def _check(self) -> SyntheticSpec:
        n = len(self.cardinalities)
        for key in _PER_FIELD:
            value = getattr(self, key)
            if len(value) == 1 and n != 1:  # one entry = the same for every field
                setattr(self, key, value * n)
            elif len(value) != n:
                raise ValueError(f"{key} has {len(value)} entries, cardinalities has {n}")
        if self.field_names is not None and len(self.field_names) != n:
            raise ValueError(f"field_names has {len(self.field_names)} entries, cardinalities has {n}")
        if min(self.cardinalities) < 1 or min(self.intrinsic_dims) < 1:
            raise ValueError("cardinalities and intrinsic_dims must be >= 1")
        if min(self.zipf_exponents) < 0:
            raise ValueError("zipf_exponents must be >= 0")
        if not all(0.0 <= m < 1.0 for m in self.missing_rates):
            raise ValueError("missing_rates must be in [0, 1)")
        if not all(0.0 <= u <= 1.0 for u in self.uniform_shares):
            raise ValueError("uniform_shares must be in [0, 1]")
        if self.interaction_share + self.dense_share > 1.0:
            raise ValueError("interaction_share + dense_share must be <= 1")
        return self

    @property
    def num_fields(self) -> int:
        return len(self.cardinalities)

    @property
    def names(self) -> list[str]:
        """Categorical column names."""
        return list(self.field_names) if self.field_names else [f"C{i + 1}" for i in range(self.num_fields)]

    @property
    def dense_names(self) -> list[str]:
        """Numeric column names ``I1..I<num_dense>``."""
        return [f"I{j + 1}" for j in range(self.num_dense)]

    @property
    def resolved_teacher_seed(self) -> int:
        return self.seed if self.teacher_seed is None else self.teacher_seed

    def frequent_values(self) -> list[int]:
        """Per field, how many top-ranked values use all ``r_f`` teacher dims."""
        return [math.ceil(self.frequent_share * n) for n in self.cardinalities]

    def effective_dims(self) -> list[int]:
        """``min(r_f, max_{g != f} r_g)``: the dims of field f that enter some interaction."""
        r = self.intrinsic_dims
        return [min(rf, max((rg for g, rg in enumerate(r) if g != f), default=0)) for f, rf in enumerate(r)]

    def truth(self) -> dict:
        """The planted ground truth (JSON-able), per field in column order."""
        return {
            "field_names": self.names,
            "cardinalities": list(self.cardinalities),
            "zipf_exponents": list(self.zipf_exponents),
            "intrinsic_dims": list(self.intrinsic_dims),
            "effective_dims": self.effective_dims(),
            "missing_rates": list(self.missing_rates),
            "uniform_shares": list(self.uniform_shares),
            "rare_value_dim": self.rare_value_dim,
            "frequent_share": self.frequent_share,
            "frequent_values": self.frequent_values(),
            "num_dense": self.num_dense,
            "teacher_seed": self.resolved_teacher_seed,
            "seed": self.seed,
            "teacher_scale": self.teacher_scale,
            "positive_rate": self.positive_rate,
            "interaction_share": self.interaction_share,
            "dense_share": self.dense_share if self.num_dense else 0.0,
        }


def rank_weights(n: int, zipf_exponent: float, uniform_share: float = 0.0) -> np.ndarray:
    """float64 [n]: weights of a field's value ranks, proportional to their probabilities (Zipf over
    ranks, mixed with ``uniform_share`` spread evenly); they sum to 1 when ``uniform_share > 0``."""
    weights = np.arange(1, n + 1, dtype=np.float64) ** -zipf_exponent
    if uniform_share:  # only then: specs without a tail keep their exact draws
        weights = (1.0 - uniform_share) * (weights / weights.sum()) + uniform_share / n
    return weights


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *stream]))


def _hex_codes(codes: np.ndarray) -> np.ndarray:
    """``S8`` [n]: each uint32 code as 8 lowercase hex digits (two digits per byte, by table)."""
    big_endian = np.ascontiguousarray(codes, dtype=">u4").view(np.uint8).reshape(-1, 4)
    return np.ascontiguousarray(_HEX_PAIRS[big_endian]).view(f"S{HEX_DIGITS}").ravel()


@dataclass
class Teacher:
    """The hidden model behind a :class:`SyntheticSpec` (build with :meth:`build`).

    Per field ``f`` with ``n_f`` values, index ``n_f`` is the missing value:
        cdf: float64 [n_f], cumulative distribution over ranks (Zipf, mixed with the uniform share).
        codes: ``S8`` [n_f], value strings by rank.
        u: float32 [n_f + 1, R] teacher vectors; w: float32 [n_f + 1] first-order weights.
    Numeric columns: dense_weight, dense_mu, dense_sigma float64 [Dn].
    Mixing: ``weights`` float64 [3] and ``means`` [3] for (S1, S2, D), then ``scale`` and ``bias``.
    """

    spec: SyntheticSpec
    cdf: list[np.ndarray]
    codes: list[np.ndarray]
    u: list[np.ndarray]
    w: list[np.ndarray]
    dense_weight: np.ndarray
    dense_mu: np.ndarray
    dense_sigma: np.ndarray
    weights: np.ndarray
    means: np.ndarray
    scale: float = 1.0
    bias: float = 0.0
    _series: dict[int, pl.Series] = field(default_factory=dict, repr=False)

    @classmethod
    def build(cls, spec: SyntheticSpec) -> Teacher:
        """Draw the teacher of ``spec`` from ``teacher_seed``, calibrate scale and bias (``rows`` unused)."""
        rng = _rng(spec.resolved_teacher_seed, _TEACHER_STREAM)
        width = max(spec.intrinsic_dims)
        frequent = spec.frequent_values()
        cdf, codes, u, w = [], [], [], []
        for f, n in enumerate(spec.cardinalities):
            c = np.cumsum(rank_weights(n, spec.zipf_exponents[f], spec.uniform_shares[f]))
            cdf.append(c / c[-1])
            codes.append(_hex_codes(rng.choice(CODE_SPACE, size=n, replace=False)))
            r = spec.intrinsic_dims[f]
            rare = r if spec.rare_value_dim is None else min(spec.rare_value_dim, r)
            dims = np.full(n + 1, rare, dtype=np.int64)
            dims[: frequent[f]] = r
            dims[n] = r  # the missing value
            vec = rng.standard_normal((n + 1, width), dtype=np.float32)
            vec[np.arange(width)[None, :] >= dims[:, None]] = 0.0
            u.append(vec)
            w.append(rng.standard_normal(n + 1, dtype=np.float32))
        dense_weight = rng.standard_normal(spec.num_dense)
        dense_mu = rng.uniform(*DENSE_MU_RANGE, size=spec.num_dense)
        dense_sigma = rng.uniform(*DENSE_SIGMA_RANGE, size=spec.num_dense)
        teacher = cls(spec, cdf, codes, u, w, dense_weight, dense_mu, dense_sigma, np.zeros(3), np.zeros(3))
        teacher._calibrate()
        return teacher

    def _calibrate(self) -> None:
        spec = self.spec
        values, z, present, _ = self.draw(_rng(spec.resolved_teacher_seed, _CALIBRATION_STREAM), CALIBRATION_ROWS)
        parts = self.components(values, z, present)  # [3, n]
        dense_share = spec.dense_share if spec.num_dense else 0.0
        shares = np.array([1.0 - spec.interaction_share - dense_share, spec.interaction_share, dense_share])
        std = parts.std(axis=1)
        shares[std == 0] = 0.0  # a part that does not vary (e.g. S2 with one field) gets no share
        if shares.sum() == 0:
            shares = (std > 0).astype(np.float64)
        if shares.sum() > 0:
            shares /= shares.sum()  # renormalised over the parts that exist
        self.means = parts.mean(axis=1)
        self.weights = np.where(std > 0, np.sqrt(shares) / np.where(std > 0, std, 1.0), 0.0)
        mixed = self.weights @ (parts - self.means[:, None])
        mixed_std = mixed.std()
        self.scale = spec.teacher_scale / mixed_std if mixed_std > 0 else 0.0
        logits = self.scale * mixed
        self.bias = brentq(lambda b: expit(logits + b).mean() - spec.positive_rate, *BIAS_SEARCH_RANGE)

    def draw(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Draw ``n`` rows of inputs from one row-major uniform matrix, so row ``i`` does not depend on ``n``.

        Returns:
            values: int32 [n, F] value indices (frequency ranks; ``n_f`` = missing).
            z: float64 [n, Dn] numeric latents; present: bool [n, Dn].
            label_u: float64 [n] uniforms for the Bernoulli labels.
        """
        spec = self.spec
        nf, nd = spec.num_fields, spec.num_dense
        # columns: value and missing draws per field, latent and presence per numeric column, label
        u = rng.random((n, 2 * nf + 2 * nd + 1))
        values = np.empty((n, nf), dtype=np.int32)
        for f, cdf in enumerate(self.cdf):
            if len(cdf) > _SORTED_SEARCH_MIN:  # sorted keys walk a large CDF in order: far fewer cache misses
                order = np.argsort(u[:, f])
                ranks = np.empty(n, dtype=np.int64)
                ranks[order] = np.searchsorted(cdf, u[order, f], side="right")
            else:
                ranks = np.searchsorted(cdf, u[:, f], side="right")
            np.minimum(ranks, len(cdf) - 1, out=ranks)
            ranks[u[:, nf + f] < spec.missing_rates[f]] = len(cdf)
            values[:, f] = ranks
        z = ndtri(np.clip(u[:, 2 * nf : 2 * nf + nd], _UNIFORM_EPS, 1.0 - _UNIFORM_EPS))
        present = u[:, 2 * nf + nd : 2 * nf + 2 * nd] >= spec.dense_missing_rate
        return values, z, present, u[:, -1]

    def components(self, values: np.ndarray, z: np.ndarray, present: np.ndarray) -> np.ndarray:
        """float64 [3, n]: the raw logit parts S1 (first order), S2 (pairwise), D (numeric)."""
        n = len(values)
        width = self.u[0].shape[1]
        first = np.zeros(n)
        total = np.zeros((n, width), dtype=np.float32)  # float32 sums of <= F terms: ample precision
        squares = np.zeros(n)
        for f in range(values.shape[1]):
            vec = self.u[f][values[:, f]]
            first += self.w[f][values[:, f]]
            total += vec
            squares += np.einsum("ij,ij->i", vec, vec)
        pairwise = 0.5 * (np.einsum("ij,ij->i", total, total, dtype=np.float64) - squares)
        dense = (z * present) @ self.dense_weight if self.spec.num_dense else np.zeros(n)
        return np.stack([first, pairwise, dense])

    def logits(self, values: np.ndarray, z: np.ndarray, present: np.ndarray) -> np.ndarray:
        """float64 [n]: the true logits of these rows."""
        parts = self.components(values, z, present)
        return self.bias + self.scale * (self.weights @ (parts - self.means[:, None]))

    def dense_values(self, z: np.ndarray, present: np.ndarray) -> np.ndarray:
        """float64 [n, Dn]: observed counts ``floor(exp(mu + sigma z))``, NaN where missing."""
        x = np.floor(np.exp(self.dense_mu + self.dense_sigma * z))
        x[~present] = np.nan
        return x

    def value_bytes(self, f: int, missing: str) -> np.ndarray:
        """Bytes [n_f + 1]: value strings of field ``f`` by index, the last entry ``missing``."""
        return np.append(self.codes[f], missing.encode())

    def value_series(self, f: int) -> pl.Series:
        """Utf8 [n_f + 1]: value strings of field ``f`` by index, the last entry null (missing)."""
        if f not in self._series:
            codes = pl.Series(self.spec.names[f], self.codes[f]).cast(pl.Utf8)
            self._series[f] = pl.concat([codes, pl.Series(self.spec.names[f], [None], dtype=pl.Utf8)])
        return self._series[f]


@dataclass
class SyntheticSample:
    """Generated rows as arrays.

    Attributes:
        values: int32 [N, F] value index per field: frequency rank 0.. (0 = most probable), ``n_f`` = missing.
        dense: float64 [N, Dn] observed numeric values (counts), NaN = missing.
        labels: float32 [N] 0/1.
        logits: float32 [N] the teacher's true logits (for the Bayes AUC).
    """

    values: np.ndarray
    dense: np.ndarray
    labels: np.ndarray
    logits: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


def iter_blocks(spec: SyntheticSpec, teacher: Teacher | None = None) -> Iterator[SyntheticSample]:
    """The rows of ``spec`` in blocks of :data:`GEN_BLOCK_ROWS` (the last may be shorter)."""
    teacher = teacher or Teacher.build(spec)
    for block, start in enumerate(range(0, spec.rows, GEN_BLOCK_ROWS)):
        n = min(GEN_BLOCK_ROWS, spec.rows - start)
        rng = _rng(spec.seed, _DATA_STREAM, block)
        values, z, present, label_u = teacher.draw(rng, n)
        logits = teacher.logits(values, z, present)
        labels = (label_u < expit(logits)).astype(np.float32)
        yield SyntheticSample(values, teacher.dense_values(z, present), labels, logits.astype(np.float32))


def generate(spec: SyntheticSpec, teacher: Teacher | None = None) -> SyntheticSample:
    """All ``spec.rows`` rows in memory."""
    teacher = teacher or Teacher.build(spec)
    n = spec.rows
    out = SyntheticSample(
        np.empty((n, spec.num_fields), np.int32),
        np.empty((n, spec.num_dense)),
        np.empty(n, np.float32),
        np.empty(n, np.float32),
    )
    start = 0
    for block in iter_blocks(spec, teacher):
        stop = start + len(block)
        out.values[start:stop], out.dense[start:stop] = block.values, block.dense
        out.labels[start:stop], out.logits[start:stop] = block.labels, block.logits
        start = stop
    return out


def _frame(spec: SyntheticSpec, teacher: Teacher, sample: SyntheticSample, integer_dense: bool) -> pl.DataFrame:
    """Label, numeric columns (Float64, or Int64 for text), categorical Utf8 columns; null = missing."""
    label = pl.Series(LABEL, sample.labels, dtype=pl.Float32)
    columns = [label.cast(pl.Int8) if integer_dense else label]
    for j, name in enumerate(spec.dense_names):
        col = pl.Series(name, sample.dense[:, j], dtype=pl.Float64).fill_nan(None)
        columns.append(col.cast(pl.Int64) if integer_dense else col)
    for f in range(spec.num_fields):
        columns.append(teacher.value_series(f).gather(sample.values[:, f]))
    return pl.DataFrame(columns)


def generate_raw(spec: SyntheticSpec, teacher: Teacher | None = None) -> RawData:
    """The rows as :class:`RawData` (``{"all": df}``): categorical Utf8, numeric Float64, label Float32."""
    teacher = teacher or Teacher.build(spec)
    df = _frame(spec, teacher, generate(spec, teacher), integer_dense=False)
    return RawData(splits={"all": df}, categorical=spec.names, numeric=spec.dense_names)


@READERS.register("synthetic")
class SyntheticReader(Reader):
    """Reader ``"synthetic"``: generates :class:`RawData` from a :class:`SyntheticSpec` (no files)."""

    Options = SyntheticSpec

    def __init__(self, options: SyntheticSpec, root: str | Path = ".") -> None:
        super().__init__(options, Path(root))

    def sources(self) -> list[Path]:
        return []

    def for_scoring(self, path: Path) -> Reader | None:
        return None  # it generates its rows; there is no file format to score

    def read(self) -> RawData:
        return generate_raw(self.options)


def _encode_field(
    values: np.ndarray, train_idx: np.ndarray, strings: np.ndarray, min_count: int
) -> tuple[np.ndarray, np.ndarray]:
    """The :class:`Encoder` rules on value indices of one field.

    Args:
        values: int32 [N] value indices; ``len(strings) - 1`` is the missing value.
        train_idx: int64 [N_train] training rows.
        strings: bytes [n_f + 1] value strings by index (ties are broken by them).
        min_count: as in the encoder; missing is kept whenever it occurs.

    Returns:
        lookup: int32 [n_f + 1], value index -> id (0 = OOV).
        counts: int64 [vocab_size], training counts per id, [0] = training rows in OOV.
    """
    missing = len(strings) - 1
    counts = np.bincount(values[train_idx], minlength=len(strings)).astype(np.int64)
    keep = counts >= min_count
    keep[missing] = counts[missing] > 0
    kept = np.flatnonzero(keep)
    order = kept[np.lexsort((strings[kept], -counts[kept]))]
    lookup = np.full(len(strings), OOV_ID, dtype=np.int32)
    lookup[order] = np.arange(OOV_ID + 1, len(order) + 1, dtype=np.int32)
    oov = len(train_idx) - int(counts[order].sum())
    return lookup, np.concatenate([[oov], counts[order]]).astype(np.int64)


def prepare_arrays(spec: SyntheticSpec, config: PreprocessConfig | dict | None = None) -> PreparedData:
    """Fast path: generate and encode straight to arrays, in memory (no strings for categorical fields).

    Gives the same ids, dense features, labels, splits and counts as
    ``prepare(SyntheticReader(spec), config, ...)``: categorical values are encoded from their
    indices with the encoder's rules (min count, OOV 0, ids by descending training count with ties
    by value string, missing kept); numeric columns go through :class:`Encoder` itself.

    Args:
        spec: what to generate.
        config: :class:`~embdim.data.prepare.PreprocessConfig` or a dict of its fields.

    Returns:
        :class:`PreparedData` with ``cache_dir=None``; ``schema.meta["truth"]`` is ``spec.truth()``.
    """
    cfg = config if isinstance(config, PreprocessConfig) else PreprocessConfig.model_validate(config or {})
    if spec.rows == 0:
        raise ValueError("prepare_arrays needs rows > 0")
    teacher = Teacher.build(spec)
    sample = generate(spec, teacher)
    parts = split_indices(len(sample), cfg.split.ratios, cfg.split.seed)
    train = parts["train"]
    fields: list[FieldInfo] = []
    lookups = []
    for f, name in enumerate(spec.names):
        strings = teacher.value_bytes(f, MISSING_TOKEN)
        lookup, counts = _encode_field(sample.values[:, f], train, strings, cfg.min_count)
        lookups.append(lookup)
        fields.append(FieldInfo(name, len(counts), counts))
    numeric = pl.DataFrame(
        [pl.Series(n, sample.dense[:, j], dtype=pl.Float64).fill_nan(None) for j, n in enumerate(spec.dense_names)]
    )
    encoder = cfg.make_encoder().fit(numeric[train] if spec.num_dense else numeric, [], spec.dense_names)
    fields += encoder.schema().fields
    splits = {}
    for split, idx in parts.items():
        ids = np.empty((len(idx), len(fields)), dtype=np.int32)
        for f in range(spec.num_fields):
            ids[:, f] = lookups[f][sample.values[idx, f]]
        if spec.num_dense:
            ids[:, spec.num_fields :], dense = encoder.transform(numeric[idx])
        else:
            dense = np.zeros((len(idx), 0), dtype=np.float32)
        splits[split] = SplitArrays(ids, dense, sample.labels[idx])
    schema = DatasetSchema(
        fields=fields,
        dense_names=list(encoder.dense_names_),
        rows={s: len(a) for s, a in splits.items()},
        meta={
            "synthetic": spec.model_dump(mode="json"),
            "truth": spec.truth(),
            "preprocess": cfg.model_dump(mode="json"),
        },
    )
    return PreparedData(schema=schema, splits=splits)


def criteo_cardinalities(total_vocab: int, profile: tuple[int, ...] = CRITEO_CARDINALITIES) -> list[int]:
    """Cardinalities with Criteo's skewed profile summing to about ``total_vocab``.

    ``n_f = max(2, round(profile_f ** gamma))`` with ``gamma`` found by bisection: a power below 1
    shrinks the huge fields much more than the small ones, so order and skew are kept (a few fields
    with most of the values, many small ones).
    """
    real = np.asarray(profile, dtype=np.float64)

    def cards(gamma: float) -> np.ndarray:
        return np.maximum(_CARD_MIN, np.rint(real**gamma)).astype(np.int64)

    lo, hi = _CARD_EXPONENT_RANGE
    for _ in range(_BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if cards(mid).sum() < total_vocab else (lo, mid)
    best = min((lo, hi), key=lambda g: abs(int(cards(g).sum()) - total_vocab))
    return cards(best).tolist()


def criteo_like(
    rows: int,
    total_vocab: int = 1_000_000,
    seed: int = 0,
    max_dim: int = 16,
    rare_value_dim: int | None = 1,
    **overrides: object,
) -> SyntheticSpec:
    """A Criteo-shaped spec: 26 categorical fields (C1..C26), 13 count columns (I1..I13).

    Cardinalities follow :data:`CRITEO_CARDINALITIES` scaled by :func:`criteo_cardinalities` to sum
    to about ``total_vocab``. Drawn with ``seed``: Zipf exponents in :data:`CRITEO_ZIPF_RANGE`;
    intrinsic dims powers of two in ``1..max_dim`` (independent of cardinality, and ``max_dim``
    given to at least two fields so every planted dim is effective); about
    :data:`CRITEO_MISSING_FIELD_SHARE` of the fields get a missing rate in
    :data:`CRITEO_MISSING_RATE_RANGE`. ``overrides`` are further :class:`SyntheticSpec` fields.
    """
    if max_dim < 1 or max_dim & (max_dim - 1):
        raise ValueError(f"max_dim must be a power of two, got {max_dim}")
    rng = _rng(seed, _PROFILE_STREAM)
    n = CRITEO_NUM_CATEGORICAL
    powers = max_dim.bit_length() - 1
    dims = (2 ** rng.integers(0, powers + 1, size=n)).astype(int)
    if (dims == max_dim).sum() < 2:
        dims[rng.choice(n, size=2, replace=False)] = max_dim
    missing = np.where(rng.random(n) < CRITEO_MISSING_FIELD_SHARE, rng.uniform(*CRITEO_MISSING_RATE_RANGE, size=n), 0.0)
    fields: dict = {
        "cardinalities": criteo_cardinalities(total_vocab),
        "zipf_exponents": np.round(rng.uniform(*CRITEO_ZIPF_RANGE, size=n), 3).tolist(),
        "intrinsic_dims": dims.tolist(),
        "missing_rates": np.round(missing, 3).tolist(),
        "rows": rows,
        "seed": seed,
        "num_dense": CRITEO_NUM_DENSE,
        "dense_missing_rate": CRITEO_DENSE_MISSING_RATE,
        "rare_value_dim": rare_value_dim,
    }
    fields.update(overrides)
    return SyntheticSpec(**fields)


def criteo_kaggle(rows: int = CRITEO_KAGGLE_ROWS, seed: int = CRITEO_KAGGLE_SEED, **overrides: object) -> SyntheticSpec:
    """Criteo Kaggle's shape: at :data:`CRITEO_KAGGLE_ROWS` rows, each field's distinct values are its
    real cardinality in expectation (33.8M in all, most of the large fields' values seen once or twice).

    The :func:`criteo_like` spec of :data:`CRITEO_KAGGLE_SEED` (its skews, planted dims, missing rates
    and 13 counts, a quarter positives) with the pools :data:`CRITEO_KAGGLE_POOLS` and uniform tails
    :data:`CRITEO_KAGGLE_UNIFORM_SHARES`. Fewer rows keep the per-row distributions (so fewer distinct
    values); ``seed`` draws other rows and another teacher over the same shape.
    """
    profile = criteo_like(rows, seed=CRITEO_KAGGLE_SEED)
    spec = profile.model_copy(
        update={
            "cardinalities": list(CRITEO_KAGGLE_POOLS),
            "uniform_shares": list(CRITEO_KAGGLE_UNIFORM_SHARES),
            "seed": seed,
            **overrides,
        }
    )
    return SyntheticSpec(**spec.model_dump())


def write_criteo_text(
    path: str | Path,
    rows: int,
    seed: int = 0,
    spec: SyntheticSpec | None = None,
    compress: bool | None = None,
    gzip_level: int = 1,
    progress: bool = False,
) -> Path:
    """Write rows as Criteo text: ``label I1..I13 C1..C26`` TAB-separated, empty = missing.

    Categorical values are 8-hex-digit codes, numeric values integer counts. Written block by block
    (memory stays at one block) into ``<path>.part`` and renamed at the end.

    Args:
        path: output file; gzip-compressed when ``compress`` is True or (``None``) it ends in ``.gz``.
        rows, seed: override ``spec.rows`` / ``spec.seed``.
        spec: defaults to ``criteo_like(rows, seed=seed)``; must have 26 fields and 13 numeric columns.
        gzip_level: compression level (1 = fastest).
        progress: show a progress bar over the rows.
    """
    path = Path(path)
    spec = criteo_like(rows, seed=seed) if spec is None else spec.model_copy(update={"rows": rows, "seed": seed})
    if spec.num_fields != CRITEO_NUM_CATEGORICAL or spec.num_dense != CRITEO_NUM_DENSE:
        raise ValueError(
            f"Criteo text needs {CRITEO_NUM_CATEGORICAL} categorical and {CRITEO_NUM_DENSE} numeric columns, "
            f"the spec has {spec.num_fields} and {spec.num_dense}"
        )
    compress = path.suffix == ".gz" if compress is None else compress
    teacher = Teacher.build(spec)
    part = path.with_name(path.name + ".part")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        bar = tqdm(total=spec.rows, desc=f"write {path.name}", unit="row", unit_scale=True, disable=not progress)
        with bar, gzip.open(part, "wb", compresslevel=gzip_level) if compress else open(part, "wb") as fh:
            for block in iter_blocks(spec, teacher):
                _frame(spec, teacher, block, integer_dense=True).write_csv(
                    fh, separator="\t", include_header=False, null_value="", quote_style="never"
                )
                bar.update(len(block))
        os.replace(part, path)
    finally:
        part.unlink(missing_ok=True)
    return path
