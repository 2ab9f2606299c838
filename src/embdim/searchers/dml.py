"""``dml``: Dimension Mask Layer (Saket, Ihara, Sharma, Kalim; arXiv 2510.15308, 2025).

**[paper]** A layer right after the embedding lookup lets only the first ``N`` dimensions of each
embedding through; ``N`` is found in one training run; afterwards the layer is removed and each
table is cut to its first ``N`` columns.

**[ours]** (the paper does not give the parameterisation; ``../shared/docs/METHODS.md`` section 2;
every choice is a knob of :class:`DMLConfig`):

- One learnable length per field (``length_per: field``), or one per group of fields that share a
  table (``length_per: table``): ``N_g = 1 + (d - 1) * sigmoid(length_lr_scale * theta_g)``,
  initialised ``init_gap`` below ``d`` (every dimension kept at step 0). ``length_lr_scale``
  multiplies the parameter inside the sigmoid: with Adam, whose step on ``theta`` is about ``lr``
  whatever the gradient's size, it makes the lengths move ``length_lr_scale`` times faster than the
  rest of the model without a separate optimizer group.
- ``warmup_steps``: the lengths stay frozen (and the penalty off) while the model first learns, so
  lengths are judged on embeddings that already carry information ("starting N small starves
  leading dimensions"; shrinking before anything is learned does much the same).
- Soft prefix mask ``m_fj = sigmoid((N_f - j + 0.5) / tau)``, ``j = 1..d``, ``tau`` annealed from
  ``tau_start`` to ``tau_end`` over ``anneal_steps`` after the warm-up (``temperature_schedule``). With ``hard_mask``
  (default) the forward pass uses ``1[m_fj >= 0.5] = 1[j <= round(N_f)]`` and the backward pass the
  soft mask's gradient (straight-through), so the searched model already predicts exactly like the
  cut one.
- Size penalty ``lambda * sum_f w_f N_f / d`` with ``w_f = n_f / sum n`` (``penalty_weights:
  memory``: the penalty is lambda times the kept share of table memory) or ``w_f = 1 / F``
  (``dims``: the mean kept share of dimensions).
- Budget mode (``budget``): a PI controller (``controller_kp``, ``controller_ki``) sets a signed
  lambda after every step from the relative error of the kept memory share (continuous lengths) to
  the target, i.e. dual ascent on "size = target"; a negative lambda regrows lengths that went too
  far (masked dimensions get no task gradient, so nothing else would);
  at the cut, ``repair_budget`` moves single dimensions of the fields nearest their rounding
  threshold if the rounded sizes still miss the target by more than ``budget_tolerance``.
- The search stage ends when the kept byte share of the rounded widths has moved by at most
  ``stable_tolerance`` over ``stable_evals`` evaluations after ``min_search_steps`` (and, with a
  budget, the continuous lengths are on target), or after ``max_search_steps``; validation
  patience cannot end it, and its last state (not its best-AUC step, which would undo the
  shrinking) is what is cut.
- Cut (start of the ``finetune`` stage): ``N_f* = round(N_f)`` (the hard mask's width, where the
  soft mask crosses 0.5), lengths frozen, the penalty off; ``finetune_max_steps`` bounds the
  fine-tune (0: no fine-tune stage, the cut happens at the end of the search).
- ``finetune_from``: the fine-tune continues from the search's last weights (``search``), or is a
  retraining of the cut model from the step-0 weights (``initial``, lottery-ticket style, as PEP
  retrains): the search's weights have already fit the training data while the controller moved
  the sizes, so a model that only fine-tunes them may start overfit. With ``initial`` the widths are
  cut at the end of the search and kept across the rewind. ``search`` is the default [ours]: on the
  shipped sets retraining wins only where the search's weights overfit, and at low budgets it can
  collapse where the fine-tune does not (BENCHMARKS.md, "Retrained from the step-0 weights").
- Export: one dense table per distinct width holding each field's first ``N_f*`` columns,
  zero-padded back to ``d`` at lookup (dot products unchanged). For concat -> MLP models
  (DeepFM, AutoInt+) :meth:`embdim.models.base.CTRModel.compact_inputs` drops the first dense
  layer's input columns that only saw cut dimensions; :meth:`DMLSearcher.model_input_widths` gives
  the widths once cut when ``compact_mlp_input`` is set (the trainer applies it before export).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from embdim.budget import Budget, PenaltyController
from embdim.data.schema import FieldInfo
from embdim.lookup import DEFAULT_INIT_STD, Lookup, RawEmbeddings
from embdim.plan import EmbeddingPlan
from embdim.registry import SEARCHERS
from embdim.searchers.base import Embedded, Searcher, SearcherConfig, Stage, fields_plan
from embdim.slim import DenseGroup, SlimEmbedding

#: The soft mask's midpoint sits half a position past the length, so the 0.5 crossing is round(N).
HALF_POSITION = 0.5
#: Rounded lengths of the last evaluations kept for the stability check (more than any sensible stable_evals).
MAX_HISTORY = 64
SEARCH, FINETUNE = "search", "finetune"


class DMLConfig(SearcherConfig):
    """Options of the Dimension Mask Layer; everything but "first N dims pass" is our design [ours]."""

    length_per: Literal["field", "table"] = Field(
        "field",
        description="one learnable length per field, or one per table (fields listed together in `tables`)",
    )
    tables: list[list[str]] = Field(
        default_factory=list,
        description="with length_per=table: groups of field names sharing one table (and length); unlisted "
        "fields get their own; empty = all fields in one table (one global length)",
    )
    init_gap: float = Field(
        0.25, gt=0.0, lt=HALF_POSITION, description="initial length is d - init_gap (< 0.5: every dim kept)"
    )
    length_lr_scale: float = Field(
        10.0, gt=0.0, description="multiplier of the length parameter inside the sigmoid (its speed under Adam)"
    )
    hard_mask: bool = Field(True, description="forward with the hard prefix mask, soft gradient (straight-through)")
    warmup_steps: int = Field(
        0,
        ge=0,
        description="search steps with frozen lengths and no penalty first, so the lengths are judged on "
        "embeddings that already carry information",
    )
    tau_start: float = Field(1.0, gt=0.0, description="initial temperature of the soft mask (in dimensions)")
    tau_end: float = Field(0.2, gt=0.0, description="final temperature of the soft mask")
    anneal_steps: int = Field(500, ge=1, description="steps from tau_start to tau_end")
    temperature_schedule: Literal["exponential", "linear", "constant"] = Field(
        "exponential", description="how tau goes from tau_start to tau_end (constant: tau_start throughout)"
    )
    penalty: float = Field(0.01, ge=0.0, description="size-penalty weight lambda (with a budget: its starting value)")
    penalty_weights: Literal["memory", "dims"] = Field(
        "memory", description="weight fields by their table memory (n_f / sum n) or equally (1 / F)"
    )
    budget: Budget | None = Field(
        None, description="memory target the controller steers the cut to; None: fixed lambda"
    )
    budget_tolerance: float = Field(
        0.1, gt=0.0, lt=1.0, description="relative distance to the target that counts as landed"
    )
    controller_kp: float = Field(
        5.0, ge=0.0, description="proportional gain: lambda per unit of relative size error (budget mode)"
    )
    controller_ki: float = Field(
        0.002, ge=0.0, description="integral gain: lambda added per step per unit of relative size error"
    )
    penalty_limit: float = Field(
        10.0, gt=0.0, description="the controller keeps lambda in [-penalty_limit, penalty_limit]"
    )
    repair_budget: bool = Field(
        True, description="at the cut, move single dims to land on the budget if rounding missed it"
    )
    min_search_steps: int | None = Field(
        None, ge=0, description="the search may not end before this step; default warmup_steps + anneal_steps"
    )
    max_search_steps: int | None = Field(None, ge=1, description="end the search after this many steps")
    stable_evals: int = Field(
        2, ge=1, le=MAX_HISTORY - 1, description="evaluations with a settled kept size that end the search"
    )
    stable_tolerance: float = Field(
        0.01,
        ge=0.0,
        description="kept byte share (rounded widths) moving at most this much over stable_evals evaluations "
        "counts as settled (tiny tables may still flip a dimension: they weigh nothing)",
    )
    compact_mlp_input: bool = Field(
        True,
        description="after the cut, concat -> MLP models drop the first dense layer's input columns that only "
        "saw cut dimensions (model.compact_inputs; applied by the trainer through model_input_widths)",
    )
    finetune_from: Literal["search", "initial"] = Field(
        "search",
        description="the fine-tune starts from the search's last weights, or retrains the cut model from the "
        "step-0 weights (lottery-ticket style)",
    )
    finetune_max_steps: int | None = Field(
        None, ge=0, description="bound of the fine-tune after the cut; 0 = no fine-tune; None = train.epochs/patience"
    )

    @model_validator(mode="after")
    def _check(self) -> DMLConfig:
        if self.tables and self.length_per != "table":
            raise ValueError("tables is only used with length_per=table")
        return self


@SEARCHERS.register("dml")
class DMLSearcher(Searcher):
    """Learned per-field prefix lengths, cut into hard per-field table widths.

    ``forward(raw, ids)``: raw vectors ``[B, F, d]`` (one ``n x d`` table) times the prefix mask
    ``[F, d]`` -> ``[B, F, d]`` with exact zeros after each field's kept prefix.
    """

    Config = DMLConfig
    steers_to_budget = True
    shardable = True  # its lengths and controller are replicated: every rank computes them alike

    def __init__(self, fields: list[FieldInfo], dim: int, config: DMLConfig, init_std: float = DEFAULT_INIT_STD):
        super().__init__(fields, dim, config, init_std)
        self.config: DMLConfig = config
        group_of = self._length_groups(config)
        num_groups = int(max(group_of)) + 1
        self.register_buffer("group_of_field", torch.tensor(group_of, dtype=torch.long), persistent=False)
        # theta with N = d - init_gap; d = 1 has nothing to search (N is 1 whatever theta is)
        share = (dim - 1 - config.init_gap) / (dim - 1) if dim > 1 else HALF_POSITION
        theta0 = math.log(share / (1.0 - share)) / config.length_lr_scale
        self.theta = nn.Parameter(torch.full((num_groups,), theta0))
        self.register_buffer("positions", torch.arange(1, dim + 1, dtype=torch.float32), persistent=False)
        vocab = torch.tensor(self.vocab_sizes, dtype=torch.float32)
        memory_share = vocab / vocab.sum()
        weights = memory_share if config.penalty_weights == "memory" else torch.full_like(vocab, 1.0 / len(fields))
        self.register_buffer("penalty_weight", weights, persistent=False)
        self.register_buffer("memory_share", memory_share, persistent=False)
        # the cut: per-field kept widths, 0 while searching; persistent so checkpoints and best weights carry it
        self.register_buffer("cut_dims", torch.zeros(len(fields), dtype=torch.long))
        self.tau = config.tau_start
        # lambda now; the budget controller moves it (and may make it negative)
        self.controller = PenaltyController(
            config.penalty,
            "pi",
            kp=config.controller_kp,
            ki=config.controller_ki,
            bounds=(-config.penalty_limit, config.penalty_limit),
        )
        self.search_steps = 0
        self.finetune_steps = 0
        self.history: list[list[int]] = []
        self.repaired = 0
        #: with ``finetune_from: initial``, the widths cut at the end of the search (kept across the rewind)
        self.search_widths: list[int] | None = None
        self.target_share: float | None = None
        if config.budget is not None:
            self.target_share = config.budget.share(self.fields, dim)
            if not 0.0 < self.target_share <= 1.0:
                raise ValueError(
                    f"budget: target is {self.target_share:.3f} of the full tables; dml can only shrink (0, 1]"
                )

    def has_idle_parameters(self) -> bool:
        return True  # the lengths are frozen while warming up and once cut

    def _length_groups(self, config: DMLConfig) -> list[int]:
        """Group index of every field: its own (per field) or its table's (per table)."""
        F = self.num_fields
        if config.length_per == "field":
            return list(range(F))
        if not config.tables:
            return [0] * F
        names = [f.name for f in self.fields]
        group = [-1] * F
        for g, table in enumerate(config.tables):
            for name in table:
                if name not in names:
                    raise ValueError(f"tables: unknown field {name!r}; fields: {', '.join(names)}")
                if group[names.index(name)] >= 0:
                    raise ValueError(f"tables: field {name!r} is listed in more than one table")
                group[names.index(name)] = g
        next_group = len(config.tables)
        for f in range(F):
            if group[f] < 0:
                group[f], next_group = next_group, next_group + 1
        return group

    # ------------------------------------------------------------------ lengths and masks
    @property
    def is_cut(self) -> bool:
        return bool(self.cut_dims[0] > 0)

    @property
    def warming_up(self) -> bool:
        return not self.is_cut and self.search_steps < self.config.warmup_steps

    def lengths(self) -> torch.Tensor:
        """Continuous per-field lengths ``N_f`` in ``[1, d]``: float [F] (no gradient during the warm-up)."""
        theta = self.theta.detach() if self.warming_up else self.theta
        share = torch.sigmoid(self.config.length_lr_scale * theta)
        return (1.0 + (self.dim - 1) * share)[self.group_of_field]

    def rounded_lengths(self) -> list[int]:
        """Widths the hard mask keeps now (the cut widths once cut): ``round(N_f)``, F ints in ``[1, d]``."""
        if self.is_cut:
            return [int(x) for x in self.cut_dims]
        with torch.no_grad():
            return [int(x) for x in torch.floor(self.lengths() + HALF_POSITION).clamp(1, self.dim)]

    def mask(self) -> torch.Tensor:
        """The prefix mask [F, d]: 1 on the kept prefix, 0 after (straight-through soft gradient while searching)."""
        if self.is_cut:
            return (self.positions <= self.cut_dims.unsqueeze(1)).float()
        margin = self.lengths().unsqueeze(1) - self.positions + HALF_POSITION  # [F, d]
        soft = torch.sigmoid(margin / self.tau)
        if not self.config.hard_mask:
            return soft
        hard = (margin >= 0).float()
        return hard + (soft - soft.detach())

    def forward(self, raw: RawEmbeddings, ids: torch.Tensor) -> Embedded:
        return Embedded(raw.stacked() * self.mask(), self.size_penalty() if self.training else None)

    def size_penalty(self) -> torch.Tensor | None:
        """``lambda * sum_f w_f N_f / d`` while searching (``None`` once cut, while warming up, or at lambda 0)."""
        if self.is_cut or self.warming_up or self.controller.lam == 0.0:
            return None
        return self.controller.lam * (self.penalty_weight * self.lengths()).sum() / self.dim

    def kept_share(self, widths: list[int] | torch.Tensor | None = None) -> float:
        """Share of full table memory kept by ``widths`` (default: the continuous lengths)."""
        w = self.lengths().detach() if widths is None else torch.as_tensor(widths, dtype=torch.float32)
        return float((self.memory_share * w).sum() / self.dim)

    # ------------------------------------------------------------------ schedules (trainer hooks)
    def _temperature(self, step: int) -> float:
        c = self.config
        progress = min(max(step - c.warmup_steps, 0) / c.anneal_steps, 1.0)
        if c.temperature_schedule == "constant":
            return c.tau_start
        if c.temperature_schedule == "linear":
            return c.tau_start + (c.tau_end - c.tau_start) * progress
        return c.tau_start * (c.tau_end / c.tau_start) ** progress

    def on_step(self, step: int, lookup: Lookup) -> None:
        if self.is_cut:
            self.finetune_steps = step + 1
            return
        self.search_steps = step + 1
        self.tau = self._temperature(step + 1)
        if self.target_share is not None and not self.warming_up:
            # PI control of a signed multiplier on the relative size error (dual ascent on "size = target"):
            # too big -> stronger penalty; too small -> negative lambda regrows lengths, which nothing else
            # would do (cut dimensions get no task gradient once masked)
            self.controller.update((self.kept_share() - self.target_share) / self.target_share)

    def stages(self) -> tuple[Stage, ...]:
        """The search, which its controller and stability check end (its last state is what is cut), then
        the fine-tune of the cut model (none with ``finetune_max_steps=0``: the cut ends the search)."""
        search = Stage(SEARCH, patience=False, selection="last", max_steps=self.config.max_search_steps)
        if self.config.finetune_max_steps == 0:
            return (search,)
        rewind = self.config.finetune_from == "initial"
        return search, Stage(FINETUNE, max_steps=self.config.finetune_max_steps, rewind=rewind)

    def _landed(self, widths: list[int]) -> bool:
        if self.target_share is None:
            return True
        return abs(self.kept_share(widths) - self.target_share) <= self.config.budget_tolerance * self.target_share

    def on_evaluation(self, stage: Stage, lookup: Lookup) -> None:
        if stage.name == SEARCH:
            self.history = [*self.history, self.rounded_lengths()][-MAX_HISTORY:]

    def stage_done(self, stage: Stage) -> bool:
        """The search is done once the rounded sizes have settled (after ``min_search_steps``) and, with a
        budget, the continuous lengths are on target."""
        c = self.config
        if stage.name != SEARCH:
            return False
        min_steps = c.warmup_steps + c.anneal_steps if c.min_search_steps is None else c.min_search_steps
        shares = [self.kept_share(w) for w in self.history[-(c.stable_evals + 1) :]]
        stable = len(shares) == c.stable_evals + 1 and max(shares) - min(shares) <= c.stable_tolerance
        # the controller's own measure (continuous lengths): rounding a large table can keep the rounded
        # share off the target however long the search runs; the cut's repair settles that
        on_target = self.target_share is None or abs(self.kept_share() - self.target_share) <= (
            c.budget_tolerance * self.target_share
        )
        return self.search_steps >= min_steps and stable and on_target

    def start_stage(self, stage: Stage, lookup: Lookup) -> None:
        if stage.name != FINETUNE:
            return
        if self.search_widths is not None:  # the rewind reset the cut widths with every other weight
            self.cut_dims.copy_(torch.tensor(self.search_widths, dtype=torch.long))
        elif not self.is_cut:
            self.cut()

    def end_stage(self, stage: Stage, lookup: Lookup) -> None:
        if stage.name != SEARCH or self.is_cut:
            return
        if self.config.finetune_max_steps == 0:
            self.cut()
        elif self.config.finetune_from == "initial":  # cut what the search learned, before it is rewound
            self.search_widths = self.cut()

    # ------------------------------------------------------------------ the cut
    def cut(self) -> list[int]:
        """Freeze the lengths to integer widths (rounded, then budget-repaired if asked); returns them."""
        widths = self.rounded_lengths()
        if self.target_share is not None and self.config.repair_budget:
            widths = self._repair(widths)
        self.cut_dims.copy_(torch.tensor(widths, dtype=torch.long))
        return widths

    def _repair(self, widths: list[int]) -> list[int]:
        """Move one dimension at a time until the budget is met: shrink the field closest to rounding
        down (or grow the one closest to rounding up), preferring moves that do not overshoot."""
        lengths = self.lengths().detach().tolist()
        widths = list(widths)
        target, tol = self.target_share, self.config.budget_tolerance
        assert target is not None
        for _ in range(self.num_fields * self.dim):
            share = self.kept_share(widths)
            if abs(share - target) <= tol * target:
                break
            shrink = share > target
            step = -1 if shrink else 1
            movable = [f for f in range(self.num_fields) if 1 <= widths[f] + step <= self.dim]
            if not movable:
                break
            # distance of the continuous length to the threshold it would have to cross
            cost = {
                f: (lengths[f] + HALF_POSITION - widths[f]) if shrink else (widths[f] + HALF_POSITION - lengths[f])
                for f in movable
            }
            step_share = {f: float(self.memory_share[f]) / self.dim for f in movable}
            safe = [f for f in movable if abs(share + step * step_share[f] - target) < abs(share - target)]
            f = min(safe or movable, key=lambda g: (cost[g], -step_share[g]))
            widths[f] += step
            self.repaired += 1
        return widths

    def kept_widths(self) -> list[int]:
        """Per-field widths the slim tables store (what :meth:`CTRModel.compact_inputs` takes)."""
        return self.rounded_lengths()

    def model_input_widths(self) -> list[int] | None:
        """Widths for the model's :meth:`~embdim.models.base.CTRModel.compact_inputs` once cut (and
        ``compact_mlp_input``), else ``None``: the model keeps reading every dimension."""
        return self.kept_widths() if self.is_cut and self.config.compact_mlp_input else None

    # ------------------------------------------------------------------ reporting
    def metrics(self, lookup: Lookup) -> dict[str, float]:
        widths = self.rounded_lengths()
        out = {
            "dml_mean_length": float(self.lengths().detach().mean()),
            "dml_kept_share": self.kept_share(widths),
            "dml_tau": self.tau,
        }
        if not self.is_cut:
            out["dml_lambda"] = self.controller.lam
        return out

    def report(self, lookup: Lookup) -> dict[str, Any]:
        names = [f.name for f in self.fields]
        return {
            "lengths": dict(zip(names, [round(x, 4) for x in self.lengths().detach().tolist()], strict=True)),
            "widths": dict(zip(names, self.rounded_lengths(), strict=True)),
            "cut": self.is_cut,
            "kept_share": self.kept_share(self.rounded_lengths()),
            "target_share": self.target_share,
            "landed": self._landed(self.rounded_lengths()),
            "budget_repair_moves": self.repaired,
            "final_lambda": self.controller.lam,
            "final_tau": self.tau,
            "search_steps": self.search_steps,
            "finetune_steps": self.finetune_steps,
        }

    def state_for_checkpoint(self) -> dict[str, Any]:
        return {
            "tau": self.tau,
            "lambda": self.controller.lam,
            "integral": self.controller.integral,
            "search_steps": self.search_steps,
            "finetune_steps": self.finetune_steps,
            "history": [list(w) for w in self.history],
            "repaired": self.repaired,
            "search_widths": self.search_widths,
        }

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        self.tau = float(state["tau"])
        self.controller.lam = float(state["lambda"])
        self.controller.integral = float(state["integral"])
        self.search_steps = int(state["search_steps"])
        self.finetune_steps = int(state["finetune_steps"])
        self.history = [list(w) for w in state["history"]]
        self.repaired = int(state["repaired"])
        self.search_widths = state.get("search_widths")

    @classmethod
    def smallest_plan(cls, fields: list[FieldInfo], dim: int, config: SearcherConfig) -> tuple[EmbeddingPlan, str]:
        """Every field cut to one dimension (the cut keeps at least one)."""
        return fields_plan("dml", fields, dim, [1] * len(fields)), "every field cut to one dimension"

    def plan(self, lookup: Lookup) -> EmbeddingPlan:
        details = {
            "cut": self.is_cut,
            "lengths": [round(x, 4) for x in self.lengths().detach().tolist()],
            "target_share": self.target_share,
        }
        return self._plan(self.rounded_lengths(), details=details)

    def export(self, lookup: Lookup) -> SlimEmbedding:
        """One dense table per distinct width: each field's first ``N_f*`` columns, zero-padded to ``d``."""
        widths = self.rounded_lengths()
        groups = []
        for width in sorted(set(widths), reverse=True):
            fids = tuple(f for f in range(self.num_fields) if widths[f] == width)
            weight = torch.cat([lookup.field_weight(f).detach()[:, :width] for f in fids])
            groups.append(DenseGroup(fids, tuple(self.vocab_sizes[f] for f in fids), weight, None, self.dim))
        return SlimEmbedding(self.plan(lookup), groups)
