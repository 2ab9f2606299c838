"""The searcher interface: one ``nn.Module`` per embedding-size method.

A searcher turns looked-up raw vectors into the embeddings a model reads, ``[B, F, d]``, with
exact zeros where dimensions or elements are pruned, and the batch's penalty. It also owns the
method's stage logic (search, retrain, cut, collapse), so there is never one model class per
training stage: its stages are data (:class:`Stage`: how each may end, which weights it hands on,
whether it rewinds), and there is one hook per event, the only methods that change its state;
everything else is a query.

Lifecycle, as driven by :class:`embdim.train.trainer.Trainer`::

    for stage in searcher.stages():        # e.g. Stage("search", ...), Stage("retrain", rewind=True) for PEP
        (stage.rewind: every weight back to its step-0 value)
        searcher.start_stage(stage, lookup)
        for each step: emb, penalty = searcher(raw, ids); loss = task_loss + penalty; ...
                       searcher.on_step(step, lookup)
        at each evaluation: searcher.on_evaluation(stage, lookup); searcher.metrics(lookup) is logged;
                            the stage ends when searcher.stage_done(stage) (or by its Stage rules)
        (stage.selection == "best": the stage's best weights are loaded)
        searcher.end_stage(stage, lookup)
    plan = searcher.plan(lookup); slim = searcher.export(lookup)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, NamedTuple

import torch
from pydantic import Field
from torch import nn

from embdim.budget import LANDING_TOLERANCE, Budget, BudgetUnreachable, uniform_bytes
from embdim.data.schema import FieldInfo
from embdim.lookup import DEFAULT_INIT_STD, Lookup, RawEmbeddings, TableSpec
from embdim.options import Options
from embdim.plan import EmbeddingPlan
from embdim.slim import DenseGroup, SlimEmbedding


def fields_plan(method: str, fields: list[FieldInfo], dim: int, field_dims: list[int], **kwargs: Any) -> EmbeddingPlan:
    """``method``'s plan of ``fields`` (their names and vocabulary sizes) at these stored widths; ``kwargs``:
    the rest of :class:`~embdim.plan.EmbeddingPlan` (storage, row sizes, buckets, details)."""
    names, sizes = [f.name for f in fields], [f.vocab_size for f in fields]
    return EmbeddingPlan(method=method, field_names=names, vocab_sizes=sizes, dim=dim, field_dims=field_dims, **kwargs)


class SearcherConfig(Options):
    """Base of every searcher's options; unknown keys are an error that names the key.

    ``budget`` is every method's: a run with ``method.budget`` set aims at it the method's own way
    (:meth:`Searcher.for_budget`, applied by :func:`embdim.config.resolve_budget` before the model is
    built), exactly as ``embdim bench`` does.
    """

    budget: Budget | None = Field(
        None,
        description="memory target of the slim embedding: a fraction of the uniform n x embedding.dim tables' "
        "bytes, or {kind: bytes|params, value: N}; each method aims at it its own way (by width, scale, "
        "sparsity or a penalty controller); null: none",
    )


class Embedded(NamedTuple):
    """What a searcher's forward returns: the embeddings a model reads and the loss term it adds.

    Attributes:
        embeddings: float [B, F, d], exact zeros where dimensions or elements are pruned.
        penalty: a 0-d tensor added to the task loss while training (size penalties), or ``None``.
    """

    embeddings: torch.Tensor
    penalty: torch.Tensor | None = None


@dataclass(frozen=True)
class MethodMemory:
    """Bytes a method holds while training, by how a trainer treats them (for the pre-flight estimate).

    Attributes:
        tables: the raw tables it declares (trained like tables: gradients and table optimizer state).
        parameters: its own trainable parameters outside the tables (trained by the dense optimizer).
        state: what it keeps besides (per-row buffers, saved masks, row-wise optimizer state), and the
            largest temporary it builds over the whole vocabulary (a mask, a collapse).
        replicated: the part of ``state`` every process holds on several processes (``train.processes``):
            state derived from every row's inputs, or kept per row on every rank holding a shard; the
            rest of ``state`` follows the table's shards.
        fused_tables: ``tables`` as fused TorchRec tables hold them, each row zero-padded to a multiple of
            four values (:func:`~embdim.distributed.torchrec_lookup.padded_dim`); ``None`` for tables that
            are all ``d`` wide (the estimate pads ``d``).
    """

    tables: int
    parameters: int = 0
    state: int = 0
    replicated: int = 0
    fused_tables: int | None = None


@dataclass(frozen=True)
class Stage:
    """One training stage of a method, as data the trainer follows.

    Attributes:
        name: what metrics.jsonl and result.json call it.
        patience: whether validation patience (``train.patience``) may end it, and the plateau
            schedule drop its rates; a search that must reach its target ends only by
            :meth:`Searcher.stage_done` (or the step limits).
        patience_after_epochs: epochs trained before patience counts (a rewound model dips at first).
        selection: the weights it hands on: its ``best`` validation checkpoint, or its ``last`` state
            (for a search whose sizes keep shrinking, the best-AUC step would undo the search).
        rewind: every weight is reset to its step-0 value before it starts (lottery-ticket retraining).
        max_steps: it ends after this many steps (and ``train.max_steps``, whichever is first).
    """

    name: str
    patience: bool = True
    patience_after_epochs: float = 0.0
    selection: Literal["best", "last"] = "best"
    rewind: bool = False
    max_steps: int | None = None


class Searcher(nn.Module, ABC):
    """Base class of embedding-size methods.

    Args:
        fields: the categorical fields (vocabulary sizes and training counts).
        dim: output width ``d`` of every field's embedding.
        config: the method's options (its own :class:`SearcherConfig` subclass).
        init_std: normal-init standard deviation of the raw tables.

    ``forward(raw, ids)``:
        raw: the looked-up raw vectors of the tables declared by :meth:`table_specs`, read at the rows
            :meth:`lookup_ids` gives.
        ids: int64 [B, F], per-field ids (value-level methods index their own state with them).
        returns: :class:`Embedded`: float [B, F, d] and the penalty of this batch (``None`` outside
        training, or for methods without one).
    """

    Config: ClassVar[type[SearcherConfig]] = SearcherConfig
    #: the method steers its sizes to ``config.budget`` while it trains (a sparsity target, a controller)
    steers_to_budget: ClassVar[bool] = False
    #: the method trains on several processes (``train.processes``): its tables sharded by TorchRec, its
    #: own parameters data-parallel, every query and export of its state answered from what the ranks hold
    #: (see :meth:`shard`, :meth:`local_state_names`, :meth:`gather_state` and :attr:`batch_rows`)
    shardable: ClassVar[bool] = False

    def __init__(
        self, fields: list[FieldInfo], dim: int, config: SearcherConfig, init_std: float = DEFAULT_INIT_STD
    ) -> None:
        super().__init__()
        self.fields = list(fields)
        self.dim = dim
        self.config = config
        self.init_std = init_std
        #: training batches per epoch, set by the trainer before a stage trains (schedules in epochs)
        self.steps_per_epoch: int | None = None
        #: the rows a penalty that is a mean over the batch divides by: ``None`` for the batch's own rows; on
        #: several processes the trainer sets it to the global batch's rows over the processes before each
        #: step, so that the ranks' penalties, their gradients averaged, are the global batch's mean
        self.batch_rows: float | None = None

    @property
    def num_fields(self) -> int:
        return len(self.fields)

    @property
    def vocab_sizes(self) -> list[int]:
        return [f.vocab_size for f in self.fields]

    @classmethod
    def for_budget(
        cls, fields: list[FieldInfo], dim: int, config: SearcherConfig, budget: Budget
    ) -> tuple[int, SearcherConfig]:
        """``(dim, config)`` with which this method aims at ``budget`` (``embdim run`` with
        ``method.budget``, and ``embdim bench``); ``budget`` is relative to uniform ``n x dim`` tables.

        Default: a method that steers to its budget while training (:attr:`steers_to_budget`: PEP, DML,
        AMTL) keeps it in the config, unless even its :meth:`smallest_plan` is above the budget (beyond
        the landing tolerance): then, as for any method that cannot aim at one, it raises
        :class:`~embdim.budget.BudgetUnreachable` before anything trains. Methods that meet a budget by
        their width (``full``, ``mlet``) or by a scale (``mde``) override this and return a config whose
        ``budget`` is ``None``: it is spent, so resolving again changes nothing.
        """
        if not cls.steers_to_budget:
            raise BudgetUnreachable(f"{cls.registered_name} has no way to aim at a memory budget")
        smallest = cls.smallest_plan(fields, dim, config)
        target = budget.target_bytes(uniform_bytes(fields, dim))
        if smallest is not None and smallest[0].num_bytes > target * (1 + LANDING_TOLERANCE):
            plan, what = smallest
            raise BudgetUnreachable(
                f"{cls.registered_name}: its smallest plan ({what}) takes {plan.num_bytes:,} bytes, "
                f"more than {target:,.0f}"
            )
        return dim, config.model_copy(update={"budget": budget})

    @classmethod
    def smallest_plan(
        cls, fields: list[FieldInfo], dim: int, config: SearcherConfig
    ) -> tuple[EmbeddingPlan, str] | None:
        """The plan of fewest bytes this method can reach and what it is in words, or ``None`` when the
        method has no floor above zero (:meth:`for_budget` refuses a budget below it)."""
        return None

    @classmethod
    def training_memory(cls, fields: list[FieldInfo], dim: int, config: SearcherConfig) -> MethodMemory:
        """What training this method holds in memory, computed without building it (so a run too large
        for the machine is refused before it allocates). Default: one ``n x d`` float32 table."""
        return MethodMemory(tables=uniform_bytes(fields, dim))

    @classmethod
    def lighter_options(cls, dim: int, config: SearcherConfig) -> list[dict[str, Any]]:
        """Option changes that make this method train in less memory, lightest last (what a refused run
        offers, each estimated by :meth:`training_memory`); default: none."""
        return []

    def table_specs(self) -> list[TableSpec]:
        """Raw tables this method trains; default: one ``n x d`` table holding every field. Their
        ``field_ids`` name columns of :meth:`lookup_ids`."""
        return [TableSpec("all", tuple(range(self.num_fields)), tuple(self.vocab_sizes), self.dim, self.init_std)]

    @property
    def num_lookup_fields(self) -> int:
        """Columns of :meth:`lookup_ids`, the ids the lookup reads; default: one per field."""
        return self.num_fields

    def lookup_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """ids int [B, F] -> the rows the lookup reads, int64 [B, :attr:`num_lookup_fields`]: column ``j`` is
        a row of the share of column ``j`` in its table (:meth:`table_specs`). Default: the ids themselves; a
        method whose ids share rows maps them here (hashed buckets; a quotient and a remainder column)."""
        return ids

    @abstractmethod
    def forward(self, raw: RawEmbeddings, ids: torch.Tensor) -> Embedded: ...

    def optimizer_groups(self) -> list[dict[str, Any]]:
        """Searcher parameters that need their own optimizer settings, as torch param groups
        (``{"params": [...], "lr": ...}``); settings a group leaves out, and every other searcher
        parameter, follow ``train``'s (lr, weight_decay)."""
        return []

    def stages(self) -> tuple[Stage, ...]:
        """The method's training stages, in order; default: one stage that patience may end."""
        return (Stage("train"),)

    def model_input_widths(self) -> list[int] | None:
        """Per-field widths a concat->MLP model may compact its first layer to before export (after a cut);
        ``None`` keeps the model as trained."""
        return None

    def report(self, lookup: Lookup) -> dict[str, Any]:
        """JSON-able method details merged into ``result.json`` under ``"searcher"``."""
        return {}

    def schedule_warnings(self, epochs: float) -> list[str]:
        """What the method's own schedules cannot do when each stage trains at most ``epochs`` epochs
        (``train.epochs``, fewer where ``train.max_steps`` ends a stage first), e.g. a pull that would start
        after its search has ended; the trainer warns with each before training. Default: nothing."""
        return []

    # ------------------------------------------------------------------ hooks: the only state changes
    def start_stage(self, stage: Stage, lookup: Lookup) -> None:
        """Before ``stage``'s first step (after a rewind): apply a cut, a mask, freeze sizes..."""

    def on_step(self, step: int, lookup: Lookup) -> None:
        """After every optimizer step (schedules, controllers); ``step`` counts from 0 within the stage."""

    def on_evaluation(self, stage: Stage, lookup: Lookup) -> None:
        """At each validation evaluation of ``stage``, before :meth:`metrics` is logged (a scheduled
        measurement, a target reached, a size recorded for the stability check)."""

    def end_stage(self, stage: Stage, lookup: Lookup) -> None:
        """After ``stage``, with the weights it hands on loaded (complete a mask, cut at the end)."""

    # ------------------------------------------------------------------ several processes
    def shard(self, lookup: Lookup) -> None:
        """Called on every rank (a collective) once ``lookup``'s tables are sharded, before any step, checkpoint
        or weights file is read: a method whose state follows the table rows lays it out like their shards
        here (its state then holds this rank's part). Default: nothing (the method's state is replicated:
        dense parameters that data parallelism averages, state every rank computes alike)."""

    def has_idle_parameters(self) -> bool:
        """Whether some of its trainable parameters get no gradient in some steps (a warm-up, a cut, a freeze,
        a stage that switches them off): data parallelism then looks for them at every step. Default: no."""
        return False

    def local_state_names(self) -> list[str]:
        """Names (as :meth:`named_parameters` / :meth:`named_buffers` give them) of the parameters and buffers
        that hold this rank's part only after :meth:`shard`: data parallelism neither averages nor broadcasts
        them. Default: none."""
        return []

    def gather_state(self, lookup: Lookup, dst: int = 0) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """On rank ``dst``, ``(state_dict(), state_for_checkpoint())`` as one process would hold them (whole
        tensors gathered from the ranks' parts), for an unsharded copy to export; ``None`` on the other
        ranks. Every rank must call it. Default: this rank's own (the state is replicated)."""
        if torch.distributed.get_rank() != dst:
            return None
        return self.state_dict(), self.state_for_checkpoint()

    def _batch_mean(self, total: torch.Tensor, rows: int) -> torch.Tensor:
        """``total`` (a sum over a batch of ``rows`` rows) as the batch's mean (see :attr:`batch_rows`)."""
        return total / (rows if self.batch_rows is None else self.batch_rows)

    # ------------------------------------------------------------------ queries
    def stage_done(self, stage: Stage) -> bool:
        """Read after each evaluation: True ends ``stage`` now (e.g. the last sparsity target is reached)."""
        return False

    def metrics(self, lookup: Lookup) -> dict[str, float]:
        """Scalars logged at each evaluation (e.g. sparsity of the whole table); read-only."""
        return {}

    def state_for_checkpoint(self) -> dict[str, Any]:
        """Non-parameter state a resumed run needs (masks, controller state); must be torch-saveable."""
        return {}

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state_for_checkpoint`."""

    @abstractmethod
    def plan(self, lookup: Lookup) -> EmbeddingPlan:
        """The learned sizes."""

    def export(self, lookup: Lookup) -> SlimEmbedding:
        """The slim embedding; default: one dense table of full width per field group."""
        plan = self.plan(lookup)
        weight = torch.cat([lookup.field_weight(f).detach() for f in range(self.num_fields)])
        group = DenseGroup(tuple(range(self.num_fields)), tuple(self.vocab_sizes), weight, None, self.dim)
        return SlimEmbedding(plan, [group])

    def _plan(self, field_dims: list[int], **kwargs: Any) -> EmbeddingPlan:
        return fields_plan(type(self).registered_name, self.fields, self.dim, field_dims, **kwargs)

    registered_name: ClassVar[str] = "?"
