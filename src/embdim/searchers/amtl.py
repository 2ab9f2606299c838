"""``amtl``: Adaptively-Masked Twins-based Layer (Yan et al., CIKM 2021, arXiv 2108.11513).

Every feature value ``i`` keeps a prefix of ``k_i`` of the ``d`` dimensions of its embedding,
chosen from the value's training frequency by two small mask networks. No public code exists;
METHODS.md section 3 tags the mechanism **[recon]** (reconstructed from write-ups) except the hot
start **[paper]**. What this module adds is tagged **[ours]**.

Mechanism, per looked-up value ``i`` of field ``f`` (never a pass over the vocabulary per step):

- frequency features ``s_i`` [3] from the training split (:func:`frequency_features`, [recon]):
  log count normalised within the field, normalised tied rank within the field, log count
  normalised over all fields [ours]. OOV (id 0) and unseen values get frequency 0
  (``oov_frequency``).
- twins [recon]: ``h_i = a_i * AML_h(s_i) + (1 - a_i) * AML_l(s_i)``, ``a_i`` = the normalised log
  count (grows with frequency), each AML a ``3 -> hidden -> d`` ReLU MLP with its own weights, one
  pair shared by all fields (a pair per field was tried and removed: it lost AUC, BENCHMARKS.md,
  AMTL "every variant"); ``h_i`` holds one logit per candidate length.
- ``t_hat = softmax(logit_scale * h_i / temperature)``; the forward pass uses the one-hot of the
  argmax with ``t_hat``'s gradient (straight-through), mask ``m_ij = sum_{k >= j} t_ik``: an exact
  0/1 prefix of length ``k_i = argmax + min_length``.
- hot start [paper]: the last layer's bias favours length ``d`` by ``init_margin`` and its weights
  start tiny, so a layer added to a trained ``full`` model (``train.init_from``) keeps every
  embedding intact at step 0.

Size control (off by default, as in the paper, where the size emerges from the task loss) [ours]:
``size_penalty`` lambda adds ``lambda * E[k]/d`` averaged as an unbiased estimate over the
*vocabulary* (each occurrence weighted by ``N_f / count_i``: memory is paid once per value, not once
per occurrence); ``budget`` replaces the fixed lambda by a controller that raises or lowers it until
the ragged bytes reach the target. Sizes are then frozen at the first step that lands within the
target; since all values with one count switch size together, that step may jump below the target,
and the most frequent of the classes that just shrank get their previous size back while the bytes
stay within it (:meth:`AMTLSearcher._land`).

Low budgets [ours] (issue 22: with the paper's shortest length of 1 the search collapsed or stopped
short of low budgets; BENCHMARKS.md, "Low budgets: ``min_length`` 0"). ``min_length`` is the shortest
candidate: 0 by default, so that a value may be dropped and embed to zeros, or 1 as in the paper (``d``
candidates); below one value per row of the uniform bytes only 0 can land, and a budget under the fewest
bytes the candidates allow is refused before training (:meth:`AMTLSearcher.smallest_plan`).
``logit_gain`` standardises each value's logits over the candidates before the softmax: Adam's
scale-free steps grow the logits without bound, and once the softmax saturates neither the penalty nor
the task can move a size. A budgeted search whose penalty weight sits at its upper bound while the bytes
stop falling for ``budget_stall_evals`` evaluations ends there, not landed, and the report says why
(``budget_landed``, ``budget_note``).

Stages [ours]: ``search`` (mask networks train jointly with everything else), then, with
``finetune`` on, ``finetune``: the sizes are frozen at the end of search and the model trains on
with that fixed mask and ordinary best-validation selection (so selection never undoes a size);
``finetune_from: initial`` retrains it from the step-0 weights instead (lottery style, as DML's option).
Slim export: ragged rows ``e_i[:k_i]`` plus a row index (:class:`embdim.slim.RaggedGroup`): since
sizes follow frequency and ids are numbered by frequency, one entry per run of equal-size rows is
usually far smaller than one offset per row.

Ablations the paper reports on: ``twins=false`` (one shared mask network) and
``straight_through=false`` (the soft mask ``m`` in the forward pass; the hard cut then changes
predictions, which ``finetune`` repairs and the stage summary's ``valid_auc_at_start`` measures).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from embdim.budget import Budget, PenaltyController
from embdim.data.schema import FieldInfo
from embdim.lookup import DEFAULT_INIT_STD, Lookup, RawEmbeddings
from embdim.measures import spearman
from embdim.plan import EmbeddingPlan
from embdim.registry import SEARCHERS
from embdim.searchers.base import Embedded, MethodMemory, Searcher, SearcherConfig, Stage, fields_plan
from embdim.slim import RaggedGroup, SlimEmbedding
from embdim.storage import FLOAT_BYTES, INT64_BYTES, field_bounds, ragged_index

NUM_FREQ_FEATURES = 3
"""Frequency features per value: log count (field-normalised), tied rank, log count (globally normalised)."""
BUDGET_LOG_STEP_CAP = 1.0
"""The controller's relative error is clipped to [-cap, cap] before it moves log(lambda)."""
PENALTY_WEIGHT_BOUNDS = (1e-6, 1e4)
"""The budget controller keeps lambda within these bounds."""
STALL_PROGRESS = 0.001
"""The stall check counts an evaluation as progress when the bytes fall by more than this share."""
SEARCH, FINETUNE = "search", "finetune"


