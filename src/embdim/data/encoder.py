"""Feature encoding fitted on the training split: categorical values -> ids, numeric -> floats or ids.

FuxiCTR-style rules, one vocabulary per field:

* **Id 0 is the field's OOV id.** Values seen in training fewer than ``min_count`` times and values
  never seen in training both map to 0. ``counts_[f][0]`` is the number of *training* rows whose
  value fell into OOV (the rare values), so ``counts_[f].sum()`` is the number of training rows.
* **Ids 1.. are frequency ranks.** Kept values are ordered by descending training count, ties by
  value in string order (code point order), so id ``k`` is the ``k``-th most frequent value.
* **Missing is a category of its own.** A null is replaced by :data:`MISSING_TOKEN` before
  counting. The token is kept whenever it occurs in training at all, even below ``min_count``:
  "the value is absent" is usually informative (in Criteo it is one of the most frequent values),
  and folding it into OOV would mix it with the rare values. When missing never occurs in training,
  a missing value at transform time maps to OOV like any other unseen value. A real value spelled
  exactly like the token is merged with missing (choose another ``missing_token`` if that matters).
* **Unusable numbers are missing, in every mode.** A numeric value is treated exactly like a null
  when it is NaN, +-inf, or larger in magnitude than the float32 maximum (about 3.4e38, so that
  it could not be stored as a float32 feature); under ``"discretize"`` (and the discretised half
  of ``"both"``) also when its integer part does not fit int64, i.e. outside ``[-2**63, 2**63)``.
  No such value ever reaches the cache as a number. See :func:`usable_number`.
* **Numeric columns** (``numeric=``):

  - ``"dense"``: kept as float32 features; missing -> 0 after the transform.
    ``dense_transform="log1p"`` maps ``x -> log(1 + max(x, 0))`` (the usual choice for Criteo's
    count features, which span 0..1e5 and would otherwise swamp the other inputs; negative values
    become 0); ``"none"`` keeps ``x``.
  - ``"discretize"``: each column becomes a categorical field with the Criteo rule: ``x > 2`` ->
    bucket ``floor(log(x)^2)``, otherwise the integer value ``floor(x)`` itself is the category.
    Buckets are spelled with the prefix :data:`LOG_BUCKET_PREFIX` (``3 -> "log:1"``) and raw
    values without (``1 -> "1"``, ``-1 -> "-1"``), so bucket 1 never collides with the raw value 1.
    Missing values (by the rule above) become the missing category.
  - ``"both"``: both of the above.

The output field order is: categorical columns, then discretised numeric columns (named like their
numeric column). Dense columns keep the order of ``numeric``.

Example::

    enc = Encoder(min_count=2, numeric="dense").fit(train_df, ["C1", "C2"], ["I1"])
    ids, dense = enc.transform(test_df)      # int32 [N, 2], float32 [N, 1]
    schema = enc.schema()                    # DatasetSchema with vocab sizes and counts
    state = enc.to_dict()                    # JSON-able; Encoder.from_dict(state) encodes alike
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Literal

import numpy as np
import polars as pl

from embdim.data.raw import DataError
from embdim.data.schema import DatasetSchema, FieldInfo

OOV_ID = 0
"""Id of the out-of-vocabulary bucket in every field."""
MISSING_TOKEN = "<missing>"
"""Value that stands for a missing (null) entry while counting and encoding."""
LOG_BUCKET_PREFIX = "log:"
"""Prefix of discretised buckets ``floor(log(x)^2)``, so they never collide with raw small values."""
DISCRETIZE_RAW_MAX = 2.0
"""Criteo rule: values ``<= 2`` are kept as their integer value, larger ones are log-bucketed."""
ENCODER_FORMAT = 1
"""Version of :meth:`Encoder.to_dict`'s layout."""
FLOAT32_MAX = float(np.finfo(np.float32).max)
"""Numeric values larger in magnitude than this are missing (they have no float32 value)."""
INT64_LOW, INT64_HIGH = -(2.0**63), 2.0**63
"""Under discretisation a value must lie in ``[INT64_LOW, INT64_HIGH)``: its integer part becomes an int64."""

