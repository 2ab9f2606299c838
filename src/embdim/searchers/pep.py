"""``pep``: Plug-in Embedding Pruning (Liu et al., ICLR 2021, arXiv 2101.07577), see METHODS.md section 1.

Search [paper]: every looked-up embedding value ``v`` is replaced by the soft threshold
``S(v, s) = sign(v) * relu(|v| - sigmoid(s))`` with learnable thresholds ``s`` at one of six
granularities (``global`` 1, ``dimension`` d, ``feature`` n x 1, ``field`` F x 1, ``feature_dim``
n x d, ``field_dim`` F x d). Each time the sparsity of the whole table reaches the next target, the
pruned mask is saved. Retrain [paper] (lottery ticket): every weight is rewound to its step-0 value
(the trainer reloads ``initial.safetensors``), the table is multiplied by a saved mask, thresholds
are switched off and the mask stays fixed.

What is this project's own design [ours]:

- The threshold is computed on the looked-up rows only (it is elementwise), never on the whole
  ``n x d`` table per step as the official code does; the whole table's sparsity is measured on a
  schedule (``measure_every_steps`` and at each evaluation).
- Two modes, reported in ``result.json``. ``faithful`` reproduces the paper's dynamics: thresholds
  ``s`` are plain parameters and only the optimizer's coupled weight decay (dense Adam,
  ``train.weight_decay = train.embedding_weight_decay = 1e-5``) lifts them from ``s0`` (-150
  Criteo/Avazu, -15 MovieLens) by about ``lr`` per step, so pruning starts after hundreds of
  epochs. ``ours`` raises every threshold by the same drift per step, looked up or not (one scalar
  offset added to all ``s``, so it costs nothing per row), so it works with any optimizer, sparse
  or fused, with decoupled or no decay. The loss moves a looked-up threshold back down where its
  value matters, by up to ``threshold_lr`` per lookup, so an id seen rarely cannot hold its values
  and is pruned first, as coupled decay does in the paper (it lifts every threshold each step; the
  loss resists only on looked-up rows). A pull on the looked-up thresholds only (a loss term) was
  tried and removed: it pulls an id as often as it is looked up, so it pruned the frequent ids
  first and never reached ids absent from training (BENCHMARKS.md, "Drift pull"). Without weight
  decay the weights that matter outgrow a fixed drift and pruning levels off, so the drift doubles
  every ``pull_doubling_epochs`` until the last target is reached: the search length is bounded
  and the pruning order is still set by the loss. The thresholds get their own learning rate
  (``threshold_lr``, an optimizer group): Adam moves ``s`` by about that much per step whatever
  ``train.lr`` is, so targets are reached in a few epochs, not hundreds, and a model trained at a
  larger lr does not prune at its initialisation. ``pull_start_epochs`` trains the model before the
  drift starts, so masks come from a trained model (BENCHMARKS.md, "Schedule fix"). Both schedules
  count epochs, so they mean the same on any data size; a search of a few epochs over millions of rows
  takes them in fractions of an epoch (configs/bench/criteo_kaggle_*.yaml), and the trainer warns when
  the drift would start after the search has ended (:meth:`PEPSearcher.schedule_warnings`).
- Per-row thresholds (``feature``, ``feature_dim``; mode ``ours``) are updated row-wise inside the
  lookup's backward pass (:class:`~embdim.rowwise.RowwiseAdam`): Adam without momentum, which moves
  every row exactly as a dense Adam with ``beta1 = 0`` would, but a step costs the batch's rows
  instead of a dense ``n x d`` gradient and update (the dense update was the slower alternative at
  equal quality, BENCHMARKS.md, "Row-wise thresholds"). A rare row moves as far per lookup as under
  dense Adam with momentum; lazy momentum Adam (``SparseAdam``) moves it much less, so long-tailed
  tables fell short of their targets.
- Targets are sparsity ratios, or a :class:`~embdim.searchers.base.Budget` mapped to the sparsity at
  which the slim table meets the budget however its kept values fall into rows (each in a row of its
  own: compact storage's dearest case, :func:`budget_sparsity`). When a target is passed between two
  measurements, the saved mask keeps the entries with the largest margin ``|v| - sigmoid(s)`` (the
  pruned ones closest to their threshold are given back): exactly the target's number, or for a
  byte budget's target as many as its bytes hold in the rows they fall into (:func:`budget_mask`),
  so byte budgets land on the byte.
  A search that ends (``train.epochs``) before the retrain target prunes by the same rank, the
  kept entries nearest their thresholds, down to the target; it warns, and ``result.json`` says
  ``retrain_mask_completed_by_margin``. Thresholds rise at most ``threshold_lr`` per step, so a
  small data set (few steps per epoch) or a high target may need this.
- Masks saved at targets are non-persistent state (:meth:`state_for_checkpoint`): the trainer's
  rewinds replace the whole ``state_dict``.
- Pruned entries stay exactly zero in retraining without any pass over the table: the forward
  multiplies the looked-up rows by their mask, so pruned entries get exactly-zero gradients, and
  Adam / AdamW / Adagrad / SGD (momentum, coupled decay) map a zero gradient on a zero weight with
  zero state to a zero update.
- Slim storage: one group of the whole table in ``compact`` storage
  (:class:`~embdim.storage.CompactStorage`: per stored row a byte of its id and a column bitmap; a
  row that keeps nothing costs a share of a count per block of rows) or in ``csr`` (a
  column index per value, an offset per row), whichever the plan's rows make smaller
  (:data:`STORAGES`); rows with no kept value are dropped features. CSR pays its offset for every
  row, kept or not, so it cannot go below that offset's share of the dense bytes; compact makes the
  paper's highest sparsities reachable in bytes as well as in parameters. ``result.json`` reports
  both (``params_ratio``, ``bytes_ratio``), and the plan's ``details.storage_bytes`` each layout's
  bytes.

On several processes [ours] the masks, and the row-wise thresholds with their optimizer state, are
sharded like the table (:meth:`PEPSearcher.shard`, docs/scale.md "Every method sharded"): a batch's
thresholds come from the ranks holding them and their gradients go back there, whole-table counts are
summed over the ranks, and a target's mask is chosen over all of them by the rule one process uses.

Training memory [ours, reported by :meth:`report`]: the ``feature_dim`` threshold is as large as
the table (n x d floats), plus its optimizer state: one n x d average and an int64 step per row
(row-wise, mode ours), or Adam's two n x d moments (faithful); each saved mask is n x d bytes.
"""

from __future__ import annotations

import itertools
import warnings
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import nn

