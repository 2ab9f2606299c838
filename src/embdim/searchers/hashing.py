"""``hash``: the hashing trick (Weinberger et al., ICML 2009), field by field, as a compression baseline.

Field f's ids ``0..n_f-1`` are mapped by a hash into ``m_f < n_f`` buckets, the rows of a ``[m_f, d]``
table; ids that collide share a row, and nothing tells them apart [paper]. One option sets every field's
bucket count [ours]: ``m_f = max(2, round(buckets * n_f))``, so each field keeps the same share of its
rows (a ``full`` model at width ``d`` is ``buckets = 1``).

The hash [ours: the paper assumes a random hash function] is a universal one (Carter and Wegman) in
integer arithmetic only, so an id's bucket is the same on every machine, run and library version::

    h_f(i) = 1 + ((a_f * i + b_f) mod p) mod (m_f - 1)        p = 2**31 - 1, a prime above every id

with ``a_f`` in ``[1, p)`` and ``b_f`` in ``[0, p)`` drawn per field from ``seed`` by splitmix64
(:func:`hash_parameters`, Python integers). The slim model stores ``a_f`` and ``b_f`` (int32 each) and
computes the buckets on lookup (:class:`~embdim.slim.HashedGroup`), so it holds no per-id index.

OOV [ours]: id 0, the encoder's OOV id (the rare and the unseen values), keeps bucket 0 to itself: it
is often among the most frequent ids, and an unseen value should not read the row of whichever real
value it happens to collide with. The other ids share the other ``m_f - 1`` buckets.

Small fields [ours]: a field keeps its plain ``n_f x d`` table, with no hash and no collision, when
hashing would not save a row (``m_f >= n_f``); fields of one or two ids always do.

Initialisation [ours]: every table ``N(0, std^2)`` like ``full``'s (a bucket's row is one row, however
many ids share it).

Budget [ours]: :meth:`HashSearcher.for_budget` finds the bucket fraction whose plan bytes (the buckets'
rows and each hashed field's ``a`` and ``b``) are nearest the target, by bisection (bytes grow with the
fraction).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from pydantic import Field

from embdim.budget import LANDING_TOLERANCE, Budget, BudgetUnreachable, uniform_bytes
from embdim.data.schema import FieldInfo
from embdim.lookup import DEFAULT_INIT_STD, Lookup, RawEmbeddings, TableSpec
from embdim.plan import EmbeddingPlan
from embdim.registry import SEARCHERS
from embdim.searchers.base import Embedded, MethodMemory, Searcher, SearcherConfig, fields_plan
from embdim.slim import DenseGroup, HashedGroup, SlimEmbedding, hashed_buckets
from embdim.storage import FLOAT_BYTES, HASH_PARAM_DTYPE, HASH_PRIME, MIN_BUCKETS

STORAGE = "hashed"
_MASK64 = 2**64 - 1
_GOLDEN = 0x9E3779B97F4A7C15  # splitmix64's increment
BISECTION_STEPS = 60  # halvings of the fraction interval: far finer than one bucket of any field


class HashConfig(SearcherConfig):
    buckets: float = Field(
        0.5,
        gt=0,
        le=1,
        description="each field's hash buckets as a share of its ids: max(2, round(buckets * n_f)); a field "
        "where that saves no row keeps its plain table",
    )
    seed: int = Field(0, description="seed of every field's hash parameters (a, b)")


def field_buckets(vocab_sizes: list[int], fraction: float) -> list[int]:
    """Each field's bucket count: ``max(2, round(fraction * n_f))``, or ``n_f`` (a plain table) where that
    saves no row."""
    out = []
    for n in vocab_sizes:
        m = max(MIN_BUCKETS, round(fraction * n))
        out.append(m if m < n else n)
    return out


def _readable(fraction: float, buckets: Callable[[float], list[int]]) -> float:
    """The shortest decimal fraction (up to six places) with the same buckets as ``fraction``, or itself."""
    want = buckets(fraction)
    for places in range(1, 7):
        scale = 10**places
        down, up = math.floor(fraction * scale) / scale, math.ceil(fraction * scale) / scale
        for short in (round(fraction, places), down, up):
            if 0 < short <= 1 and buckets(short) == want:
                return short
    return fraction


def _splitmix64(seed: int):
    """The splitmix64 stream from ``seed``: 64-bit integers, the same everywhere (Python integers)."""
    state = seed & _MASK64
    while True:
        state = (state + _GOLDEN) & _MASK64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        yield z ^ (z >> 31)


def hash_parameters(seed: int, num_fields: int) -> list[tuple[int, int]]:
    """Each field's ``(a, b)``, ``a`` in ``[1, p)`` and ``b`` in ``[0, p)`` (``p``: ``HASH_PRIME``), in field
    order from the splitmix64 stream of ``seed``."""
    stream = _splitmix64(seed)
    return [(1 + next(stream) % (HASH_PRIME - 1), next(stream) % HASH_PRIME) for _ in range(num_fields)]


def hash_plan(fields: list[FieldInfo], dim: int, buckets: list[int], details: dict | None = None) -> EmbeddingPlan:
    """The plan of hashed tables with these bucket counts (fields back to back, full width ``dim``)."""
    widths = [dim] * len(fields)
    return fields_plan("hash", fields, dim, widths, storage=STORAGE, buckets=buckets, details=details or {})


@SEARCHERS.register("hash")
class HashSearcher(Searcher):
    """The hashing trick: field f's ids share the ``m_f`` rows of its table by a seeded universal hash.

    ``lookup_ids(ids)``: ids ``[B, F]`` -> each id's bucket (its id in a plain field), ``[B, F]``.
    ``forward(raw, ids)``: the looked-up rows ``[B, F, d]``, unchanged.
    """

    Config = HashConfig
    shardable = True  # the bucket table is the lookup's; lookup_ids maps ids before the (sharded) lookup

    @classmethod
    def for_budget(
        cls, fields: list[FieldInfo], dim: int, config: SearcherConfig, budget: Budget
    ) -> tuple[int, SearcherConfig]:
        """The bucket fraction whose plan bytes land nearest ``budget`` (bisection: bytes grow with it)."""
        assert isinstance(config, HashConfig)
        target = budget.target_bytes(uniform_bytes(fields, dim))
        sizes = [f.vocab_size for f in fields]

        def stored(fraction: float) -> int:
            return hash_plan(fields, dim, field_buckets(sizes, fraction)).num_bytes

        low, high = 0.0, 1.0  # stored(low) < target <= stored(high), once low > 0
        for _ in range(BISECTION_STEPS):
            middle = (low + high) / 2
            if stored(middle) >= target:
                high = middle
            else:
                low = middle
        candidates = [high] + ([low] if low > 0 else [])
        fraction = min(candidates, key=lambda f: abs(stored(f) - target))
        fraction = _readable(fraction, lambda f: field_buckets(sizes, f))
        got = stored(fraction)
        if abs(got - target) > LANDING_TOLERANCE * target:
            raise BudgetUnreachable(
                f"hash gets no closer than {got:,} bytes to {target:,.0f} with any bucket fraction "
                f"(each hashed field keeps at least {MIN_BUCKETS} buckets)"
            )
        return dim, config.model_copy(update={"buckets": fraction, "budget": None})

    @classmethod
    def training_memory(cls, fields: list[FieldInfo], dim: int, config: SearcherConfig) -> MethodMemory:
        """The bucket tables (the hash's parameters are a few integers per field)."""
        assert isinstance(config, HashConfig)
        buckets = field_buckets([f.vocab_size for f in fields], config.buckets)
        return MethodMemory(tables=sum(buckets) * dim * FLOAT_BYTES)

    def __init__(self, fields: list[FieldInfo], dim: int, config: HashConfig, init_std: float = DEFAULT_INIT_STD):
        super().__init__(fields, dim, config, init_std)
        self.buckets = field_buckets(self.vocab_sizes, config.buckets)
        self.hashed = [f for f, (m, n) in enumerate(zip(self.buckets, self.vocab_sizes, strict=True)) if m < n]
        params = hash_parameters(config.seed, self.num_fields)
        # derived from the config (never saved): a plain field's entries are unused placeholders
        self.register_buffer("hash_a", torch.tensor([a for a, _ in params], dtype=torch.long), persistent=False)
        self.register_buffer("hash_b", torch.tensor([b for _, b in params], dtype=torch.long), persistent=False)
        self.register_buffer(
            "hash_m", torch.tensor([max(m, MIN_BUCKETS) for m in self.buckets], dtype=torch.long), persistent=False
        )
        hashed = torch.zeros(self.num_fields, dtype=torch.bool)
        hashed[self.hashed] = True
        self.register_buffer("is_hashed", hashed, persistent=False)

    def table_specs(self) -> list[TableSpec]:
        """One table: field f's ``m_f`` bucket rows (its ``n_f`` rows when it is not hashed)."""
        return [TableSpec("buckets", tuple(range(self.num_fields)), tuple(self.buckets), self.dim, self.init_std)]

    def lookup_ids(self, ids: torch.Tensor) -> torch.Tensor:
        ids = ids.long()
        if not self.hashed:
            return ids
        return torch.where(self.is_hashed, hashed_buckets(ids, self.hash_a, self.hash_b, self.hash_m), ids)

    def forward(self, raw: RawEmbeddings, ids: torch.Tensor) -> Embedded:
        return Embedded(raw.stacked())

    def plan(self, lookup: Lookup) -> EmbeddingPlan:
        details = {
            "bucket_fraction": self.config.buckets,
            "seed": self.config.seed,
            "hashed_fields": [self.fields[f].name for f in self.hashed],
        }
        return hash_plan(self.fields, self.dim, list(self.buckets), details)

    def export(self, lookup: Lookup) -> SlimEmbedding:
        groups = []
        hashed, plain = self.hashed, [f for f in range(self.num_fields) if f not in self.hashed]
        if hashed:  # copies (torch.cat): the lookup's table keeps training
            weight = torch.cat([lookup.field_weight(f).detach() for f in hashed])
            param = getattr(torch, HASH_PARAM_DTYPE.name)
            a, b = self.hash_a[hashed].to(param), self.hash_b[hashed].to(param)
            rows, buckets = [self.vocab_sizes[f] for f in hashed], [self.buckets[f] for f in hashed]
            groups.append(HashedGroup(hashed, rows, buckets, weight, a, b, self.dim))
        if plain:
            weight = torch.cat([lookup.field_weight(f).detach() for f in plain])
            groups.append(DenseGroup(plain, [self.vocab_sizes[f] for f in plain], weight, None, self.dim))
        return SlimEmbedding(self.plan(lookup), groups)