NumericMode = Literal["dense", "discretize", "both"]
DenseTransform = Literal["none", "log1p"]
NUMERIC_MODES: tuple[str, ...] = ("dense", "discretize", "both")
DENSE_TRANSFORMS: tuple[str, ...] = ("none", "log1p")

_VALUE = "value"
_COUNT = "count"


class Vocabulary(Mapping[str, int]):
    """One field's kept values, a read-only mapping value -> id (ids ``1..len(self)``).

    Stored as a polars string column in id order (``values[i]`` has id ``i + 1``), which is far
    smaller than a Python dict for million-value fields; a dict for single lookups is built lazily.
    Use :meth:`encode` for whole columns.
    """

    def __init__(self, values: pl.Series) -> None:
        self.values: pl.Series = values.cast(pl.Utf8).rename(_VALUE)
        self._index: dict[str, int] | None = None

    def __getitem__(self, value: str) -> int:
        if self._index is None:
            self._index = {v: i + 1 for i, v in enumerate(self.values.to_list())}
        return self._index[value]

    def __iter__(self) -> Iterator[str]:
        return iter(self.values.to_list())

    def __len__(self) -> int:
        return len(self.values)

    def id_series(self) -> pl.Series:
        """int32 [len(self)]: the ids ``1..len(self)`` aligned with :attr:`values`."""
        return pl.Series("id", np.arange(1, len(self) + 1, dtype=np.int32))

    def encode(self, column: pl.Series) -> np.ndarray:
        """Map a Utf8 column (nulls already replaced by the missing token) to int32 ids [N]; unknown -> 0."""
        ids = column.replace_strict(self.values, self.id_series(), default=OOV_ID, return_dtype=pl.Int32)
        return ids.to_numpy()


def usable_number(x: pl.Expr, integer: bool = False) -> pl.Expr:
    """Polars expression: Float64 ``x`` where it is usable, else null (the module's missing rule).

    Null are NaN, +-inf and ``|x| > FLOAT32_MAX``; with ``integer`` also values outside
    ``[INT64_LOW, INT64_HIGH)``, whose integer part does not fit int64.
    """
    usable = x.is_finite() & (x.abs() <= FLOAT32_MAX)
    if integer:
        usable = usable & (x >= INT64_LOW) & (x < INT64_HIGH)
    return pl.when(usable.fill_null(False)).then(x).otherwise(None)


def discretize_expr(column: str) -> pl.Expr:
    """Polars expression: the Criteo discretisation of a Float64 column as Utf8 (null = missing).

    ``x > 2`` -> ``"log:" + str(floor(log(x)^2))``; ``x <= 2`` -> ``str(floor(x))``; null and
    unusable values (see :func:`usable_number`) -> null. Examples: 0 -> "0", 2 -> "2",
    2.5 -> "log:0", 3 -> "log:1", 100 -> "log:21".
    """
    x = usable_number(pl.col(column).cast(pl.Float64), integer=True)
    bucket = pl.lit(LOG_BUCKET_PREFIX) + (x.log() ** 2).floor().cast(pl.Int64).cast(pl.Utf8)
    raw = x.floor().cast(pl.Int64).cast(pl.Utf8)
    return pl.when(x > DISCRETIZE_RAW_MAX).then(bucket).otherwise(raw).alias(column)


