"""The searcher interface: one ``nn.Module`` per embedding-size method.

A searcher turns looked-up raw vectors into the embeddings a model reads, ``[B, F, d]``, with
exact zeros where dimensions or elements are pruned. It also owns the method's stage logic
(search, retrain, cut, collapse) through hooks the trainer calls, so there is never one model
class per training stage.

Lifecycle, as driven by :class:`embdim.train.trainer.Trainer`::

    for stage in searcher.stages:          # e.g. ("search", "retrain") for PEP
        searcher.begin_stage(stage, lookup)
        for each step: emb, penalty = searcher(raw, ids); loss = task_loss + penalty; ...
                       searcher.on_step(step, lookup)
        at each evaluation: searcher.metrics(lookup) is logged
        searcher.end_stage(stage, lookup)
    plan = searcher.plan(lookup); slim = searcher.export(lookup)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, NamedTuple

import torch
from pydantic import Field, model_validator
from torch import nn

from embdim.data.schema import FieldInfo
from embdim.lookup import DEFAULT_INIT_STD, Lookup, RawEmbeddings, TableSpec
from embdim.options import Options
from embdim.plan import FLOAT_BYTES, EmbeddingPlan
from embdim.slim import DenseGroup, SlimEmbedding


class SearcherConfig(Options):
    """Base of every searcher's options; unknown keys are an error that names the key."""


class Budget(Options):
    """A memory target for the slim embedding, shared by every method that can aim at one.

    ``kind``: ``fraction`` of the uniform model's embedding bytes, absolute ``bytes``, or
    embedding ``params``.
    """

    kind: Literal["fraction", "bytes", "params"] = Field("fraction", description="what value measures")
    value: float = Field(gt=0, description="the target: a fraction in (0, 1], or a count of bytes / parameters")

    @model_validator(mode="after")
    def _fraction_at_most_one(self) -> Budget:
        if self.kind == "fraction" and self.value > 1:
            raise ValueError(
                f"a fraction of the uniform model's bytes lies in (0, 1], got {self.value:g} "
                "(a larger model is no budget; use kind: bytes or params for absolute targets)"
            )
        return self

    def target_bytes(self, full_bytes: int, bytes_per_param: float = 4.0) -> float:
        """The target in bytes, given the uniform model's bytes (params count ``bytes_per_param`` each)."""
        if self.kind == "fraction":
            return self.value * full_bytes
        return self.value if self.kind == "bytes" else self.value * bytes_per_param

    def landed(self, plan: EmbeddingPlan, tolerance: float = 0.1) -> bool:
        """Whether ``plan`` is within ``tolerance`` (relative) of this target."""
        if self.kind == "params":
            return abs(plan.num_params - self.value) <= tolerance * self.value
        target = self.target_bytes(plan.full_bytes)
        return abs(plan.num_bytes - target) <= tolerance * target


class BudgetUnreachable(ValueError):
    """A method cannot aim at the requested memory budget (reports say so instead of substituting)."""