class AMTLConfig(SearcherConfig):
    """Options of ``amtl``; the defaults are the paper's setting (no size penalty)."""

    hidden: int = Field(16, ge=1, description="hidden width of each mask network")
    twins: bool = Field(True, description="two mask networks (high/low frequency) mixed by frequency; false: one")
    straight_through: bool = Field(
        True, description="forward uses the hard one-hot mask with the soft gradient; false: soft mask (ablation)"
    )
    temperature: float = Field(1.0, gt=0, description="softmax temperature T of the length logits")
    logit_gain: float | None = Field(
        None,
        gt=0,
        description="null: softmax(h / T) of the networks' logits h; a number G: each value's logits are "
        "standardised over the candidate lengths and multiplied by G first, which bounds their spread and so "
        "how far the softmax can saturate [ours]",
    )
    min_length: int = Field(
        0,
        ge=0,
        description="the shortest candidate length: 0 (a value may be dropped entirely and embed to zeros; "
        "needed below one value per row of the uniform bytes, and no worse above: BENCHMARKS, AMTL low "
        "budgets) or 1 (every value keeps a dimension; the paper's d candidates) [ours]",
    )
    logit_scale: float = Field(
        10.0,
        gt=0,
        description="multiplies the networks' output: with Adam's scale-free steps this is the mask "
        "networks' learning-rate multiplier relative to train.lr [ours]",
    )
    init_margin: float = Field(
        3.0, gt=0, description="at init the full-length logit exceeds every other by this (hot start)"
    )
    init_profile: Literal["ramp", "step"] = Field(
        "ramp",
        description="initial length logits: ramp (rising linearly to init_margin at d, so a shrinking "
        "size steps down one length at a time) or step (only d gets init_margin) [ours]",
    )
    init_out_std: float = Field(
        1e-4, gt=0, description="std of the output layer's initial weights (small: argmax stays at d)"
    )
    oov_frequency: Literal["zero", "count"] = Field(
        "zero", description="frequency features of id 0 (OOV): zero, or its training count"
    )
    size_penalty: float = Field(0.0, ge=0, description="lambda of the size penalty (0: off, as in the paper)")
    penalty_weighting: Literal["memory", "occurrence"] = Field(
        "memory",
        description="memory: each value counts once (occurrences weighted by N/count); occurrence: per lookup",
    )
    budget: Budget | None = Field(None, description="memory target of the ragged slim embedding; null: none")
    budget_rate: float = Field(0.2, gt=0, description="controller step of log(lambda) per unit relative error")
    budget_interval: int = Field(5, ge=1, description="steps between controller updates")
    budget_initial_penalty: float = Field(0.01, gt=0, description="lambda the controller starts from")
    budget_tolerance: float = Field(0.02, ge=0, description="search ends once bytes <= target * (1 + tolerance)")
    budget_stall_evals: int = Field(
        3,
        ge=1,
        description="a search whose penalty weight is at its upper bound ends, not landed, after this many "
        "evaluations without new lowest bytes [ours]",
    )
    finetune: bool = Field(True, description="a second stage that trains with the sizes frozen [ours]")
    finetune_from: Literal["search", "initial"] = Field(
        "search",
        description="the fine-tune continues from the search's last weights, or retrains the model with the "
        "frozen sizes from the step-0 weights (lottery-ticket style, as DML's option) [ours]",
    )