class Encoder:
    """Per-field vocabularies with OOV, min count and missing category; fitted on training rows only.

    Args:
        min_count: a value keeps its own id when it occurs at least this often in training;
            rarer values share the OOV id 0. The missing token is exempt (see module docstring).
        numeric: ``"dense"`` (floats), ``"discretize"`` (Criteo buckets as categorical fields) or
            ``"both"``.
        dense_transform: ``"none"`` or ``"log1p"`` (``log(1 + max(x, 0))``), for dense columns.
        missing_token: the value a null stands for.

    Learned state (set by :meth:`fit`):
        categorical_, numeric_: the column names it was fitted on.
        field_names_: names of the id columns: ``categorical_`` then (when discretising) ``numeric_``.
        dense_names_: names of the dense columns (``numeric_`` when ``numeric`` keeps floats, else []).
        vocab_: per field a :class:`Vocabulary` (value -> id, ids 1..).
        counts_: per field int64 [vocab_size] training counts, ``counts_[f][0]`` = training rows in OOV.
    """

    def __init__(
        self,
        min_count: int = 1,
        numeric: NumericMode = "dense",
        dense_transform: DenseTransform = "none",
        missing_token: str = MISSING_TOKEN,
    ) -> None:
        if min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {min_count}")
        if numeric not in NUMERIC_MODES:
            raise ValueError(f"numeric must be one of {NUMERIC_MODES}, got {numeric!r}")
        if dense_transform not in DENSE_TRANSFORMS:
            raise ValueError(f"dense_transform must be one of {DENSE_TRANSFORMS}, got {dense_transform!r}")
        self.min_count = min_count
        self.numeric = numeric
        self.dense_transform = dense_transform
        self.missing_token = missing_token

    # ------------------------------------------------------------------ parameters
    def get_params(self) -> dict:
        """The constructor arguments (JSON-able)."""
        return {
            "min_count": self.min_count,
            "numeric": self.numeric,
            "dense_transform": self.dense_transform,
            "missing_token": self.missing_token,
        }

    @property
    def discretizes(self) -> bool:
        return self.numeric in ("discretize", "both")

    @property
    def keeps_dense(self) -> bool:
        return self.numeric in ("dense", "both")

    @property
    def is_fitted(self) -> bool:
        return hasattr(self, "vocab_")

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise RuntimeError("Encoder is not fitted: call fit(train_df, categorical, numeric) first")

    # ------------------------------------------------------------------ fit / transform
    def _check_columns(self, df: pl.DataFrame, columns: Sequence[str]) -> None:
        missing = [c for c in columns if c not in df.columns]
        if missing:
            raise DataError(f"columns {missing} not in the data (columns: {df.columns})")

    def _keys(self, df: pl.DataFrame, name: str, numeric: bool) -> pl.Series:
        """Keys of one id field [N]: Utf8 (categorical) or usable Float64 (numeric); null = missing."""
        if not numeric:
            return df.get_column(name).cast(pl.Utf8).rename(_VALUE)
        x = usable_number(pl.col(name).cast(pl.Float64), integer=True)
        return df.select(x).to_series().rename(_VALUE)

    def _values(self, keys: pl.Series, numeric: bool) -> pl.Series:
        """Value strings [len(keys)] of raw keys: discretised if numeric, null -> the missing token."""
        if numeric:
            keys = keys.to_frame().select(discretize_expr(_VALUE)).to_series()
        return keys.fill_null(self.missing_token)

    def field_values(self, df: pl.DataFrame, fields: Sequence[tuple[str, bool]]) -> pl.DataFrame:
        """The value strings every id field counts and encodes, one Utf8 column [N] per ``(name,
        is_numeric)`` field, named by the field (discretised if numeric; missing -> the missing token):
        what :meth:`fit` counts, for streamed counting. One query, whose columns polars evaluates in
        parallel."""
        exprs = [
            (discretize_expr(name) if numeric else pl.col(name).cast(pl.Utf8)).fill_null(self.missing_token).alias(name)
            for name, numeric in fields
        ]
        return df.select(exprs)

    def id_fields(self, categorical: Sequence[str], numeric: Sequence[str]) -> list[tuple[str, bool]]:
        """(name, is_discretised_numeric) per id field, in output order."""
        return self._id_fields(categorical, numeric)

    def set_vocabulary(
        self,
        categorical: Sequence[str],
        numeric: Sequence[str],
        kept: dict[str, pl.DataFrame],
        train_rows: int,
    ) -> Encoder:
        """Fit from counted values: ``kept[field]`` holds the values that keep an id with their training
        counts (columns ``value``, ``count``), in id order; the rest of ``train_rows`` is OOV."""
        self.categorical_, self.numeric_ = list(categorical), list(numeric)
        self.field_names_ = [name for name, _ in self._id_fields(categorical, numeric)]
        self.dense_names_ = list(numeric) if self.keeps_dense else []
        self.vocab_, self.counts_ = {}, {}
        for name in self.field_names_:
            counts = kept[name].get_column(_COUNT).to_numpy().astype(np.int64)
            self.vocab_[name] = Vocabulary(kept[name].get_column(_VALUE))
            self.counts_[name] = np.concatenate([np.array([train_rows - int(counts.sum())], dtype=np.int64), counts])
        return self

    def kept_values(self, counted: pl.DataFrame) -> pl.DataFrame:
        """The values that keep an id, in id order, from ``value``/``count`` training counts: at least
        ``min_count`` (the missing token whenever present), by count then value."""
        keep = (pl.col(_COUNT) >= self.min_count) | (pl.col(_VALUE) == self.missing_token)
        return counted.filter(keep).sort([_COUNT, _VALUE], descending=[True, False])

    def _id_fields(self, categorical: Sequence[str], numeric: Sequence[str]) -> list[tuple[str, bool]]:
        """(name, is_discretised_numeric) per id field, in output order."""
        return [(c, False) for c in categorical] + [(c, True) for c in numeric if self.discretizes]

    def fit(self, train_df: pl.DataFrame, categorical: Sequence[str], numeric: Sequence[str] = ()) -> Encoder:
        """Learn vocabularies and counts from the training rows only; returns ``self``.

        Args:
            train_df: training rows; categorical columns Utf8 (null = missing), numeric Float64.
            categorical: categorical column names, in field order.
            numeric: numeric column names.
        """
        categorical, numeric = list(categorical), list(numeric)
        names = categorical + numeric
        duplicated = sorted({c for c in names if names.count(c) > 1})
        if duplicated:
            raise DataError(f"columns listed twice: {duplicated}")
        self._check_columns(train_df, names)
        fields = self._id_fields(categorical, numeric)
        vocab: dict[str, Vocabulary] = {}
        counts: dict[str, np.ndarray] = {}
        for name, is_numeric in fields:
            # Count raw keys first: a numeric column has few distinct values, so only those get discretised.
            vc = self._keys(train_df, name, is_numeric).value_counts(sort=False, name=_COUNT)
            vc = vc.with_columns(self._values(vc.get_column(_VALUE), is_numeric))
            if is_numeric:
                vc = vc.group_by(_VALUE).agg(pl.col(_COUNT).sum())
            vc = self.kept_values(vc)
            kept = vc.get_column(_COUNT).to_numpy().astype(np.int64)
            oov = train_df.height - int(kept.sum())
            vocab[name] = Vocabulary(vc.get_column(_VALUE))
            counts[name] = np.concatenate([np.array([oov], dtype=np.int64), kept])
        self.categorical_ = categorical
        self.numeric_ = numeric
        self.field_names_ = [name for name, _ in fields]
        self.dense_names_ = list(numeric) if self.keeps_dense else []
        self.vocab_ = vocab
        self.counts_ = counts
        return self

    def transform(self, df: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Encode rows.

        Returns:
            ids: int32 [N, F], C-contiguous, F = ``len(field_names_)``; 0 = OOV.
            dense: float32 [N, Dn], Dn = ``len(dense_names_)`` (0 columns when not kept).
        """
        self._check_fitted()
        self._check_columns(df, self.categorical_ + self.numeric_)
        ids = np.empty((df.height, len(self.field_names_)), dtype=np.int32)
        for j, (name, is_numeric) in enumerate(self._id_fields(self.categorical_, self.numeric_)):
            keys = self._keys(df, name, is_numeric)
            vocab = self.vocab_[name]
            if is_numeric:  # map the few distinct keys, then the column by key
                distinct = keys.unique()
                key_ids = pl.Series(vocab.encode(self._values(distinct, True)))
                ids[:, j] = keys.replace_strict(distinct, key_ids, default=OOV_ID, return_dtype=pl.Int32)
            else:
                ids[:, j] = vocab.encode(self._values(keys, False))
        return ids, self.transform_dense(df)

    def transform_dense(self, df: pl.DataFrame) -> np.ndarray:
        """float32 [N, Dn]: the dense features (transform applied, missing and unusable values -> 0)."""
        self._check_fitted()
        return self.dense_features(df, self.dense_names_)

    def dense_features(self, df: pl.DataFrame, names: Sequence[str]) -> np.ndarray:
        """float32 [N, len(names)]: columns ``names`` as dense features (needs no fitting)."""
        dense = np.zeros((df.height, len(names)), dtype=np.float32)
        if not names:
            return dense
        exprs = []
        for c in names:
            x = usable_number(pl.col(c).cast(pl.Float64))
            if self.dense_transform == "log1p":
                x = x.clip(lower_bound=0.0).log1p()
            exprs.append(x.fill_null(0.0).cast(pl.Float32))
        frame = df.select(exprs)
        for j, c in enumerate(names):
            dense[:, j] = frame.get_column(c).to_numpy()
        return dense

    def fit_transform(
        self, train_df: pl.DataFrame, categorical: Sequence[str], numeric: Sequence[str] = ()
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`fit` on ``train_df``, then :meth:`transform` it."""
        return self.fit(train_df, categorical, numeric).transform(train_df)

    # ------------------------------------------------------------------ schema / state
    def schema(
        self,
        rows: dict[str, int] | None = None,
        skipped: dict[str, int] | None = None,
        meta: dict | None = None,
    ) -> DatasetSchema:
        """The :class:`DatasetSchema` of the encoded data (vocab sizes include the OOV id)."""
        self._check_fitted()
        fields = [FieldInfo(n, len(self.vocab_[n]) + 1, self.counts_[n].copy()) for n in self.field_names_]
        return DatasetSchema(
            fields=fields,
            dense_names=list(self.dense_names_),
            rows=dict(rows or {}),
            skipped=dict(skipped or {}),
            meta=dict(meta or {}),
        )

    def to_dict(self) -> dict:
        """JSON-able state: parameters, column names, per field the kept values (id order) and counts."""
        return self.state(values=True)

    def state(self, values: bool = True) -> dict:
        """:meth:`to_dict`; ``values=False`` leaves out each field's values and counts (stored apart)."""
        self._check_fitted()
        return {
            "format": ENCODER_FORMAT,
            "params": self.get_params(),
            "categorical": list(self.categorical_),
            "numeric": list(self.numeric_),
            "fields": [
                {"name": n}
                | ({"values": self.vocab_[n].values.to_list(), "counts": self.counts_[n].tolist()} if values else {})
                for n in self.field_names_
            ],
        }

    @classmethod
    def from_dict(cls, state: dict) -> Encoder:
        """Rebuild a fitted encoder from :meth:`to_dict` output."""
        if state.get("format") != ENCODER_FORMAT:
            raise ValueError(f"unsupported encoder state format {state.get('format')!r}, expected {ENCODER_FORMAT}")
        enc = cls(**state["params"])
        enc.categorical_ = list(state["categorical"])
        enc.numeric_ = list(state["numeric"])
        enc.field_names_ = [f["name"] for f in state["fields"]]
        enc.dense_names_ = list(enc.numeric_) if enc.keeps_dense else []
        enc.vocab_ = {f["name"]: Vocabulary(pl.Series(_VALUE, f["values"], dtype=pl.Utf8)) for f in state["fields"]}
        enc.counts_ = {f["name"]: np.asarray(f["counts"], dtype=np.int64) for f in state["fields"]}
        return enc