from embdim.budget import Budget, BudgetUnreachable
from embdim.data.schema import FieldInfo
from embdim.distributed.rows import ColumnShards
from embdim.lookup import DEFAULT_INIT_STD, Lookup, RawEmbeddings
from embdim.measures import SELECT_BLOCK, kth_largest
from embdim.plan import EmbeddingPlan
from embdim.registry import SEARCHERS
from embdim.rowwise import RowwiseAdam, sharded_rowwise_lookup
from embdim.searchers.base import Embedded, MethodMemory, Searcher, SearcherConfig, Stage
from embdim.slim import CompactGroup, CsrGroup, SlimEmbedding
from embdim.storage import FLOAT_BYTES, INT32_BYTES, INT64_BYTES, CompactStorage, CsrStorage, field_bounds

Granularity = Literal["global", "dimension", "feature", "field", "feature_dim", "field_dim"]
TABLE = "all"  # the one n x d table (base Searcher.table_specs)
SEARCH, RETRAIN = "search", "retrain"  # the stages, and the phase the searcher is in
# Adam keeps two moments per parameter (exp_avg, exp_avg_sq): training-memory accounting
ADAM_MOMENTS = 2
STEP_BYTES = INT64_BYTES + INT32_BYTES  # RowwiseAdam per row: int64 last-updated step, int32 scratch slot
MEASURE_BLOCK_ROWS = 16384  # rows per block of the sparsity count: its temporaries stay in cache
#: budget_mask's peak per entry it orders: the entries' int64 positions, their float32 margins, the sort's
#: values, int64 indices and scratch (then the order, rows and places, int64, and first-of-row flags)
BUDGET_ORDER_BYTES = 2 * INT64_BYTES + 2 * FLOAT_BYTES + 12
QUANTILE_SAMPLE = 1 << 20  # |v| entries sampled for the drift's starting quantile (torch.quantile's limit is 2^24)


class PEPConfig(SearcherConfig):
    """Options of PEP; see the module docstring for the two modes."""

    mode: Literal["faithful", "ours"] = Field(
        "ours",
        description="faithful: thresholds move only by the optimizer's coupled decay (paper); "
        "ours: a drift raises every threshold, and they train at their own rate (threshold_lr)",
    )
    granularity: Granularity = Field("feature_dim", description="threshold granularity (official threshold_type)")
    s0: float = Field(-15.0, description="initial threshold logit; sigmoid(s0) must be far below |init weights|")
    threshold_lr: float | None = Field(
        0.05,
        gt=0,
        description="learning rate of the thresholds s (ours): Adam moves s by about this much per step, "
        "whatever train.lr; faithful: null (train.lr, as the paper)",
    )
    pull_doubling_epochs: float | None = Field(
        2.0,
        gt=0,
        description="the drift doubles every this many search epochs (ours), so every target is reached; "
        "null: constant drift (pruning may level off, as weights outgrow a fixed drift)",
    )
    pull_start_epochs: float = Field(
        10.0,
        ge=0,
        description="search epochs trained before the drift starts (ours): prune a trained model, not a fresh one",
    )
    drift_per_epoch: float = Field(
        0.5,
        gt=0,
        description="logits every threshold rises per search epoch once the drift starts (ours), doubling "
        "every pull_doubling_epochs (a looked-up threshold can move threshold_lr per step)",
    )
    drift_start_quantile: float | None = Field(
        0.01,
        gt=0,
        lt=1,
        description="when the drift starts (ours), it jumps to where sigmoid(s0 + drift) is this quantile of "
        "the table's |v|, so pruning starts at once whatever s0; null: the drift starts at 0",
    )
    fused_threshold: bool = Field(
        True,
        description="training: compile the soft threshold and the scheduled sparsity count into fused "
        "kernels (torch.compile, faster than eager ops); falls back to eager ops, with a warning, where it "
        "cannot compile [ours]",
    )
    targets: list[float] = Field(
        default_factory=lambda: [0.5, 0.8, 0.9],
        description="sparsity ratios (ascending, in (0, 1)) at which the pruned mask is saved",
    )
    budget: Budget | None = Field(
        None,
        description="memory target of the slim embedding: its sparsity becomes the last target and the "
        "retrained one (targets above it are dropped, retrain_target is ignored)",
    )
    retrain_target: int = Field(
        -1, description="index into the (sorted) targets of the mask retraining uses; -1 = the last one"
    )
    retrain_init: Literal["rewind", "random"] = Field(
        "rewind", description="rewind: step-0 table times mask (lottery ticket); random: fresh init times mask"
    )
    retrain_min_epochs: float = Field(
        5.0,
        ge=0,
        description="retraining epochs before validation patience may stop it: a model rewound to step 0 can "
        "dip in its first epochs (BENCHMARKS.md, PEP section), and patience would stop it there",
    )
    measure_every_steps: int = Field(
        10, ge=1, description="measure the whole table's sparsity (one pass) every this many search steps"
    )

    @model_validator(mode="after")
    def _check(self) -> PEPConfig:
        if any(not 0.0 < t < 1.0 for t in self.targets):
            raise ValueError(f"targets: every sparsity target must lie in (0, 1), got {self.targets}")
        if not self.targets and self.budget is None:
            raise ValueError("targets: give at least one sparsity target or a budget")
        if self.mode == "faithful" and self.threshold_lr is not None:
            raise ValueError(
                "mode=faithful moves thresholds by the optimizer's coupled decay at train.lr only: "
                "set threshold_lr=null (or mode=ours)"
            )
        if self.mode == "ours" and self.threshold_lr is None:
            raise ValueError("threshold_lr: mode=ours trains the thresholds at their own rate; give it")
        return self

    @property
    def rowwise_thresholds(self) -> bool:
        """Whether the thresholds are updated row-wise in the backward pass (per-row granularity, mode ours)."""
        return self.granularity in ("feature", "feature_dim") and self.mode == "ours"