def frequency_features(counts: np.ndarray, oov_count: bool, global_max: float | None = None) -> np.ndarray:
    """Frequency features of one field's values.

    Args:
        counts: int [n_f] training counts (id 0 = OOV).
        oov_count: keep id 0's count; otherwise OOV has frequency 0.
        global_max: the largest count over all fields (default: this field's).
    Returns:
        float32 [n_f, 3], all in [0, 1] and 0 for unseen values: ``log1p(c) / log1p(c_max)`` (within
        the field), ``1 - rank / (n_f - 1)`` with the tied rank ``rank = #{values with a larger count}``,
        and ``log1p(c) / log1p(global_max)`` (across fields [ours]: without it a shared network sees
        the rarest value of a 3-value field exactly like the rarest of 4,000 items).
    """
    c = np.asarray(counts, dtype=np.float64).copy()
    if not oov_count and len(c):
        c[0] = 0.0
    c_max = max(float(c.max(initial=0.0)), 1.0)
    log_norm = np.log1p(c) / math.log1p(c_max)
    # tied rank: how many values of the field are strictly more frequent
    order = np.sort(c)[::-1]
    rank = np.searchsorted(-order, -c, side="left")
    rank_norm = 1.0 - rank / max(len(c) - 1, 1)
    rank_norm[c == 0] = 0.0  # unseen values are the least frequent whatever their position
    log_global = np.log1p(c) / math.log1p(max(global_max or c_max, c_max))
    return np.stack([log_norm, rank_norm, log_global], axis=1).astype(np.float32)