def uniform_dim_for_budget(fields: list[FieldInfo], dim: int, budget: Budget, tolerance: float = 0.1) -> int:
    """The uniform width whose ``n x d'`` tables land within ``tolerance`` of ``budget`` (bytes relative to
    ``n x dim``); raises :class:`BudgetUnreachable` when no integer width does."""
    rows = sum(f.vocab_size for f in fields)
    full_bytes = rows * dim * FLOAT_BYTES
    target = budget.target_bytes(full_bytes)
    best = max(1, round(target / (rows * FLOAT_BYTES)))
    landed = abs(best * rows * FLOAT_BYTES - target) <= tolerance * target
    if not landed or best > dim:
        raise BudgetUnreachable(
            f"no uniform width lands within {tolerance:.0%} of {target:,.0f} bytes "
            f"(nearest: d={best}, {best * rows * FLOAT_BYTES:,} bytes)"
        )
    return best


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
    """

    tables: int
    parameters: int = 0
    state: int = 0


class Searcher(nn.Module, ABC):
    """Base class of embedding-size methods.

    Args:
        fields: the categorical fields (vocabulary sizes and training counts).
        dim: output width ``d`` of every field's embedding.
        config: the method's options (its own :class:`SearcherConfig` subclass).
        init_std: normal-init standard deviation of the raw tables.

    ``forward(raw, ids)``:
        raw: the looked-up raw vectors of the tables declared by :meth:`table_specs`.
        ids: int64 [B, F], per-field ids (value-level methods index their own state with them).
        returns: :class:`Embedded`: float [B, F, d] and the penalty of this batch (``None`` outside
        training, or for methods without one).
    """

    Config: ClassVar[type[SearcherConfig]] = SearcherConfig
    stages: ClassVar[tuple[str, ...]] = ("train",)

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
        """``(dim, config)`` with which this method aims at ``budget`` (used by ``embdim bench``).

        Default: methods whose Config has a ``budget`` option get it set; others cannot aim at a budget
        and raise :class:`BudgetUnreachable`. Methods that meet a budget by their width (``full``, ``mlet``)
        or by a scale (``mde``) override this.
        """
        if "budget" in type(config).model_fields:
            return dim, config.model_copy(update={"budget": budget})
        raise BudgetUnreachable(f"{cls.registered_name} has no way to aim at a memory budget")

    @classmethod
    def training_memory(cls, fields: list[FieldInfo], dim: int, config: SearcherConfig) -> MethodMemory:
        """What training this method holds in memory, computed without building it (so a run too large
        for the machine is refused before it allocates). Default: one ``n x d`` float32 table."""
        return MethodMemory(tables=sum(f.vocab_size for f in fields) * dim * FLOAT_BYTES)

    def table_specs(self) -> list[TableSpec]:
        """Raw tables this method trains; default: one ``n x d`` table holding every field."""
        return [TableSpec("all", tuple(range(self.num_fields)), tuple(self.vocab_sizes), self.dim, self.init_std)]

    @abstractmethod
    def forward(self, raw: RawEmbeddings, ids: torch.Tensor) -> Embedded: ...

    def optimizer_groups(self) -> list[dict[str, Any]]:
        """Searcher parameters that need their own optimizer settings, as torch param groups
        (``{"params": [...], "lr": ...}``); settings a group leaves out, and every other searcher
        parameter, follow ``train``'s (lr, weight_decay)."""
        return []

    def early_stopping(self, stage: str) -> bool:
        """Whether validation patience may end ``stage`` (False while a search must reach its target)."""
        return True

    def stage_complete(self, stage: str, lookup: Lookup) -> bool:
        """Checked at each evaluation: True ends ``stage`` now (e.g. the last sparsity target is reached)."""
        return False

    def selection(self, stage: str) -> Literal["best", "last"]:
        """Weights a stage hands on: its ``best`` validation checkpoint, or its ``last`` state (for search
        stages whose sizes keep shrinking, the best-AUC step would undo the search)."""
        return "best"

    def model_input_widths(self) -> list[int] | None:
        """Per-field widths a concat->MLP model may compact its first layer to before export (after a cut);
        ``None`` keeps the model as trained."""
        return None

    def report(self, lookup: Lookup) -> dict[str, Any]:
        """JSON-able method details merged into ``result.json`` under ``"searcher"``."""
        return {}

    def rewinds_before(self, stage: str) -> bool:
        """Whether every weight is reset to its step-0 value before ``stage`` (lottery-ticket retraining)."""
        return False

    def begin_stage(self, stage: str, lookup: Lookup) -> None:
        """Called before each stage's first step (rewind, cut, collapse...)."""

    def end_stage(self, stage: str, lookup: Lookup) -> None:
        """Called after each stage, with the stage's best weights loaded."""

    def on_step(self, step: int, lookup: Lookup) -> None:
        """Called after every optimizer step (schedules, controllers); ``step`` counts from 0."""

    def metrics(self, lookup: Lookup) -> dict[str, float]:
        """Scalars logged at each evaluation (e.g. sparsity of the whole table)."""
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
        return EmbeddingPlan(
            method=type(self).registered_name,
            field_names=[f.name for f in self.fields],
            vocab_sizes=self.vocab_sizes,
            dim=self.dim,
            field_dims=field_dims,
            **kwargs,
        )

    registered_name: ClassVar[str] = "?"