def soft_threshold(v: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """``S(v, s) = sign(v) * relu(|v| - sigmoid(s))``, elementwise; ``s`` broadcasts against ``v``."""
    return torch.sign(v) * torch.relu(v.abs() - torch.sigmoid(s))


def drifted_threshold(v: torch.Tensor, s: torch.Tensor, drift: torch.Tensor) -> torch.Tensor:
    """``soft_threshold(v, s + drift)``, the unit compiled into fused kernels for training
    (``fused_threshold``); ``drift`` is a 0-d tensor."""
    return soft_threshold(v, s + drift)


def count_kept(v: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Entries of ``v`` that survive the threshold, ``|v| > sigmoid(s)``: an int64 scalar."""
    return (v.abs() > torch.sigmoid(s)).sum()


def threshold_shape(granularity: str, num_rows: int, num_fields: int, dim: int) -> tuple[int, int]:
    """Shape of the threshold tensor of a granularity (table of ``num_rows`` rows, F fields, width d)."""
    return {
        "global": (1, 1),
        "dimension": (1, dim),
        "feature": (num_rows, 1),
        "field": (num_fields, 1),
        "feature_dim": (num_rows, dim),
        "field_dim": (num_fields, dim),
    }[granularity]


STORAGES = {"compact": CompactGroup, "csr": CsrGroup}
"""The slim layouts of PEP's pruned table; a plan takes the smaller for its rows (compact first on a tie)."""


def storage_bytes(num_rows: int, stored_rows: np.ndarray | int, num_values: np.ndarray | int, dim: int) -> np.ndarray:
    """Bytes of PEP's slim table of ``num_rows`` rows, ``stored_rows`` of them keeping ``num_values`` values
    (elementwise over arrays): the smaller of its ``compact`` and ``csr`` layouts, float32 values."""
    compact = CompactStorage.layout_bytes(num_rows, stored_rows, num_values, dim)
    return np.minimum(compact, CsrStorage.layout_bytes(num_rows, stored_rows, num_values, dim))


def max_values(target: float, num_rows: int, dim: int) -> int:
    """The most values an ``num_rows x dim`` table keeps within ``target`` bytes wherever they fall: with
    each in a row of its own (the most stored rows, compact's dearest case; CSR's bytes do not depend on it)."""
    low, high = 0, num_rows * dim  # fits(low) holds; find the largest k that fits
    while low < high:
        k = (low + high + 1) // 2
        if storage_bytes(num_rows, min(k, num_rows), k, dim) <= target:
            low = k
        else:
            high = k - 1
    return low


def budget_sparsity(budget: Budget, num_rows: int, dim: int) -> float:
    """The sparsity at which PEP's slim table (:func:`storage_bytes`, embdim.storage's byte rules) meets
    ``budget`` for an n x d table, however the kept values fall into rows [ours]: at it, any mask fits,
    and the retraining mask keeps more where they share rows (:func:`budget_mask`)."""
    cells = num_rows * dim
    if budget.kind == "params":
        nnz = budget.value
    else:
        target = budget.target_bytes(cells * FLOAT_BYTES)
        nnz = max_values(target, num_rows, dim)
        if nnz < 1:
            one = int(storage_bytes(num_rows, 1, 1, dim))
            raise ValueError(
                f"budget: {target:.0f} bytes do not hold even one kept value with its index ({one} bytes: "
                f"compact storage's counts per block of rows and a stored row's id byte and bitmap, or CSR's "
                f"{num_rows + 1} row offsets)"
            )
    sparsity = 1.0 - nnz / cells
    if not 0.0 < sparsity < 1.0:
        raise ValueError(f"budget: {budget.value} {budget.kind} is no pruning target (sparsity {sparsity:.4f})")
    return sparsity


def _largest_first(flat: torch.Tensor, keep: int) -> torch.Tensor:
    """Bool [N]: the ``keep`` (``1 <= keep <= N``) largest of ``flat`` float32 [N], of equal values the first
    in position order; no temporary beyond the mask and a block (:func:`~embdim.measures.kth_largest`)."""
    cut = kth_largest(flat, keep)
    mask = flat > cut
    need = keep - int(mask.sum())
    for start in range(0, flat.numel(), SELECT_BLOCK):  # the values equal to the cut, in position order
        if need <= 0:
            break
        ties = torch.nonzero(flat[start : start + SELECT_BLOCK] == cut).squeeze(1)[:need]
        mask[start + ties] = True
        need -= len(ties)
    return mask


def budget_mask(margins: torch.Tensor, target: float) -> torch.Tensor:
    """Bool ``[n, d]``: the entries of largest margin (``margins [n, d]``), as many as PEP's slim table
    (:func:`storage_bytes`) holds within ``target`` bytes, given the rows they fall into [ours].

    Entries are taken in margin order; each one adds a value, and the first of its row a stored row, so
    the bytes never fall along the order and the mask is its longest prefix that fits.
    """
    num_rows, dim = margins.shape
    # values alone cost a float each: no prefix that fits is longer
    most = min(margins.numel(), int(target // FLOAT_BYTES))
    mask = torch.zeros(margins.numel(), dtype=torch.bool)
    if most <= 0:
        return mask.view_as(margins)
    flat = margins.flatten()
    chosen = torch.nonzero(_largest_first(flat, most)).squeeze(1)  # the `most` largest, in position order
    order = chosen[torch.sort(flat[chosen], descending=True, stable=True).indices]  # equal margins: by position
    del chosen
    rows = torch.div(order, dim, rounding_mode="floor")
    position = torch.arange(most)
    first = torch.full((num_rows,), most, dtype=torch.long).scatter_reduce(0, rows, position, "amin")
    opens = first[rows] == position  # the entry is its row's first in the order
    del rows, first, position
    low, high = 0, most  # the longest prefix that fits
    while low < high:
        k = (low + high + 1) // 2
        if storage_bytes(num_rows, int(opens[:k].sum()), k, dim) <= target:
            low = k
        else:
            high = k - 1
    mask[order[:low]] = True
    return mask.view_as(margins)


@SEARCHERS.register("pep")
class PEPSearcher(Searcher):
    """Soft-threshold pruning of one n x d table, then lottery-ticket retraining with a fixed mask.

    State: ``threshold`` (parameter ``s``, shape :func:`threshold_shape`);
    ``masks_`` (non-persistent: sparsity target -> bool ``[n, d]``); ``phase_`` (``search`` or
    ``retrain``).
    """

    Config = PEPConfig
    steers_to_budget = True
    shardable = True  # its per-row state follows the table's column shards (see shard())

    @classmethod
    def for_budget(
        cls, fields: list[FieldInfo], dim: int, config: SearcherConfig, budget: Budget
    ) -> tuple[int, SearcherConfig]:
        """The budget becomes the retrained sparsity; one that holds not even one kept value with its index
        is unreachable."""
        try:
            budget_sparsity(budget, sum(f.vocab_size for f in fields), dim)
        except ValueError as err:
            raise BudgetUnreachable(f"pep: {err}") from None
        return super().for_budget(fields, dim, config, budget)

    @classmethod
    def training_memory(cls, fields: list[FieldInfo], dim: int, config: SearcherConfig) -> MethodMemory:
        """The table, the thresholds (and their row-wise state, or as a parameter of the run's optimizer),
        a bool mask per sparsity target, the int64 field of each row, and the margins and top-k mask of a
        target's measurement (float32 and bool over the whole table). On several processes every rank holds
        each row's field, and each rank holding a shard the row-wise state's last step and scratch slot of
        every row; the rest follows the shards."""
        assert isinstance(config, PEPConfig)
        n = sum(f.vocab_size for f in fields)
        rows, width = threshold_shape(config.granularity, n, len(fields), dim)
        thresholds = rows * width * FLOAT_BYTES
        rowwise_state = rows * width * FLOAT_BYTES + rows * STEP_BYTES if config.rowwise_thresholds else 0
        masks = (len(config.targets) + 1) * n * dim
        measuring = n * dim * (FLOAT_BYTES + 1)
        if config.budget is not None and config.budget.kind != "params":  # budget_mask's order of entries
            most = min(n * dim, int(config.budget.target_bytes(n * dim * FLOAT_BYTES) // FLOAT_BYTES))
            measuring += n * dim + most * BUDGET_ORDER_BYTES  # the mask it returns, and its ordered entries
        per_row = n * INT64_BYTES
        return MethodMemory(
            tables=n * dim * FLOAT_BYTES,
            parameters=0 if config.rowwise_thresholds else thresholds,
            state=(thresholds if config.rowwise_thresholds else 0) + rowwise_state + masks + measuring + per_row,
            replicated=per_row + (n * STEP_BYTES if config.rowwise_thresholds else 0),
        )

    def __init__(self, fields: list[FieldInfo], dim: int, config: PEPConfig, init_std: float = DEFAULT_INIT_STD):
        super().__init__(fields, dim, config, init_std)
        self.config: PEPConfig = config
        n = sum(self.vocab_sizes)
        self.num_rows = n
        shape = threshold_shape(config.granularity, n, self.num_fields, dim)
        self.threshold = nn.Parameter(torch.full(shape, config.s0))
        self.threshold_width = shape[1]
        self.threshold_optimizer: RowwiseAdam | None = None
        if config.rowwise_thresholds:  # trained in the lookup's backward, not by the run's optimizers
            self.threshold.requires_grad_(False)
            self.threshold_optimizer = RowwiseAdam(shape[0], shape[1], lr=config.threshold_lr)
        offsets = torch.from_numpy(field_bounds(self.vocab_sizes)[:-1])
        self.register_buffer("row_offsets", offsets, persistent=False)
        row_field = torch.repeat_interleave(torch.arange(self.num_fields), torch.tensor(self.vocab_sizes))
        self.register_buffer("row_field", row_field, persistent=False)  # [n]: the field of each row
        self.targets = sorted(set(config.targets))
        #: the bytes of a byte budget (its target's mask is cut by bytes, :func:`budget_mask`), else None
        self.budget_bytes: float | None = None
        if config.budget is not None:  # the budget's sparsity is the last target and the one retrained
            self.retrain_sparsity = budget_sparsity(config.budget, n, dim)
            if config.budget.kind != "params":
                self.budget_bytes = config.budget.target_bytes(n * dim * FLOAT_BYTES)
            self.targets = [t for t in self.targets if t < self.retrain_sparsity] + [self.retrain_sparsity]
        else:
            try:
                self.retrain_sparsity = self.targets[config.retrain_target]
            except IndexError:
                raise ValueError(
                    f"retrain_target: index {config.retrain_target} out of range for {len(self.targets)} targets"
                ) from None
        # non-persistent state (survives the trainer's weight reloads, saved by state_for_checkpoint)
        self.phase_ = SEARCH
        self.masks_: dict[float, torch.Tensor] = {}
        self.reached_at_: dict[float, int] = {}
        self.search_steps_ = 0
        self.last_sparsity_ = 0.0
        self.history_: list[tuple[int, float]] = []
        self.completed_by_margin_ = False  # the search fell short and the retrain mask was completed by margin
        self._fused: Any = None  # the compiled drifted_threshold, built on first training use
        self._fused_count: Any = None  # the compiled count_kept, built with it
        self._fused_ok = config.fused_threshold
        # mode ours: the offset every threshold has risen by, a 0-d tensor so that the
        # compiled kernels take it as an input rather than recompiling for each value
        self.register_buffer("drift", torch.zeros(()), persistent=False)
        #: on several processes (shard()): the table's column shards, which the masks (and the row-wise
        #: thresholds with their optimizer state) follow; None on one process
        self.shards_: ColumnShards | None = None

    # ------------------------------------------------------------------ thresholds
    def optimizer_groups(self) -> list[dict[str, Any]]:
        if self.config.threshold_lr is None or self.threshold_optimizer is not None:
            return []  # train's settings, or trained row-wise by the searcher itself
        return [{"params": [self.threshold], "lr": self.config.threshold_lr}]

    def batch_thresholds(self, ids: torch.Tensor) -> torch.Tensor:
        """Threshold logits of the looked-up entries, broadcastable to ``[B, F, d]`` (ids ``[B, F]``)."""
        s = self.threshold
        if self.config.granularity in ("feature", "feature_dim"):
            rows = ids + self.row_offsets
            if self.threshold_optimizer is not None and self.shards_ is not None:  # on the ranks holding them
                return self._sharded_thresholds(rows)
            if self.threshold_optimizer is not None:
                return self.threshold_optimizer(s, rows)  # [B, F, 1|d]
            return nn.functional.embedding(rows, s)  # [B, F, 1|d]
        return s.unsqueeze(0)  # global, dimension: [1, 1, 1|d]; field*: [1, F, 1|d]

    def effective_thresholds(self, s: torch.Tensor) -> torch.Tensor:
        """Threshold logits ``s`` plus the common drift (mode ours; zero in mode faithful)."""
        return s + self.drift

    def table_thresholds(self, rows: slice = slice(None)) -> torch.Tensor:
        """Threshold logits of the table's ``rows`` (all by default), broadcastable to ``[rows, d]``."""
        s = self.threshold
        if self.config.granularity in ("field", "field_dim"):
            s = s[self.row_field[rows]]
        elif self.config.granularity in ("feature", "feature_dim"):
            s = s[rows]
        return self.effective_thresholds(s)

    # ------------------------------------------------------------------ forward
    def forward(self, raw: RawEmbeddings, ids: torch.Tensor) -> Embedded:
        v = raw.stacked()  # [B, F, d]
        if self.phase_ == RETRAIN:
            # zero gradient on pruned entries: their weights (zero) never change
            return Embedded(torch.where(self._batch_mask(ids), v, 0.0))
        s = self.batch_thresholds(ids)
        if self.training and torch.is_grad_enabled() and self._fused_available(v, s):
            return Embedded(self._fused(v, s, self.drift))
        return Embedded(soft_threshold(v, self.effective_thresholds(s)))

    def _fused_available(self, v: torch.Tensor, s: torch.Tensor) -> bool:
        """Whether the compiled threshold works here; the first call compiles it and runs it, forward
        and backward, on two batch rows, and on any failure warns once and keeps the eager ops."""
        if not self._fused_ok or self._fused is not None:
            return self._fused_ok
        try:
            fused = torch.compile(drifted_threshold, dynamic=True)
            probe_v = v[:2].detach().clone().requires_grad_(True)
            probe_s = s[:2].detach().clone().requires_grad_(True)
            fused(probe_v, probe_s, self.drift).sum().backward()
            fused_count = torch.compile(count_kept, dynamic=True)
            with torch.no_grad():
                fused_count(probe_v, probe_s)
        except Exception as err:  # no C++ compiler, unsupported device, ...: the eager ops are exact too
            warnings.warn(f"pep: fused_threshold falls back to eager ops ({type(err).__name__}: {err})", stacklevel=2)
            self._fused_ok = False
            return False
        self._fused, self._fused_count = fused, fused_count
        return True

    def pull_growth(self) -> float:
        """The drift's rate now relative to its start: 0 before ``pull_start_epochs``, then doubling
        every ``pull_doubling_epochs`` (1 for a constant drift)."""
        if self.steps_per_epoch is None:
            raise RuntimeError("pep: steps_per_epoch is not set (the trainer sets it; set it when stepping by hand)")
        pulled = self.search_steps_ / self.steps_per_epoch - self.config.pull_start_epochs
        if pulled < 0:
            return 0.0
        doubling = self.config.pull_doubling_epochs
        return 1.0 if doubling is None else 2.0 ** (pulled / doubling)

    def pull_weight(self) -> float:
        """The drift per step now (logits every threshold rises by)."""
        return self.config.drift_per_epoch / self.steps_per_epoch * self.pull_growth()

    # ------------------------------------------------------------------ whole-table measures
    @torch.no_grad()
    def margins(self, lookup: Lookup) -> torch.Tensor:
        """``|v| - sigmoid(s)`` of the whole table ``[n, d]``; an entry survives where it is > 0 (on several
        processes: this rank's part, laid out like the table's shards)."""
        if self.shards_ is not None:
            return self._local_margins(lookup)
        return lookup.table_weight(TABLE).abs() - torch.sigmoid(self.table_thresholds())

    def _retrain_mask(self) -> torch.Tensor:
        if self.retrain_sparsity in self.masks_:
            return self.masks_[self.retrain_sparsity]
        if not self.masks_:
            raise RuntimeError("pep: retraining needs a mask; no search saved one")
        return self.masks_[max(self.masks_)]  # the search fell short of the target (end_stage warned)

    @torch.no_grad()
    def current_mask(self, lookup: Lookup) -> torch.Tensor:
        """Bool ``[n, d]``: entries the model currently keeps (search: survive the threshold)."""
        if self.phase_ == RETRAIN:
            return self._retrain_mask()
        return self.margins(lookup) > 0

    @torch.no_grad()
    def record_sparsity(self, lookup: Lookup) -> float:
        """Records the whole table's sparsity now and saves a mask for every target passed since the last
        record; returns the sparsity. Called by the hooks (a state change, not a query)."""
        total = self.num_rows * self.dim
        if self.phase_ != SEARCH:
            return self._mask_sparsity()
        sparsity = 1.0 - self._count_kept(lookup) / total
        self.last_sparsity_ = sparsity
        passed = [t for t in self.targets if t <= sparsity and t not in self.masks_]
        margins = self.margins(lookup) if passed else None
        for target in passed:
            self.masks_[target] = self._target_mask(target, margins)
            self.reached_at_[target] = self.search_steps_
        return sparsity

    def _mask_sparsity(self) -> float:
        """Sparsity of the retraining mask (counted over every rank's part)."""
        kept = int(self._retrain_mask().sum())
        if self.shards_ is not None:
            kept = int(self.shards_.sum(kept))
        return 1.0 - kept / (self.num_rows * self.dim)

    @torch.no_grad()
    def _count_kept(self, lookup: Lookup) -> int:
        """Entries that survive the threshold (``margins > 0``), counted in blocks of rows: no ``n x d``
        temporaries, which at 1e6 rows made the scheduled measurement much slower (on several processes: each
        rank counts its shards, and the counts are summed)."""
        if self.shards_ is not None:
            return self._count_kept_sharded(lookup)
        table = lookup.table_weight(TABLE)
        count = count_kept if self._fused_count is None else self._fused_count
        kept = 0
        for start in range(0, self.num_rows, MEASURE_BLOCK_ROWS):
            rows = slice(start, start + MEASURE_BLOCK_ROWS)
            kept += int(count(table[rows], self.table_thresholds(rows)))
        return kept

    def _target_mask(self, target: float, margins: torch.Tensor) -> torch.Tensor:
        """The mask saved for ``target``: the entries of largest margin, as many as its sparsity keeps, or,
        for a byte budget's target, as many as its bytes hold in the rows they fall into."""
        # On several processes a row's columns lie on several ranks, so which rows a prefix opens is not
        # known locally; the budget's sparsity holds any mask within the bytes (budget_sparsity), so the
        # sharded run keeps that many values and lands within the budget, a little below it.
        if target == self.retrain_sparsity and self.budget_bytes is not None and self.shards_ is None:
            return budget_mask(margins, self.budget_bytes)
        return self._top_mask(margins, round((1.0 - target) * self.num_rows * self.dim))

    def _top_mask(self, margins: torch.Tensor, keep: int) -> torch.Tensor:
        """Bool mask of the ``keep`` entries with the largest margin, of equal margins the first in the
        table's row-major order (on several processes: this rank's part, chosen over every rank's)."""
        if self.shards_ is not None:
            return self._top_mask_sharded(margins, keep)
        flat = margins.flatten()
        if keep >= flat.numel():
            return torch.ones_like(margins, dtype=torch.bool)
        if keep <= 0:
            return torch.zeros_like(margins, dtype=torch.bool)
        return _largest_first(flat, keep).view_as(margins)

    # ------------------------------------------------------------------ stage hooks
    def stages(self) -> tuple[Stage, ...]:
        """The search ends at its last target (its last state is the mask's); the retraining rewinds to
        step 0 and patience may end it after ``retrain_min_epochs``."""
        return (
            Stage(SEARCH, patience=False, selection="last"),
            Stage(RETRAIN, rewind=True, patience_after_epochs=self.config.retrain_min_epochs),
        )

    def schedule_warnings(self, epochs: float) -> list[str]:
        c = self.config
        if c.mode != "ours" or c.pull_start_epochs < epochs:
            return []
        return [
            f"pep: the drift starts after method.pull_start_epochs={c.pull_start_epochs:g} search epochs, but a "
            f"stage trains at most {epochs:g} (train.epochs, train.max_steps): the thresholds prune only as far as "
            "the loss moves them, and a target they miss is completed with the entries of largest margin (about "
            "their magnitude); schedule the pull within the search (pull_start_epochs and pull_doubling_epochs "
            "take fractions of an epoch, as in configs/bench/criteo_kaggle_*.yaml)"
        ]

    def stage_done(self, stage: Stage) -> bool:
        return stage.name == SEARCH and all(t in self.masks_ for t in self.targets)

    def on_evaluation(self, stage: Stage, lookup: Lookup) -> None:
        self.record_sparsity(lookup)  # saves a mask for every target passed since the last measurement

    def start_stage(self, stage: Stage, lookup: Lookup) -> None:
        if stage.name != RETRAIN:
            return
        mask = self._retrain_mask()
        with torch.no_grad():
            if self.shards_ is not None:
                self._mask_shards(lookup, mask)
            else:
                table = lookup.table_weight(TABLE)
                if self.config.retrain_init == "random":
                    nn.init.normal_(table, std=self.init_std)
                table.mul_(mask)  # V_0 * mask
        self._enter_retrain()

    def end_stage(self, stage: Stage, lookup: Lookup) -> None:
        if stage.name != SEARCH or self.retrain_sparsity in self.masks_:
            return
        # the search ran out of epochs before the retrain target: prune the entries nearest their
        # thresholds (smallest margin), the ones the thresholds would have taken next, and say so
        sparsity = self.record_sparsity(lookup)
        if self.retrain_sparsity not in self.masks_:
            warnings.warn(
                f"pep: the search ended at sparsity {sparsity:.4f}, below the retrain target "
                f"{self.retrain_sparsity:.4f}; the entries nearest their thresholds are pruned to reach it "
                "(raise train.epochs or method.threshold_lr for a mask the search reaches itself)",
                stacklevel=2,
            )
            self.masks_[self.retrain_sparsity] = self._target_mask(self.retrain_sparsity, self.margins(lookup))
            self.reached_at_[self.retrain_sparsity] = self.search_steps_
            self.completed_by_margin_ = True

    def _enter_retrain(self) -> None:
        self.phase_ = RETRAIN
        self.threshold.requires_grad_(False)  # thresholds off: the trainer's new optimizers skip them

    def on_step(self, step: int, lookup: Lookup) -> None:
        if self.phase_ != SEARCH:
            return
        self.search_steps_ += 1
        if self.config.mode == "ours":
            step_drift = self.pull_weight()
            first_pulled = (self.search_steps_ - 1) / self.steps_per_epoch < self.config.pull_start_epochs
            if step_drift > 0 and first_pulled:
                self._start_drift(lookup)
            self.drift += step_drift
        if self.search_steps_ % self.config.measure_every_steps == 0:
            self.history_.append((self.search_steps_, self.record_sparsity(lookup)))

    @torch.no_grad()
    def _start_drift(self, lookup: Lookup) -> None:
        """Jump the drift to where ``sigmoid(s0 + drift)`` cuts ``drift_start_quantile`` of ``|v|``: the
        steps from ``s0`` up to the weights' scale prune nothing, and their length depends on s0."""
        quantile = self.config.drift_start_quantile
        if quantile is None:
            return
        if self.shards_ is not None:
            values = self._sampled_magnitudes(lookup)
        else:
            values = lookup.table_weight(TABLE).detach().abs().flatten()
            if values.numel() > QUANTILE_SAMPLE:
                gen = torch.Generator().manual_seed(0)
                values = values[torch.randint(values.numel(), (QUANTILE_SAMPLE,), generator=gen)]
        cut = float(torch.quantile(values.float(), quantile))
        start = float(torch.logit(torch.tensor(max(cut, 1e-12)))) - self.config.s0
        self.drift.fill_(max(float(self.drift), start))

    def metrics(self, lookup: Lookup) -> dict[str, float]:
        search = self.phase_ == SEARCH
        out = {"sparsity": self.last_sparsity_ if search else self._mask_sparsity()}
        if self.phase_ == SEARCH:
            out["threshold_mean"] = self._threshold_mean()
            out["targets_reached"] = float(len(self.masks_))
            out["pull_weight"] = self.pull_weight()
        return out

    def state_for_checkpoint(self) -> dict[str, Any]:
        return {
            "phase": self.phase_,
            "masks": {str(t): m.clone() for t, m in self.masks_.items()},
            "reached_at": {str(t): s for t, s in self.reached_at_.items()},
            "search_steps": self.search_steps_,
            "history": list(self.history_),
            "completed_by_margin": self.completed_by_margin_,
            "drift": float(self.drift),
        }

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        self.masks_ = {float(t): m for t, m in state["masks"].items()}
        self.reached_at_ = {float(t): int(s) for t, s in state["reached_at"].items()}
        self.search_steps_ = int(state["search_steps"])
        self.history_ = [tuple(x) for x in state["history"]]
        self.completed_by_margin_ = bool(state.get("completed_by_margin", False))  # absent before 2026-11-30
        self.drift.fill_(float(state.get("drift", 0.0)))  # absent before 2026-12-01
        if state["phase"] == RETRAIN:
            self._enter_retrain()

    def _threshold_mean(self) -> float:
        """Mean of ``sigmoid(s + drift)`` over every threshold (every rank's, once each)."""
        values = torch.sigmoid(self.effective_thresholds(self.threshold.detach()))
        if self.shards_ is None or self.threshold_optimizer is None:
            return float(values.mean())
        answers = self.threshold_width == self.dim or self.shards_.rank == self.shards_.holders[0]
        total = self.shards_.sum(float(values.double().sum()) if answers else 0.0)
        return total / (self.num_rows * self.threshold_width)

    # ------------------------------------------------------------------ several processes
    # The table is sharded by columns, every shard holding all the rows (TorchRec on the CPU). The masks,
    # and the row-wise thresholds with their optimizer state, follow it (ColumnShards): a rank holds their
    # values for the columns it holds of the table, or (``feature`` thresholds, one per row) a copy of the
    # row's value wherever the row has columns. The sparsity is counted where the values are and summed;
    # a target's mask is chosen by the same rule as on one process from counts summed over the ranks; a
    # batch's thresholds and mask entries come from the ranks that hold them (an all-to-all), and the
    # thresholds' gradients go back to them, each holder stepping its part with the whole global batch's
    # rows. Thresholds of the other granularities (or mode faithful, trained by the run's optimizer) are
    # replicated parameters, averaged by data parallelism.
    def shard(self, lookup: Lookup) -> None:
        shards = ColumnShards(lookup.column_blocks(TABLE), self.dim)  # type: ignore[attr-defined]
        self.shards_ = shards
        self.masks_ = {t: shards.local_part(m) for t, m in self.masks_.items()}
        if self.threshold_optimizer is None:
            return
        whole, old = self.threshold.detach(), self.threshold_optimizer
        self.threshold = nn.Parameter(shards.local_part(whole), requires_grad=False)
        width = shards.local_width(self.threshold_width)
        opt = RowwiseAdam(self.num_rows if shards.holds else 0, width, lr=old.lr, beta2=old.beta2, eps=old.eps)
        with torch.no_grad():  # a rank holding none of the table holds none of this state either
            if shards.holds:
                opt.exp_avg_sq.copy_(shards.local_part(old.exp_avg_sq))
                opt.last_step.copy_(old.last_step)
            opt.step.copy_(old.step)
        self.threshold_optimizer = opt

    def has_idle_parameters(self) -> bool:
        return self.threshold.requires_grad  # thresholds the run's optimizer trains are switched off to retrain

    def local_state_names(self) -> list[str]:
        if self.shards_ is None or self.threshold_optimizer is None:
            return []
        return ["threshold", *(f"threshold_optimizer.{name}" for name, _ in self.threshold_optimizer.named_buffers())]

    def gather_state(self, lookup: Lookup, dst: int = 0) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """The whole thresholds, their optimizer state and masks on ``dst`` (from every rank's part)."""
        if self.shards_ is None:
            return super().gather_state(lookup, dst)
        shards, state, n = self.shards_, self.state_dict(), self.num_rows
        if self.threshold_optimizer is not None:
            width, opt = self.threshold_width, self.threshold_optimizer
            # every holder steps every row alike: the rows' last steps and the step count are the first holder's
            parts = {
                "threshold": (self.threshold.detach(), width, n),
                "threshold_optimizer.exp_avg_sq": (opt.exp_avg_sq, width, n),
                "threshold_optimizer.last_step": (opt.last_step.unsqueeze(1), 1, n),
                "threshold_optimizer.step": (opt.step.view(1, 1), 1, 1),
            }
            for key, (local, w, rows) in parts.items():
                state[key] = shards.gather(local, w, rows, dst)
            if shards.rank == dst:
                state["threshold_optimizer.last_step"] = state["threshold_optimizer.last_step"].squeeze(1)
                state["threshold_optimizer.step"] = state["threshold_optimizer.step"].reshape(())
        checkpoint = self.state_for_checkpoint()
        checkpoint["masks"] = {t: shards.gather(m, self.dim, n, dst) for t, m in checkpoint["masks"].items()}
        return (state, checkpoint) if shards.rank == dst else None

    def _local_blocks(self, lookup: Lookup) -> list[tuple[int, int, torch.Tensor, slice]]:
        """This rank's shards of the table: ``(first column, end column, weights [n, end - first], the
        columns of this rank's part of the masks that hold them)``."""
        assert self.shards_ is not None
        blocks = lookup.local_columns(TABLE)  # type: ignore[attr-defined]
        parts = self.shards_.local_slices([(first, end) for first, end, _ in blocks])
        return [(first, end, weight, part) for (first, end, weight), part in zip(blocks, parts, strict=True)]

    def _block_thresholds(self, rows: slice, first: int, end: int, part: slice) -> torch.Tensor:
        """Threshold logits (drift included) of the table's ``rows`` and columns ``first:end``, broadcastable
        to ``[rows, end - first]``; ``part``: those columns in this rank's part of row-wise thresholds."""
        if self.threshold_optimizer is not None:  # this rank's part
            s = self.threshold[rows]
            return self.effective_thresholds(s[:, part] if self.threshold_width > 1 else s)
        s = self.table_thresholds(rows)
        return s[:, first:end] if s.shape[1] > 1 else s

    @torch.no_grad()
    def _count_kept_sharded(self, lookup: Lookup) -> int:
        count = count_kept if self._fused_count is None else self._fused_count
        kept = 0
        for first, end, weight, part in self._local_blocks(lookup):
            for start in range(0, self.num_rows, MEASURE_BLOCK_ROWS):
                rows = slice(start, start + MEASURE_BLOCK_ROWS)
                kept += int(count(weight[rows], self._block_thresholds(rows, first, end, part)))
        assert self.shards_ is not None
        return int(self.shards_.sum(kept))

    def _local_margins(self, lookup: Lookup) -> torch.Tensor:
        """This rank's part of :meth:`margins`: ``[n, columns it holds]``."""
        assert self.shards_ is not None
        out = torch.empty(self.num_rows, len(self.shards_.columns))
        everything = slice(None)
        for first, end, weight, part in self._local_blocks(lookup):
            out[:, part] = weight.abs() - torch.sigmoid(self._block_thresholds(everything, first, end, part))
        return out

    def _top_mask_sharded(self, margins: torch.Tensor, keep: int) -> torch.Tensor:
        """:meth:`_top_mask` over every rank's part: the ``keep``-th largest margin is found by a radix select
        whose counts are summed over the ranks (:func:`~embdim.measures.kth_largest`), and the margins equal
        to it are taken in row-major order by a bisection on positions."""
        assert self.shards_ is not None
        shards, total = self.shards_, self.num_rows * self.dim
        if keep >= total:
            return torch.ones_like(margins, dtype=torch.bool)
        if keep <= 0:
            return torch.zeros_like(margins, dtype=torch.bool)
        cut = kth_largest(margins.float(), keep, sums=shards.sums)
        mask = margins > cut
        need = keep - int(shards.sum(int(mask.sum())))
        if need > 0:  # the margins equal to the cut, first in row-major order
            rows, cols = torch.nonzero(margins == cut, as_tuple=True)
            position = rows * self.dim + shards.columns[cols]
            low, high = 0, total  # the smallest bound whose ties before it number at least `need`
            while low < high:
                middle = (low + high) // 2
                if shards.sum(int((position < middle).sum())) >= need:
                    high = middle
                else:
                    low = middle + 1
            chosen = position < low
            mask[rows[chosen], cols[chosen]] = True
        return mask

    @torch.no_grad()
    def _sampled_magnitudes(self, lookup: Lookup) -> torch.Tensor:
        """``|v|`` of the entries one process samples for the drift's starting quantile (all of them for a
        small table), each read on the rank holding it and summed over the ranks."""
        assert self.shards_ is not None
        total = self.num_rows * self.dim
        if total > QUANTILE_SAMPLE:
            index = torch.randint(total, (QUANTILE_SAMPLE,), generator=torch.Generator().manual_seed(0))
        else:
            index = torch.arange(total)
        rows, cols = index // self.dim, index % self.dim
        values = torch.zeros(len(index))
        for first, end, weight, _ in self._local_blocks(lookup):
            mine = (cols >= first) & (cols < end)
            values[mine] = weight[rows[mine], cols[mine] - first].abs()
        return self.shards_.sums(values)

    @torch.no_grad()
    def _mask_shards(self, lookup: Lookup, mask: torch.Tensor) -> None:
        """The retraining's start on several processes: each rank's shards times its part of ``mask`` (after
        ``retrain_init=random``'s draw of the whole table, the same on every rank, as one process draws it)."""
        fresh = None
        if self.config.retrain_init == "random":
            fresh = nn.init.normal_(torch.empty(self.num_rows, self.dim), std=self.init_std)
        for first, end, weight, part in self._local_blocks(lookup):
            if fresh is not None:
                weight.copy_(fresh[:, first:end])
            weight.mul_(mask[:, part])

    def _sharded_thresholds(self, rows: torch.Tensor) -> torch.Tensor:
        """Row-wise thresholds of the looked-up ``rows`` [B, F] from the ranks holding them: ``[B, F, 1|d]``
        (training: their gradients go back to those ranks, which step them with the global batch's rows)."""
        assert self.shards_ is not None and self.threshold_optimizer is not None
        opt = self.threshold_optimizer
        if opt.training and torch.is_grad_enabled():
            return sharded_rowwise_lookup(self.threshold, rows, opt, self.shards_, self.threshold_width)
        all_rows, sizes = self.shards_.requests(rows)
        out = self.shards_.fetch(self.threshold.detach(), all_rows, sizes, self.threshold_width)
        return out.view(*rows.shape, self.threshold_width)

    def _batch_mask(self, ids: torch.Tensor) -> torch.Tensor:
        """The retraining mask's entries of the looked-up rows: bool ``[B, F, d]``."""
        mask, rows = self._retrain_mask(), ids + self.row_offsets
        if self.shards_ is None:
            return mask[rows]
        all_rows, sizes = self.shards_.requests(rows)
        return self.shards_.fetch(mask, all_rows, sizes, self.dim).view(*rows.shape, self.dim)

    # ------------------------------------------------------------------ plan, export, report
    @torch.no_grad()
    def _kept(self, lookup: Lookup) -> tuple[torch.Tensor, torch.Tensor]:
        """The values the model sees for the whole table ``[n, d]`` and their keep-mask."""
        table = lookup.table_weight(TABLE).detach()
        mask = self.current_mask(lookup)
        values = table if self.phase_ == RETRAIN else soft_threshold(table, self.table_thresholds())
        return values * mask, mask

    def plan(self, lookup: Lookup) -> EmbeddingPlan:
        _, mask = self._kept(lookup)
        nnz = mask.sum(1).numpy()
        bounds = field_bounds(self.vocab_sizes)
        rows = [nnz[a:b] for a, b in itertools.pairwise(bounds)]
        sparsity = 1.0 - float(nnz.sum()) / (self.num_rows * self.dim)
        details = {
            "mode": self.config.mode,
            "granularity": self.config.granularity,
            "phase": self.phase_,
            "sparsity": sparsity,
        }
        widths = [int(r.max(initial=0)) for r in rows]
        plans = [self._plan(widths, storage=name, row_sizes=rows, details=details) for name in STORAGES]
        details["storage_bytes"] = {plan.storage: plan.num_bytes for plan in plans}
        return min(plans, key=lambda plan: plan.num_bytes)  # the first of equals: compact

    def export(self, lookup: Lookup) -> SlimEmbedding:
        values, mask = self._kept(lookup)
        plan = self.plan(lookup)
        group = STORAGES[plan.storage].from_dense(
            tuple(range(self.num_fields)), tuple(self.vocab_sizes), values, mask, self.dim
        )
        return SlimEmbedding(plan, [group])

    def report(self, lookup: Lookup) -> dict[str, Any]:
        cells = self.num_rows * self.dim
        threshold_numel = self.threshold.numel()
        return {
            "mode": self.config.mode,
            "granularity": self.config.granularity,
            "s0": self.config.s0,
            "threshold_lr": self.config.threshold_lr,
            "drift_per_epoch": self.config.drift_per_epoch,
            "final_drift": float(self.drift),
            "rowwise_thresholds": self.threshold_optimizer is not None,
            "retrain_init": self.config.retrain_init,
            "targets": self.targets,
            "retrain_sparsity": self.retrain_sparsity,
            "targets_reached_at_step": {str(t): s for t, s in sorted(self.reached_at_.items())},
            "retrain_target_reached": self.retrain_sparsity in self.masks_ and not self.completed_by_margin_,
            "retrain_mask_completed_by_margin": self.completed_by_margin_,
            "search_final_sparsity": self.last_sparsity_,
            "final_sparsity": 1.0 - float(self.current_mask(lookup).sum()) / cells,
            "sparsity_history": [[s, round(x, 6)] for s, x in self.history_],
            "training_memory_bytes": {
                "table": cells * FLOAT_BYTES,
                "thresholds": threshold_numel * FLOAT_BYTES,
                "threshold_optimizer_state": self._threshold_state_bytes(),
                "saved_masks": len(self.masks_) * cells,
            },
        }

    def _threshold_state_bytes(self) -> int:
        """Optimizer state of the thresholds: RowwiseAdam's squared-gradient average, last steps and
        scratch slots, or a dense Adam's two moments."""
        rows, width = self.threshold.shape
        if self.threshold_optimizer is not None:
            return rows * width * FLOAT_BYTES + rows * STEP_BYTES
        return ADAM_MOMENTS * rows * width * FLOAT_BYTES