@SEARCHERS.register("amtl")
class AMTLSearcher(Searcher):
    """Per-value prefix lengths from frequency, by twin mask networks (see the module docstring).

    Values of a field with the same training count have the same features, hence the same size: they
    form one *frequency class*. Sizes over the whole vocabulary (plan, budget controller) are computed
    once per class, so they cost O(classes), not O(vocabulary).

    Buffers (not persistent: derived from ``fields`` and rebuilt identically):
        class_features: float [U, 3] frequency features of each class (classes of all fields back to back).
        class_alpha: float [U] mixing weight of the high-frequency network (normalised log count).
        class_size: int64 [U] number of ids in each class.
        id_class: int64 [n] class of every id (fields back to back).
        occurrence_weight: float [n] penalty weight per occurrence, ``N_f / (count_i * n)``.
    """

    Config = AMTLConfig
    steers_to_budget = True
    shardable = True  # mask networks data-parallel; the per-id frequency inputs are derived on every rank

    @classmethod
    def training_memory(cls, fields: list[FieldInfo], dim: int, config: SearcherConfig) -> MethodMemory:
        """The table, and per id: its class (int64), penalty weight (float32), frozen length and the
        lengths computed over the vocabulary (int64 each), on every process; the mask networks are negligible."""
        n = sum(f.vocab_size for f in fields)
        per_id = n * (INT64_BYTES + FLOAT_BYTES + 2 * INT64_BYTES)
        return MethodMemory(tables=n * dim * FLOAT_BYTES, state=per_id, replicated=per_id)

    def __init__(
        self, fields: list[FieldInfo], dim: int, config: AMTLConfig, init_std: float = DEFAULT_INIT_STD
    ) -> None:
        super().__init__(fields, dim, config, init_std)
        self.config: AMTLConfig = config
        missing = [f.name for f in fields if f.counts is None]
        if missing:
            raise ValueError(f"amtl needs training counts (FieldInfo.counts) for every field; missing for {missing}")
        feats, weights, id_class, class_size, class_start = [], [], [], [], [0]
        n_total = sum(self.vocab_sizes)
        global_max = max(float(f.counts.max(initial=0)) for f in fields if f.counts is not None)
        for f in fields:
            assert f.counts is not None
            per_id = frequency_features(f.counts, config.oov_frequency == "count", global_max)
            uniq, first, inverse, sizes = np.unique(
                per_id[:, 0], return_index=True, return_inverse=True, return_counts=True
            )
            feats.append(per_id[first])
            id_class.append(inverse.reshape(-1) + class_start[-1])
            class_size.append(sizes)
            class_start.append(class_start[-1] + len(uniq))
            rows = max(int(f.counts.sum()), 1)
            # unbiased per-occurrence weight of a vocabulary average (count 0 never occurs in training)
            weights.append(rows / (np.maximum(f.counts, 1) * n_total))
        features = torch.from_numpy(np.concatenate(feats))
        self.register_buffer("class_features", features, persistent=False)
        self.register_buffer("class_alpha", features[:, 0].clone(), persistent=False)
        self.register_buffer("class_size", torch.from_numpy(np.concatenate(class_size)), persistent=False)
        self.register_buffer("id_class", torch.from_numpy(np.concatenate(id_class).astype(np.int64)), persistent=False)
        self.class_start = class_start  # field f owns classes class_start[f] : class_start[f + 1]
        self.register_buffer(
            "occurrence_weight", torch.from_numpy(np.concatenate(weights).astype(np.float32)), persistent=False
        )
        self.register_buffer("offsets", torch.from_numpy(field_bounds(self.vocab_sizes)[:-1]), persistent=False)
        # ids in a row with one class form a segment (never crossing a field); sizes change only
        # between segments, so the ragged index's runs are counted over segments, not ids
        all_classes = np.concatenate(id_class)
        field_start = np.zeros(n_total, dtype=bool)
        field_start[np.asarray(self.offsets)] = True
        segment = field_start.copy()
        segment[1:] |= all_classes[1:] != all_classes[:-1]
        self.register_buffer("segment_class", torch.from_numpy(all_classes[segment].astype(np.int64)), persistent=False)
        self.register_buffer("segment_field_start", torch.from_numpy(field_start[segment]), persistent=False)
        if config.min_length > dim:
            raise ValueError(f"amtl: method.min_length={config.min_length} exceeds the embedding width {dim}")
        num = self.num_lengths
        nets = 2 if config.twins else 1
        h = config.hidden
        w1 = torch.empty(nets, NUM_FREQ_FEATURES, h)
        nn.init.normal_(w1, std=math.sqrt(2.0 / NUM_FREQ_FEATURES))  # He init for the ReLU layer
        self.w1 = nn.Parameter(w1)  # [nets, 3, h]
        self.b1 = nn.Parameter(torch.zeros(nets, h))
        self.w2 = nn.Parameter(torch.randn(nets, h, num) * config.init_out_std)  # [nets, h, lengths]
        b2 = torch.zeros(nets, num)
        if config.init_profile == "ramp" and num > 1:
            b2[...] = torch.linspace(0.0, config.init_margin, num) / config.logit_scale
        else:
            b2[..., -1] = config.init_margin / config.logit_scale
        # argmax = full length d at init, whatever the frequency: a hot start keeps every embedding intact
        self.b2 = nn.Parameter(b2)
        self.stage = SEARCH
        # lambda of the size penalty: fixed, or steered by the budget controller (multiplicative, positive)
        self.controller = PenaltyController(
            config.size_penalty if config.budget is None else config.budget_initial_penalty,
            "log",
            kp=config.budget_rate,
            bounds=PENALTY_WEIGHT_BOUNDS,
            error_cap=BUDGET_LOG_STEP_CAP,
        )
        self.frozen_lengths: torch.Tensor | None = None  # [n] once the sizes are frozen
        self.landed = False  # whether the search's sizes reached the budget
        self._stall_note: str | None = None  # why a budgeted search ended without landing (it stalled)
        self._lowest_ratio: float | None = None  # the stall check's lowest bytes ratio at the weight's bound
        self._stalled_evals = 0
        self.last_bytes_ratio: float | None = None
        self._previous_class_lengths: torch.Tensor | None = None  # sizes before the last step (for landing)

    def has_idle_parameters(self) -> bool:
        return True  # the mask networks are not used once the sizes are frozen

    # ------------------------------------------------------------------ mask
    def _rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Global row of every per-field id: [B, F] -> [B, F]."""
        return ids + self.offsets

    @property
    def min_length(self) -> int:
        """The shortest candidate length (``config.min_length``)."""
        return self.config.min_length

    @property
    def num_lengths(self) -> int:
        """Candidate lengths ``min_length..d``, one logit each."""
        return self.dim - self.min_length + 1

    def length_logits(self, classes: torch.Tensor) -> torch.Tensor:
        """Logits of the candidate lengths ``min_length..d``, already multiplied by ``logit_scale``.

        Args:
            classes: int64 [N] frequency classes (the training forward passes the batch's distinct ones).
        Returns:
            float [N, d - min_length + 1].
        """
        # centred to [-1, 1]: rare values (features near 0) would otherwise feed ~0 into the ReLU layer
        # and reach the output only through its bias, shared with every other value
        s = 2.0 * self.class_features[classes] - 1.0  # [N, 3]
        hidden = torch.relu(torch.einsum("ni,tih->tnh", s, self.w1) + self.b1.unsqueeze(1))
        out = torch.einsum("tnh,thd->tnd", hidden, self.w2) + self.b2.unsqueeze(1)
        if self.config.twins:  # out: [nets, N, d]
            a = self.class_alpha[classes].unsqueeze(-1)  # grows with the value's normalised frequency
            out = a * out[0] + (1.0 - a) * out[1]
        else:
            out = out[0]
        return out * self.config.logit_scale

    def soft_lengths(self, logits: torch.Tensor) -> torch.Tensor:
        """``t_hat = softmax(logits / T)`` [..., lengths]: the relaxed one-hot of the length.

        With ``logit_gain`` G, ``softmax(G * (h - mean h) / std h / T)``: Adam's scale-free steps grow the
        logits without bound, and a softmax over logits far apart has a gradient below Adam's epsilon, so
        that neither the size penalty nor the task could move a size any more; standardised logits keep
        their spread, and the argmax, whatever the networks' scale."""
        if self.config.logit_gain is not None:
            centred = logits - logits.mean(-1, keepdim=True)
            logits = self.config.logit_gain * centred / centred.square().mean(-1, keepdim=True).add(1e-12).sqrt()
        return torch.softmax(logits / self.config.temperature, dim=-1)

    def mask(self, ids: torch.Tensor) -> torch.Tensor:
        """The mask applied to the embeddings of ``ids`` [B, F]: float [B, F, d].

        Straight-through (default) or frozen: an exact 0/1 prefix. Soft (ablation): ``sum_{k>=j} t_hat_k``.
        """
        return self._mask_and_soft(ids)[0]

    def _mask_and_soft(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Mask [B, F, d] and the soft expected kept fraction ``E[k]/d`` [B, F] (None once frozen)."""
        rows = self._rows(ids)
        positions = torch.arange(self.dim, device=ids.device)
        if self.frozen_lengths is not None:
            return (positions < self.frozen_lengths[rows].unsqueeze(-1)).to(self.w1.dtype), None
        # the networks run once per distinct frequency class in the batch, then gather back to [B, F]
        classes, inverse = torch.unique(self.id_class[rows], return_inverse=True)
        t_hat = self.soft_lengths(self.length_logits(classes))  # [U_b, d]
        if self.config.straight_through:
            hard = nn.functional.one_hot(t_hat.argmax(-1), self.num_lengths).to(t_hat.dtype)
            t = hard + (t_hat - t_hat.detach())  # forward: exactly the one-hot; backward: t_hat's gradient
        else:
            t = t_hat
        # m_j = sum_{k >= j} t_k: reverse cumulative sum (exact integers when t is one-hot); entry c of
        # `at_least` is P(length >= min_length + c), and the positions below min_length are always kept
        at_least = t.flip(-1).cumsum(-1).flip(-1)
        if self.min_length == 0:
            mask = at_least[..., 1:]
        else:
            mask = torch.cat([at_least.new_ones(*at_least.shape[:-1], self.min_length - 1), at_least], -1)
        lengths = torch.arange(self.min_length, self.dim + 1, dtype=t_hat.dtype, device=t_hat.device)
        expected = (t_hat * lengths).sum(-1) / self.dim  # [U_b]
        return mask[inverse], expected[inverse]

    def forward(self, raw: RawEmbeddings, ids: torch.Tensor) -> Embedded:
        mask, expected = self._mask_and_soft(ids)
        penalty = None
        if self.training and expected is not None and self.controller.lam > 0:
            penalty = self.controller.lam * self._size_estimate(ids, expected)
        return Embedded(raw.stacked() * mask, penalty)

    def _size_estimate(self, ids: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
        """Differentiable estimate of the kept fraction ``E[k]/d`` (a scalar) from its values [B, F].

        ``memory``: each occurrence weighted by ``N_f / (count_i * n)`` and summed over fields, an
        unbiased estimate of the average over the whole vocabulary; ``occurrence``: the batch mean.
        """
        if self.config.penalty_weighting == "occurrence":
            if self.batch_rows is None:
                return expected.mean()
            return self._batch_mean(expected.sum(), ids.shape[0]) / ids.shape[1]
        w = self.occurrence_weight[self._rows(ids)]
        return self._batch_mean((w * expected).sum(), ids.shape[0])

    # ------------------------------------------------------------------ sizes
    @torch.no_grad()
    def class_lengths(self) -> torch.Tensor:
        """Kept prefix length of every frequency class: int64 [U] (one pass over the classes)."""
        classes = torch.arange(self.class_features.shape[0], device=self.class_features.device)
        return self.length_logits(classes).argmax(-1) + self.min_length

    @torch.no_grad()
    def lengths(self) -> torch.Tensor:
        """Kept prefix length of every id, fields back to back: int64 [n]."""
        if self.frozen_lengths is not None:
            return self.frozen_lengths.clone()
        return self.class_lengths()[self.id_class]

    def _class_bytes_ratio(self, class_lengths: torch.Tensor | None = None) -> float:
        """Ragged bytes / uniform bytes of per-class sizes (default: the current ones), in O(U)."""
        lengths = self.class_lengths() if class_lengths is None else class_lengths
        kept = int((lengths * self.class_size).sum())
        n = sum(self.vocab_sizes)
        segment_lengths = lengths[self.segment_class]
        new_run = self.segment_field_start.clone()
        new_run[1:] |= segment_lengths[1:] != segment_lengths[:-1]
        _, index_bytes = ragged_index(n, kept, int(new_run.sum()), self.dim)
        return (kept * FLOAT_BYTES + index_bytes) / (n * self.dim * FLOAT_BYTES)

    def _land(self, before: torch.Tensor, after: torch.Tensor, target: float) -> torch.Tensor:
        """Per-class sizes between two consecutive steps' (``before`` over, ``after`` at or under the target).

        Values sharing a count switch size together, so one step can jump far below the target. Starting
        from ``after``, classes whose size fell take their ``before`` size back, most frequent first
        (globally normalised log count), while the bytes stay within the target [ours].
        """
        out = after.clone()
        if self._class_bytes_ratio(out) > target:
            return out
        fell = torch.nonzero(before > after).squeeze(1)
        order = fell[torch.argsort(self.class_features[fell, 2], descending=True, stable=True)]
        for c in order.tolist():
            kept = int(out[c])
            out[c] = before[c]
            if self._class_bytes_ratio(out) > target:  # exact: a size change can also add or merge runs
                out[c] = kept
        return out

    def _split(self, lengths: torch.Tensor) -> list[np.ndarray]:
        return [r.numpy() for r in torch.split(lengths.cpu(), self.vocab_sizes)]

    def _bytes_ratio(self, lengths: torch.Tensor) -> float:
        plan = self._plan_from(lengths)
        return plan.num_bytes / max(plan.full_bytes, 1)

    def _plan_from(self, lengths: torch.Tensor, details: dict[str, Any] | None = None) -> EmbeddingPlan:
        rows = self._split(lengths)
        return self._plan(
            [int(r.max(initial=0)) for r in rows], storage="ragged", row_sizes=rows, details=details or {}
        )

    def frequency_correlation(self, lengths: torch.Tensor) -> dict[str, float]:
        """Spearman correlation of size and training count, per field and over all values."""
        rows = self._split(lengths)
        out = {}
        for f, r in zip(self.fields, rows, strict=True):
            assert f.counts is not None
            out[f.name] = spearman(r, f.counts)
        counts = np.concatenate([f.counts for f in self.fields])  # type: ignore[misc]
        out["all"] = spearman(np.concatenate(rows), counts)
        return out

    @classmethod
    def smallest_plan(cls, fields: list[FieldInfo], dim: int, config: SearcherConfig) -> tuple[EmbeddingPlan, str]:
        """Every value at the shortest candidate length, ``min_length``, in the ragged table."""
        assert isinstance(config, AMTLConfig)
        short = config.min_length
        rows = [np.full(f.vocab_size, short, dtype=np.int64) for f in fields]
        plan = fields_plan("amtl", fields, dim, [short] * len(fields), storage="ragged", row_sizes=rows)
        if short == 0:
            return plan, "every value dropped"
        return plan, f"every value keeping {short} of its dimensions; method.min_length=0 lets a value be dropped"

    def plan(self, lookup: Lookup) -> EmbeddingPlan:
        lengths = self.lengths()
        details = {
            "twins": self.config.twins,
            "straight_through": self.config.straight_through,
            "frozen": self.frozen_lengths is not None,
            "penalty_weight": self.controller.lam,
            "mean_length": float(lengths.float().mean()),
            "spearman_size_frequency": self.frequency_correlation(lengths),
        }
        return self._plan_from(lengths, details)

    def export(self, lookup: Lookup) -> SlimEmbedding:
        plan = self.plan(lookup)
        table = lookup.table_weight("all").detach()
        group = RaggedGroup.from_dense(
            tuple(range(self.num_fields)), tuple(self.vocab_sizes), table, self.lengths(), self.dim
        )
        return SlimEmbedding(plan, [group])

    # ------------------------------------------------------------------ stages
    def _driven(self) -> bool:
        """Whether a penalty or budget pushes sizes down (then a best-AUC checkpoint would undo the search)."""
        return self.config.budget is not None or self.config.size_penalty > 0

    def _target_ratio(self) -> float | None:
        return None if self.config.budget is None else self.config.budget.share(self.fields, self.dim)

    def _steering(self, stage_name: str) -> float | None:
        """:meth:`_aim` while a budgeted search still steers (not landed, not stalled), else None."""
        if stage_name != SEARCH or self.frozen_lengths is not None or self._stall_note is not None:
            return None
        return self._aim()

    def _aim(self) -> float | None:
        """What the controller steers to: the target, or the fewest bytes any sizes take where that is more
        (a target :meth:`for_budget` accepted lies within the landing tolerance of it)."""
        target = self._target_ratio()
        if target is None:
            return None
        return max(target, self._floor_ratio)

    @functools.cached_property
    def _floor_ratio(self) -> float:
        """The smallest plan's bytes over the uniform tables' (built once: it is a pass over the vocabulary)."""
        floor = self.smallest_plan(self.fields, self.dim, self.config)[0].num_bytes
        return floor / (sum(self.vocab_sizes) * self.dim * FLOAT_BYTES)

    def stages(self) -> tuple[Stage, ...]:
        """The search (a budget search ends when its sizes land, and hands on its last state whenever a
        penalty or budget drives the sizes), then, with ``finetune``, training with the sizes frozen."""
        budget = self.config.budget is not None
        search = Stage(SEARCH, patience=not budget, selection="last" if self._driven() else "best")
        finetune = Stage(FINETUNE, rewind=self.config.finetune_from == "initial")
        return (search, finetune) if self.config.finetune else (search,)

    def start_stage(self, stage: Stage, lookup: Lookup) -> None:
        self.stage = stage.name
        if stage.name == FINETUNE and self.frozen_lengths is None:
            self.frozen_lengths = self.lengths()

    def end_stage(self, stage: Stage, lookup: Lookup) -> None:
        # freeze before a rewind puts the mask networks back to their step-0 state (full length)
        if stage.name == SEARCH and self.config.finetune and self.frozen_lengths is None:
            self.frozen_lengths = self.lengths()

    def stage_done(self, stage: Stage) -> bool:
        # with a budget, search ends at the first evaluation after the sizes landed (and were frozen), or
        # once the controller has run out of room and the bytes stopped falling (stalled)
        if stage.name != SEARCH or self.config.budget is None:
            return False
        return self.frozen_lengths is not None or self._stall_note is not None

    def on_step(self, step: int, lookup: Lookup) -> None:
        aim = self._steering(self.stage)
        if aim is None:
            return
        current = self.class_lengths()  # O(classes): cheap enough for every step
        ratio = self._class_bytes_ratio(current)
        self.last_bytes_ratio = ratio
        if ratio <= aim * (1 + self.config.budget_tolerance):
            # landed: freeze now, so training until the stage's next evaluation cannot drift off the target
            before = self._previous_class_lengths if self._previous_class_lengths is not None else current
            self.frozen_lengths = self._land(before, current, aim)[self.id_class]
            self.landed = True
            return
        self._previous_class_lengths = current
        if (step + 1) % self.config.budget_interval:
            return
        self.controller.update(ratio / aim - 1.0)

    def on_evaluation(self, stage: Stage, lookup: Lookup) -> None:
        """A search whose penalty weight sits at its upper bound while the bytes have not fallen below their
        lowest for ``budget_stall_evals`` evaluations cannot land: it ends, and the report says why."""
        aim = self._steering(stage.name)
        if aim is None:
            return
        ratio = self._class_bytes_ratio()
        at_bound = self.controller.lam >= PENALTY_WEIGHT_BOUNDS[1]
        if not at_bound or self._lowest_ratio is None or ratio < self._lowest_ratio * (1 - STALL_PROGRESS):
            self._lowest_ratio, self._stalled_evals = ratio, 0
            return
        self._stalled_evals += 1
        if self._stalled_evals >= self.config.budget_stall_evals:
            self._stall_note = (
                f"not landed: the size penalty's weight reached its bound {PENALTY_WEIGHT_BOUNDS[1]:g} and the "
                f"bytes stayed at {ratio:.4f} of the uniform model's (target {aim:.4f}) for "
                f"{self._stalled_evals} evaluations; the search ended there"
            )

    def metrics(self, lookup: Lookup) -> dict[str, float]:
        lengths = self.lengths()
        return {
            "amtl_bytes_ratio": self._bytes_ratio(lengths),
            "amtl_mean_length": float(lengths.float().mean()),
            "amtl_penalty_weight": float(self.controller.lam),
            "amtl_spearman": self.frequency_correlation(lengths)["all"],
        }

    def report(self, lookup: Lookup) -> dict[str, Any]:
        lengths = self.lengths()
        hist = torch.bincount(lengths, minlength=self.dim + 1)[self.min_length :].tolist()
        return {
            "mean_length": float(lengths.float().mean()),
            "bytes_ratio": self._bytes_ratio(lengths),
            "length_histogram": {str(k + self.min_length): int(c) for k, c in enumerate(hist)},
            "spearman_size_frequency": self.frequency_correlation(lengths),
            "penalty_weight": float(self.controller.lam),
            "budget_target_ratio": self._target_ratio(),
            "budget_landed": None if self.config.budget is None else self.landed,
            "budget_note": self._budget_note(),
            "frozen": self.frozen_lengths is not None,
        }

    def _budget_note(self) -> str | None:
        """Why a budgeted search did not land (None when it did, or without a budget)."""
        if self.config.budget is None or self.landed:
            return None
        if self._stall_note is not None:
            return self._stall_note
        return (
            "not landed: the search stage reached its step or epoch limit before the bytes reached the target "
            f"(last {self.last_bytes_ratio if self.last_bytes_ratio is not None else float('nan'):.4f} of the "
            f"uniform model's, target {self._aim():.4f})"
        )

    def state_for_checkpoint(self) -> dict[str, Any]:
        # outside the state dict: load_weights (best / initial) must not undo a freeze or the controller
        return {
            "stage": self.stage,
            "penalty_weight": self.controller.lam,
            "frozen_lengths": self.frozen_lengths,
            "landed": self.landed,
            "stall": (self._lowest_ratio, self._stalled_evals, self._stall_note),
        }

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        self.stage = state.get("stage", SEARCH)
        self.controller.lam = state.get("penalty_weight", self.controller.lam)
        self.frozen_lengths = state.get("frozen_lengths")
        self.landed = state.get("landed", False)
        self._lowest_ratio, self._stalled_evals, self._stall_note = state.get("stall", (None, 0, None))
