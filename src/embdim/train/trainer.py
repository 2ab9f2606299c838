"""Trainer: one loop for every method and stage, early stopping and selection on validation.

Every run is a folder (see :func:`embdim.train.run.run_experiment`); the trainer writes
``metrics.jsonl`` (one line per evaluation), ``checkpoint.pt`` (resumable state, replaced
atomically), ``initial.safetensors`` (step-0 weights, for lottery-ticket rewinds) and
``best.safetensors`` (the selected weights of the current stage). Given a :class:`~embdim.distributed.group.Group`
of several processes, every rank runs the same trainer and :mod:`embdim.train.sharded` does what differs
(sharded tables, data-parallel rest, shares of batches, gathered scores, rank-local weights, the export
from the gathered shards).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from embdim.config import RunConfig, resolve_budget, to_yaml
from embdim.data.cache import COUNTS_FILE, ENCODER_FILE, SCHEMA_FILE, VOCAB_FILE
from embdim.data.prepare import PreparedData
from embdim.data.schema import DatasetSchema
from embdim.distributed.group import Group
from embdim.embedding import EmbeddingLayer
from embdim.errors import ConfigError, DataError, DivergedError, UnreadableFile, shorten
from embdim.measures import all_finite
from embdim.recommender import (
    BUNDLE_CONFIG,
    MODEL_JSON,
    Recommender,
    build_recommender,
    check_precision,
    export_model,
    folder_bytes,
    load_model,
)
from embdim.searchers.base import Stage
from embdim.train.batches import Prefetcher
from embdim.train.checkpoint import (
    load_torch,
    load_weights,
    read_weights,
    remove_temp_files,
    save_torch,
    save_weights,
    strict_json,
    warm_start,
)
from embdim.train.evaluate import (
    batch_tensors,
    evaluate,
    frequency_report,
    group_by_frequency,
    row_frequencies,
    scores_metrics,
)
from embdim.train.layout import COMPLETED, CORRUPT_SUFFIX, RunFolder
from embdim.train.memory import (
    InsufficientMemory,
    check_memory,
    device_memory,
    estimate_training_memory,
    lighter_runs,
)
from embdim.train.metrics import NonFiniteScores
from embdim.train.optim import clip_gradients, recommender_optimizers, set_lr_scale
from embdim.train.sharded import ShardedTraining

EXPORT_CHECK_ROWS = 4096
EXPLODED_WEIGHT = 1e8  # |w| beyond this, next to a non-finite loss, points at the learning rate

log = logging.getLogger("embdim")


@dataclass
class Progress:
    """Where a run stands; saved in every checkpoint so a killed run resumes exactly."""

    stage_index: int = 0
    stage_started: bool = False
    epoch: int = 0
    batch: int = 0  # next batch within the epoch
    step: int = 0  # optimizer steps taken in this stage
    best_score: float | None = None
    best_step: int = -1
    bad_evals: int = 0
    loss_sum: float = 0.0
    loss_count: int = 0
    metrics_lines: int = 0
    train_seconds: float = 0.0  # inside training_step only
    loop_seconds: float = 0.0  # the training loops' wall time less evaluations: batches, steps, checkpoints
    eval_seconds: float = 0.0
    train_samples: int = 0
    stopped: bool = False
    start_valid_auc: float | None = None  # valid AUC of the state the stage started from (stages after the first)
    lr_drops: int = 0  # plateau schedule: drops so far in this stage
    evals_since_drop: int = 0  # plateau schedule: evaluations without improvement since the last drop
    #: what the method said as its stages ended (kept: a resumed run does not end those stages again)
    stage_warnings: list[str] = field(default_factory=list)


def training_step(
    rec: Recommender,
    optimizers: list,
    ids: torch.Tensor,
    dense: torch.Tensor | None,
    labels: torch.Tensor,
    step: int,
    looked_up_l2: float = 0.0,
    clip_grad_norm: float | None = None,
) -> torch.Tensor:
    """One optimizer step on a batch (task loss + the batch's penalty), then the searcher's ``on_step``.

    ids: int64 [B, F]; dense: float [B, Dn] or ``None``; labels: float [B]. ``looked_up_l2`` weighs the
    looked-up form of the embedding L2 (:meth:`Recommender.training_forward`); ``clip_grad_norm`` bounds
    the global gradient norm. Returns the task loss (detached).
    """
    logits, penalty = rec.training_forward(ids, dense, looked_up_l2)  # float32 logits at any precision
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
    total = loss if penalty is None else loss + penalty
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    total.backward()
    if clip_grad_norm is not None:
        clip_gradients([p for p in rec.parameters() if p.grad is not None], clip_grad_norm)
    for opt in optimizers:
        opt.step()
    if isinstance(rec.embedding, EmbeddingLayer):  # a slim embedding (trained after export) has no searcher
        rec.embedding.searcher.on_step(step, rec.embedding.lookup)
    return loss.detach()


def check_device(name: str) -> torch.device:
    """``train.device`` as a torch device; a :class:`ConfigError` naming it when torch cannot reach it."""
    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            built = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "built without CUDA"
            raise ConfigError(
                f"train.device={name}: torch sees {count} CUDA device(s) here (torch {torch.__version__}, {built}); "
                "use train.device=cpu"
            )
    return device


def build_run_recommender(cfg: RunConfig, schema: DatasetSchema) -> Recommender:
    """The freshly initialised model a run of ``cfg`` trains on data described by ``schema`` (the caller
    seeds torch first); a ``method.budget`` is resolved first (:func:`~embdim.config.resolve_budget`)."""
    cfg = resolve_budget(cfg, schema.fields)
    emb = cfg.embedding
    return build_recommender(
        schema.fields,
        schema.num_dense,
        emb.dim,
        cfg.model.name,
        cfg.model_options(),
        cfg.method.name,
        cfg.method_options(),
        emb.backend,
        emb.sparse,
        emb.init_std,
        emb.sparse_first_order,
        cfg.train.precision,
    )


class Trainer:
    """Trains ``cfg``'s model on ``data`` inside ``run_dir``; :meth:`fit` returns the result dict.

    ``group``: this process among several (a run on ``train.processes``); every rank then runs a trainer
    of the same config and data, and :meth:`fit` returns the same result on every rank.
    """

    def __init__(
        self, cfg: RunConfig, data: PreparedData, run_dir: Path, memory_check: bool = True, group: Group | None = None
    ) -> None:
        #: the width budgets and size ratios are relative to (the config's, before a budget narrows it)
        self.reference_dim = cfg.embedding.dim
        self.cfg = cfg = resolve_budget(cfg, data.schema.fields)
        self.data = data
        self.run_dir = Path(run_dir)
        self.tc = cfg.train
        self.folder = RunFolder(self.run_dir)
        self.checkpoint_path = self.folder.checkpoint
        self.metrics_path = self.folder.metrics
        self.best_path = self.folder.best
        self.initial_path = self.folder.initial
        self.stage_results: dict[str, dict[str, float]] = {}  # summaries of finished stages (kept in checkpoints)
        self.steps_per_epoch = (len(data.splits["train"]) + cfg.train.batch_size - 1) // cfg.train.batch_size
        self.warnings: list[str] = []  # what the run should say next to its result
        self._has_test = "test" in data.splits and len(data.splits["test"]) > 0
        self.memory_check = memory_check
        self.memory = estimate_training_memory(cfg, data.schema, data.cache_dir)
        self.device = check_device(cfg.train.device)
        check_precision(cfg.train.precision, self.device.type)
        multi = group is not None and group.world > 1
        self.sharded: ShardedTraining | None = ShardedTraining(group, self.folder, cfg) if multi else None
        self.is_main = self.sharded is None or self.sharded.is_main  # writes the run folder's shared files

    # ------------------------------------------------------------------ set-up
    def _build(self) -> None:
        if self.tc.threads:
            torch.set_num_threads(self.tc.threads)
        torch.manual_seed(self.tc.seed)
        self.rec: Recommender = build_run_recommender(self.cfg, self.data.schema)
        self.searcher = self.rec.embedding.searcher
        self.lookup = self.rec.embedding.lookup
        self.stages = self.searcher.stages()
        if self.tc.init_from:
            warm_start(Path(self.tc.init_from), self.rec)
        self.rec.to(self.device)  # in place: the searcher and lookup above are the moved modules
        if self.sharded is not None:
            self.sharded.shard(self.rec)  # after the warm start: the shards take the loaded tables
        self._new_optimizers()

    def _new_optimizers(self) -> None:
        self.optimizers = recommender_optimizers(self.rec, self.tc, lookup=self.lookup)

    # ------------------------------------------------------------------ learning-rate schedule
    def _stage(self, p: Progress) -> Stage:
        """The stage ``p`` is in (the last one once every stage has finished)."""
        return self.stages[min(p.stage_index, len(self.stages) - 1)]

    def _max_steps(self, stage: Stage) -> int | None:
        """The stage's step limit: its own or ``train.max_steps``, whichever is first."""
        limits = [n for n in (stage.max_steps, self.tc.max_steps) if n is not None]
        return min(limits) if limits else None

    def _patience_counts(self, p: Progress, stage: Stage) -> bool:
        """Whether validation patience (and the plateau schedule) may act in ``stage`` at ``p``."""
        return stage.patience and p.step >= stage.patience_after_epochs * self.steps_per_epoch

    def _lr_scale(self, p: Progress) -> float:
        """The schedule's multiplier of every base rate at ``p`` (see :class:`~embdim.config.LRScheduleConfig`)."""
        stage_steps = self.tc.epochs * self.steps_per_epoch
        limit = self._max_steps(self._stage(p))
        if limit is not None:
            stage_steps = min(stage_steps, limit)
        return self.tc.lr_schedule.scale(p.step, p.lr_drops, self.steps_per_epoch, stage_steps)

    def _apply_lr(self, p: Progress) -> None:
        if self.tc.lr_schedule.kind != "constant":
            set_lr_scale(self.optimizers, self._lr_scale(p), self.tc.lr_schedule.min_lr)

    def _plateau(self, p: Progress, improved: bool, stage: Stage) -> None:
        """After an evaluation: count it towards the next plateau drop and drop the rates when due. Only
        in stages that validation may end (a search the method ends itself keeps its rates)."""
        sched = self.tc.lr_schedule
        if sched.kind != "plateau" or not self._patience_counts(p, stage):
            return
        p.evals_since_drop = 0 if improved else p.evals_since_drop + 1
        if p.evals_since_drop >= sched.patience:
            p.lr_drops, p.evals_since_drop = p.lr_drops + 1, 0
            self._apply_lr(p)

    def _save_checkpoint(self, p: Progress) -> None:
        """Save the resumable state; never a diverged one (the last good checkpoint stays)."""
        self._check_weights(p, self._stage(p))
        if self.sharded is not None:
            self.sharded.save_checkpoint(
                {"progress": asdict(p), "stage_results": self.stage_results},
                {
                    "model": self.sharded.local_weights(self.rec),
                    "optimizers": [o.state_dict() for o in self.optimizers],
                    "searcher": self.searcher.state_for_checkpoint(),
                    "rng": torch.get_rng_state(),
                },
            )
            return
        save_torch(
            self.checkpoint_path,
            {
                "progress": asdict(p),
                "model": self.rec.state_dict(),
                "optimizers": [o.state_dict() for o in self.optimizers],
                "searcher": self.searcher.state_for_checkpoint(),
                "stage_results": self.stage_results,
                "rng": torch.get_rng_state(),
                **({"cuda_rng": torch.cuda.get_rng_state(self.device)} if self.device.type == "cuda" else {}),
            },
        )

    def _load_checkpoint(self) -> Progress:
        if self.sharded is not None:
            shared, state = self.sharded.load_checkpoint()
        else:
            shared = state = load_torch(self.checkpoint_path)
        for path in (self._weights_path(self.initial_path), self._weights_path(self.best_path)):
            if path.exists():  # read before anything is restored from them
                read_weights(path)
        if self.sharded is not None:
            self.sharded.load_local_weights(self.rec, state["model"])
        else:
            self.rec.load_state_dict(state["model"])
        self.searcher.load_checkpoint_state(state["searcher"])
        p = Progress(**shared["progress"])
        self.stage_results = shared.get("stage_results", {})
        if p.stage_index > 0:
            self._new_optimizers()
        for opt, s in zip(self.optimizers, state["optimizers"], strict=True):
            opt.load_state_dict(s)
        torch.set_rng_state(state["rng"])
        if "cuda_rng" in state and self.device.type == "cuda":  # dropout masks drawn on the GPU
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        if self.is_main:  # evaluations logged after the checkpoint will be logged again
            lines = self.metrics_path.read_text().splitlines(keepends=True) if self.metrics_path.exists() else []
            self.metrics_path.write_text("".join(lines[: p.metrics_lines]))
        return p

    # ------------------------------------------------------------------ weights files
    def _weights_path(self, path: Path) -> Path:
        """Where the weights file ``path`` of the run folder is for this process (a rank's own folder when
        the tables are sharded)."""
        return path if self.sharded is None else self.sharded.weights_path(path.name)

    def _save_weights(self, path: Path) -> None:
        if self.sharded is not None:
            self.sharded.save_weights(path.name, self.rec)
        else:
            save_weights(path, self.rec)

    def _load_weights(self, path: Path) -> None:
        if self.sharded is not None:
            self.sharded.load_weights(path.name, self.rec)
        else:
            load_weights(path, self.rec)

    # ------------------------------------------------------------------ loop
    def _log(self, p: Progress, record: dict[str, Any]) -> None:
        if self.is_main:
            with self.metrics_path.open("a") as f:
                f.write(strict_json(record) + "\n")
        p.metrics_lines += 1

    def _evaluate(self, split: str, p: Progress, stage: Stage) -> dict[str, float | None]:
        """AUC and logloss on a split (``None`` for a test split that is absent or empty); non-finite scores
        (a diverged model) raise :class:`DivergedError`."""
        if split == "test" and not self._has_test:
            return {"auc": None, "logloss": None}
        try:
            if self.sharded is not None:
                return scores_metrics(self.data.splits[split].labels, self._sharded_scores(split))
            return evaluate(self.rec, self.data.splits[split], self.tc.eval_batch_size)
        except NonFiniteScores as err:
            raise self._diverged(p, stage, f"the {split} scores: {err}") from None

    def _sharded_scores(self, split: str) -> np.ndarray:
        """Logits [N] of a whole split, gathered from every rank's share (on every rank)."""
        assert self.sharded is not None
        return self.sharded.predict(self.rec, self.data.splits[split], self.tc.eval_batch_size)

    def _evaluate_and_select(
        self, p: Progress, stage: Stage, interval_start: float, interval_samples: int
    ) -> dict[str, float]:
        started = time.perf_counter()
        self._check_weights(p, stage)
        valid = self._evaluate("valid", p, stage)
        self.searcher.on_evaluation(stage, self.lookup)
        score = valid["auc"] if self.tc.monitor == "auc" else -valid["logloss"]
        improved = p.best_score is None or score > p.best_score
        if improved:
            p.best_score, p.best_step, p.bad_evals = score, p.step, 0
            self._save_weights(self.best_path)
        else:
            p.bad_evals += 1
        self._plateau(p, improved, stage)
        elapsed = max(time.perf_counter() - interval_start, 1e-9)
        record = {
            "stage": stage.name,
            "epoch": p.epoch,
            "step": p.step,
            "train_loss": p.loss_sum / max(p.loss_count, 1),
            "valid_auc": valid["auc"],
            "valid_logloss": valid["logloss"],
            "best": improved,
            "lr": self._current_lr(p),
            "samples_per_second": interval_samples / elapsed,
            **self.searcher.metrics(self.lookup),
        }
        self._log(p, record)
        p.loss_sum, p.loss_count = 0.0, 0
        p.eval_seconds += time.perf_counter() - started
        if p.bad_evals >= self.tc.patience and self._patience_counts(p, stage):
            p.stopped = True
        if self.searcher.stage_done(stage):
            p.stopped = True
        return valid

    # ------------------------------------------------------------------ divergence
    def _check_weights(self, p: Progress, stage: Stage) -> None:
        """Raise :class:`DivergedError` when a weight or buffer of the model is NaN or infinite (on any rank)."""
        state = self.rec.state_dict() if self.sharded is None else self.sharded.local_weights(self.rec)
        bad = next((name for name, tensor in state.items() if not all_finite(tensor)), None)
        if self.sharded is not None:
            bad = self.sharded.first_error(bad)
        if bad is not None:
            raise self._diverged(p, stage, f"the weight {bad!r} holds non-finite values")

    def _diverged(self, p: Progress, stage: Stage, what: str, dense: torch.Tensor | None = None) -> DivergedError:
        """The error of a run that produced a non-finite value, naming where and the likely cause."""
        tc, emb = self.tc, self.cfg.embedding
        bad_input = dense is not None and not bool(torch.isfinite(dense).all())
        if self.sharded is not None and dense is not None:  # every rank must take the same branch below
            bad_input = self.sharded.group.any(bad_input)
        if bad_input:
            cause = "the input: the batch's dense features hold non-finite values (check the data)"
        elif p.stage_index == 0 and p.step <= 1:
            cause = (
                f"the initial weights (embedding.init_std={emb.init_std:g}) or the first update "
                f"(train.lr={tc.lr:g}): training was not finite from its first step"
            )
        else:
            largest = self._largest_weight()
            cause = f"the learning rate (train.lr={tc.lr:g}, {tc.optimizer}) is too large for this model"
            if largest > EXPLODED_WEIGHT:
                cause += f": weights grew to |w| = {largest:.3g}"
            cause += "; lower train.lr or set train.clip_grad_norm"
        return DivergedError(
            f"training diverged at step {p.step} of stage {stage.name!r} (epoch {p.epoch + 1}): {what}. Likely cause: "
            f"{cause}. Kept in {self.run_dir}: the last good checkpoint and the best weights so far; no result "
            "was written. Change the config and run again under another name= or with --force"
        )

    def _largest_weight(self) -> float:
        """The largest |w| of the model (``inf`` for an infinite one; over every rank's weights)."""
        if self.sharded is not None:
            return self.sharded.largest_weight(self.rec)
        return max(
            (
                float(t.abs().nan_to_num(posinf=math.inf).max())
                for t in self.rec.state_dict().values()
                if t.is_floating_point() and t.numel()
            ),
            default=0.0,
        )

    def _current_lr(self, p: Progress) -> float:
        """``train.lr`` as the schedule has scaled it at ``p`` (other groups scale alike)."""
        lr, sched = self.tc.lr, self.tc.lr_schedule
        return max(lr * self._lr_scale(p), min(sched.min_lr, lr))

    def _train_stage(self, p: Progress, stage: Stage) -> None:
        train = self.data.splits["train"]
        n, bs = len(train), self.tc.batch_size
        batches_per_epoch = (n + bs - 1) // bs
        self.searcher.steps_per_epoch = batches_per_epoch
        max_steps = self._max_steps(stage)
        while not p.stopped and p.epoch < self.tc.epochs:
            order = np.random.default_rng([self.tc.seed, p.stage_index, p.epoch]).permutation(n)
            bar = tqdm(
                total=batches_per_epoch,
                initial=p.batch,
                desc=f"{stage.name} epoch {p.epoch + 1}",
                disable=not (self.tc.progress and self.is_main),
                leave=False,
                unit="batch",
            )
            interval_start, interval_samples = time.perf_counter(), 0
            share = None if self.sharded is None else self.sharded.share
            with Prefetcher(train, order, bs, p.batch, share) as prefetched:
                batches = iter(prefetched)
                while p.batch < batches_per_epoch and not p.stopped:
                    started, evaluated = time.perf_counter(), p.eval_seconds
                    ids, dense, labels = next(batches)  # on several processes: this rank's share
                    rows = min(bs, n - p.batch * bs)  # of the global batch
                    self._apply_lr(p)
                    t0 = time.perf_counter()
                    loss = self._step(ids, dense, labels, p, rows)
                    if not math.isfinite(loss):
                        raise self._diverged(p, stage, f"the training loss is {loss}", dense)
                    p.train_seconds += time.perf_counter() - t0
                    p.train_samples += rows
                    interval_samples += rows
                    p.loss_sum += loss * rows
                    p.loss_count += rows
                    p.batch += 1
                    p.step += 1
                    bar.update(1)
                    at_max = max_steps is not None and p.step >= max_steps
                    epoch_end = p.batch == batches_per_epoch
                    scheduled = bool(self.tc.eval_every_steps) and p.step % self.tc.eval_every_steps == 0
                    evaluate_now = scheduled or epoch_end or at_max
                    if evaluate_now:
                        self._evaluate_and_select(p, stage, interval_start, interval_samples)
                        interval_start, interval_samples = time.perf_counter(), 0
                        p.stopped = p.stopped or at_max
                    if epoch_end:
                        p.epoch, p.batch = p.epoch + 1, 0
                    # after every evaluation too, so best.safetensors never runs ahead of the checkpoint
                    if evaluate_now or p.step % self.tc.checkpoint_every_steps == 0:
                        self._save_checkpoint(p)
                    p.loop_seconds += time.perf_counter() - started - (p.eval_seconds - evaluated)
                    self.after_step(p)
                    if epoch_end:
                        break  # next epoch: new shuffle order, epoch limit checked
            bar.close()

    def _step(
        self, ids: torch.Tensor, dense: torch.Tensor | None, labels: torch.Tensor, p: Progress, rows: int
    ) -> float:
        """One step; returns the (global) batch's mean task loss. ``rows``: the global batch's rows."""
        tc = self.tc
        if self.device.type != "cpu":  # batches are gathered on the CPU
            ids, labels = ids.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
            dense = None if dense is None else dense.to(self.device, non_blocking=True)
        if self.sharded is not None:
            return self.sharded.step(
                self.rec, self.optimizers, ids, dense, labels, p.step, rows, tc.looked_up_l2, tc.clip_grad_norm
            )
        return float(
            training_step(self.rec, self.optimizers, ids, dense, labels, p.step, tc.looked_up_l2, tc.clip_grad_norm)
        )

    def after_step(self, p: Progress) -> None:
        """Hook after each step's bookkeeping (tests use it to simulate a kill)."""

    # ------------------------------------------------------------------ driver
    def _resume_or_start(self) -> Progress:
        """Resume from ``checkpoint.pt``; a checkpoint (or weights file) that cannot be read or does not fit
        this model is moved aside to ``<name>.corrupt`` with a warning, and training starts from step 0
        (on several processes: on every rank, when any rank cannot resume)."""
        if self.is_main:
            remove_temp_files(self.run_dir)
        if self.sharded is not None:
            self.sharded.own.mkdir(parents=True, exist_ok=True)
            remove_temp_files(self.sharded.own)
        exists = self.checkpoint_path.exists()
        if self.sharded is not None:
            exists = self.sharded.group.broadcast(exists)  # rank 0's view decides
        if exists:
            error: Exception | None = None
            try:
                p = self._load_checkpoint()
            except (UnreadableFile, RuntimeError, KeyError, ValueError, TypeError) as err:
                error = err
            message = None if error is None else f"{type(error).__name__}: {shorten(str(error))}"
            if self.sharded is not None:
                message = self.sharded.first_error(message)
            if message is None:
                if self.sharded is not None:
                    self.sharded.remove_stale_generations()
                return p
            bad = next(
                (path for path in (self.initial_path, self.best_path) if path.name in message),
                self.checkpoint_path,
            )
            if self.sharded is not None:
                bad = self.checkpoint_path  # the commit: without it, every rank's part is stale
            aside = bad.with_name(bad.name + CORRUPT_SUFFIX)
            if self.is_main or self.sharded is None:
                bad.replace(aside)
                self.checkpoint_path.unlink(missing_ok=True)
            self.warn(
                f"{bad} cannot be resumed from ({message}); moved to {aside.name}, training starts again from step 0"
            )
            self._build()  # a partial restore may have changed weights
        p = Progress()
        if self.is_main:
            self.metrics_path.write_text("")
        self._save_weights(self.initial_path)
        return p

    def warn(self, message: str) -> None:
        """A warning for the log (stderr; rank 0's alone) and for ``result.json``'s ``warnings``."""
        if self.is_main:
            log.warning(message)
        self.warnings.append(message)

    def _check_data(self) -> None:
        """The data's warnings go to the log and the result; a valid split AUC cannot select on is an error."""
        for warning in self.data.warnings:
            self.warn(warning)
        labels = np.asarray(self.data.splits["valid"].labels)
        if self.tc.monitor == "auc" and len(np.unique(labels)) < 2:
            raise DataError(
                f"the valid split's {len(labels):,} labels are all {int(labels[0]) if len(labels) else '-'}: "
                "its AUC is undefined and cannot select a checkpoint; use train.monitor=logloss, or change "
                "dataset.preprocess.split"
            )

    def fit(self) -> dict[str, Any]:
        self._check_data()
        log.info("memory estimate: %s", self.memory.describe())
        if self.memory_check:
            self._check_memory()
        self._build()
        for message in self.searcher.schedule_warnings(self._stage_epochs()):
            self.warn(message)
        p = self._resume_or_start()
        self.warnings += p.stage_warnings  # those of stages a resumed run finished before
        stage_results = self.stage_results
        while p.stage_index < len(self.stages):
            stage = self.stages[p.stage_index]
            if not p.stage_started:
                if stage.rewind:
                    self._load_weights(self.initial_path)
                self.searcher.start_stage(stage, self.lookup)
                if p.stage_index > 0:
                    self._new_optimizers()
                    # the state a stage starts from (e.g. right after a cut) is measured and may be its best
                    p.start_valid_auc = self._evaluate_and_select(p, stage, time.perf_counter(), 0)["auc"]
                p.stage_started = True
                self._save_checkpoint(p)
            self.rec.train()
            self._train_stage(p, stage)
            if stage.selection == "best":
                self._load_weights(self.best_path)
            for message in self._end_stage(stage):  # e.g. a target completed by rank: the result says so too
                self.warn(message)
                p.stage_warnings.append(message)
            stage_results[stage.name] = self._stage_summary(p, final=p.stage_index == len(self.stages) - 1)
            p = Progress(
                stage_index=p.stage_index + 1,
                metrics_lines=p.metrics_lines,
                train_seconds=p.train_seconds,
                loop_seconds=p.loop_seconds,
                eval_seconds=p.eval_seconds,
                train_samples=p.train_samples,
                stage_warnings=p.stage_warnings,
            )
            self._save_checkpoint(p)
        return self._finish(p, stage_results)

    def _stage_epochs(self) -> float:
        """The most epochs a stage trains: ``train.epochs``, or fewer where ``train.max_steps`` ends it first."""
        if self.tc.max_steps is None:
            return float(self.tc.epochs)
        return min(float(self.tc.epochs), self.tc.max_steps / self.steps_per_epoch)

    def _end_stage(self, stage: Stage) -> list[str]:
        """``searcher.end_stage``, returning the warnings embdim's own code raised in it; others (a library's
        deprecation, say) go on to Python's warning machinery as usual."""
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            self.searcher.end_stage(stage, self.lookup)
        ours = []
        for w in said:
            if issubclass(w.category, UserWarning) and "embdim" in Path(w.filename).parts:
                ours.append(str(w.message))
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        return ours

    def _check_memory(self) -> None:
        """Refuse a run whose estimate exceeds the free memory (on several processes, rank 0 measures the
        machine and every rank raises its verdict)."""
        verdict = None
        if self.is_main:
            try:
                check_memory(
                    self.memory,
                    device_memory(self.device),
                    lighter=lambda available: lighter_runs(self.cfg, self.data.schema, available),
                )
            except InsufficientMemory as err:
                verdict = str(err)
        if self.sharded is not None:
            verdict = self.sharded.group.broadcast(verdict)
        if verdict is not None:
            raise InsufficientMemory(verdict)

    def _stage_summary(self, p: Progress, final: bool) -> dict[str, float]:
        """Valid metrics of the weights the stage hands on; earlier stages also report test (e.g. AUC before
        retraining), the final stage leaves test to :meth:`_finish`."""
        valid = self._evaluate("valid", p, self._stage(p))
        summary = {
            "valid_auc": valid["auc"],
            "valid_logloss": valid["logloss"],
            "steps": p.step,
            "best_step": p.best_step,
            "epochs": p.epoch + (1 if p.batch else 0),
            **self.searcher.metrics(self.lookup),
        }
        if p.start_valid_auc is not None:
            summary["valid_auc_at_start"] = p.start_valid_auc
        if not final:
            test = self._evaluate("test", p, self._stage(p))
            summary |= {"test_auc": test["auc"], "test_logloss": test["logloss"]}
        return summary

    def _finish(self, p: Progress, stage_results: dict[str, dict[str, float]]) -> dict[str, Any]:
        # the last stage's summary already evaluated valid on these (selected) weights
        last = stage_results[self.stages[-1].name]
        valid = {"auc": last["valid_auc"], "logloss": last["valid_logloss"]}
        if self.sharded is not None:
            return self._finish_sharded(p, stage_results, valid)
        test = self._evaluate("test", p, self.stages[-1])
        self.rec.to("cpu")  # the export, its check and the report by frequency run where the bundle will load
        plan = self.searcher.plan(self.lookup)
        plan.save(self.folder.plan)
        self._compact_inputs(self.rec)
        model_dir = self.folder.model
        export_model(self.rec, model_dir, self._export_extra(), self._bundle_files())
        return self._result(
            p,
            stage_results,
            valid,
            test,
            plan.summary(self.reference_dim),
            self._test_by_frequency(),
            self.searcher.report(self.lookup),
            self._export_check(model_dir),
        )

    def _finish_sharded(
        self, p: Progress, stage_results: dict[str, dict[str, float]], valid: dict[str, float]
    ) -> dict[str, Any]:
        """:meth:`_finish` on several processes: the test scores are gathered from every rank; rank 0 exports
        the model gathered from the shards (as one process would have trained it), checks it against those
        scores and builds the result, which every rank returns."""
        assert self.sharded is not None
        checked = "test" if self._has_test else "valid"
        try:
            scores = self._sharded_scores(checked)
            test = scores_metrics(self.data.splits["test"].labels, scores) if self._has_test else None
        except NonFiniteScores as err:
            raise self._diverged(p, self.stages[-1], f"the {checked} scores: {err}") from None
        whole = self.sharded.gathered(self.rec, lambda: build_run_recommender(self.cfg, self.data.schema))
        result = None
        if whole is not None:
            searcher, lookup = whole.embedding.searcher, whole.embedding.lookup
            plan = searcher.plan(lookup)
            plan.save(self.folder.plan)
            self._compact_inputs(whole)
            model_dir = self.folder.model
            export_model(whole, model_dir, self._export_extra(), self._bundle_files())
            split = self.data.splits[checked]
            by_frequency = None
            if self._has_test:
                freq = row_frequencies(np.asarray(split.ids), self.data.schema.fields)
                by_frequency = group_by_frequency(np.asarray(split.labels), scores, freq)
            result = self._result(
                p,
                stage_results,
                valid,
                test or {"auc": None, "logloss": None},
                plan.summary(self.reference_dim),
                by_frequency,
                searcher.report(lookup),
                self._slim_difference(model_dir, split, scores),
            )
            del whole
        return self.sharded.group.broadcast(result)

    def _compact_inputs(self, rec: Recommender) -> None:
        widths = self.searcher.model_input_widths()
        if widths is not None:
            with contextlib.suppress(NotImplementedError):  # FM, DLRM: no concatenated MLP input
                rec.model.compact_inputs(widths)  # same logits, a smaller first MLP layer in the export

    def _export_extra(self) -> dict[str, Any]:
        return {"dataset": self.cfg.dataset.name, "method": self.cfg.method.name}

    def _result(
        self,
        p: Progress,
        stage_results: dict[str, dict[str, float]],
        valid: dict[str, float],
        test: dict[str, float | None],
        summary: dict[str, Any],
        by_frequency: Any,
        report: dict[str, Any],
        export_difference: float,
    ) -> dict[str, Any]:
        """``result.json``: what was trained, its metrics and sizes, the speed and the checks."""
        model_dir = self.folder.model
        return {
            "status": COMPLETED,
            "name": self.cfg.name,
            "dataset": self.cfg.dataset.name,
            "model": self.cfg.model.name,
            "method": self.cfg.method.name,
            "dim": self.cfg.embedding.dim,
            "reference_dim": self.reference_dim,
            "seed": self.tc.seed,
            "processes": self.tc.processes,
            "threads": torch.get_num_threads(),  # the speed's context (a resumed run may have changed it)
            "test_auc": test["auc"],
            "test_logloss": test["logloss"],
            "valid_auc": valid["auc"],
            "valid_logloss": valid["logloss"],
            **{k: v for k, v in summary.items() if k != "field_dims"},
            **self._model_sizes(model_dir),
            "field_dims": summary["field_dims"],
            "train_seconds": p.train_seconds,
            "samples_per_second": p.train_samples / max(p.train_seconds, 1e-9),
            # what a user waits for: batches, steps and checkpoints, evaluations apart (eval_seconds)
            "end_to_end_samples_per_second": p.train_samples / max(p.loop_seconds, 1e-9),
            "eval_seconds": p.eval_seconds,
            "test_by_frequency": by_frequency,
            "stages": stage_results,
            "searcher": report,
            "export_max_abs_logit_diff": export_difference,
            "memory_estimate_bytes": self.memory.total,
            "warnings": self.warnings,
        }

    def _bundle_files(self) -> dict[str, Path | str] | None:
        """What makes the model folder a bundle: the cache's encoder, vocabularies, schema and counts, and the
        config the model was trained with (budget resolved); ``None`` for data built in memory (no cache)."""
        cache = self.data.cache_dir
        if cache is None:
            return None
        data_files = (ENCODER_FILE, VOCAB_FILE, COUNTS_FILE, SCHEMA_FILE)
        return {**{name: cache / name for name in data_files}, BUNDLE_CONFIG: to_yaml(self.cfg)}

    @staticmethod
    def _model_sizes(model_dir: Path) -> dict[str, int]:
        """The exported model's sizes: its tensors (embedding and network) and the bundle on disk."""
        sizes = json.loads((model_dir / MODEL_JSON).read_text())["sizes"]
        return {"model_bytes": sizes["model_bytes"], "bundle_bytes": folder_bytes(model_dir)}

    def _test_by_frequency(self) -> dict[str, Any] | None:
        if not self._has_test:
            return None
        return frequency_report(self.rec, self.data.splits["test"], self.data.schema.fields)

    @staticmethod
    def _slim_difference(model_dir: Path, split: Any, logits: np.ndarray) -> float:
        """Largest |logit| difference between the exported slim model and ``logits`` [N] (the trained model's,
        gathered from every rank) on the split's first rows."""
        rows = min(len(split), EXPORT_CHECK_ROWS)
        if not rows:
            return 0.0
        ids, dense, _ = batch_tensors(split, np.arange(rows))
        with torch.no_grad():
            slim = load_model(model_dir)(ids, dense).float().numpy()
        return float(np.abs(slim - logits[:rows]).max())

    def _export_check(self, model_dir: Path) -> float:
        """Largest |logit| difference between the exported slim model and the trained one on test rows."""
        test = self.data.splits["test" if self._has_test else "valid"]
        rows = min(len(test), EXPORT_CHECK_ROWS)
        ids, dense, _ = batch_tensors(test, np.arange(rows))
        slim = load_model(model_dir)
        was_training = self.rec.training
        self.rec.eval()
        try:
            with torch.no_grad():
                return float((slim(ids, dense) - self.rec(ids, dense)).abs().max()) if rows else 0.0
        finally:
            self.rec.train(was_training)
