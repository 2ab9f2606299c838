"""What the trainer does differently on several processes (``train.processes``, or ``torchrun``).

Every rank builds the same model from the same seed, then:

* the lookup's tables are sharded by TorchRec (:meth:`~embdim.distributed.torchrec_lookup.TorchRecLookup.shard`:
  the planner's placement, written to ``sharding_plan.json``), and trained by fused kernels;
* the method's state that follows the table rows is laid out like the shards (``Searcher.shard``: PEP's
  masks and row-wise thresholds), and left alone by data parallelism (``Searcher.local_state_names``);
* everything else (the CTR model, the method's own parameters) is replicated and trained data-parallel:
  ``DistributedDataParallel`` averages its gradients over the ranks in the backward pass (looking for the
  parameters a method lets sit out steps, ``Searcher.has_idle_parameters``); a penalty that is a batch
  mean divides by the global batch's rows per rank (``Searcher.batch_rows``);
* ``train.batch_size`` is the global batch: every rank draws the same shuffle (same seed) and takes its
  share of each batch (``np.array_split`` of the batch's rows, in rank order). The loss a rank
  differentiates is its share's summed loss times ``world / global rows``, so the averaged gradient
  (DDP for the dense part, TorchRec's gradient division for the shards) is the gradient of the global
  batch's mean loss: N processes take the steps one process takes with the same ``batch_size``, and the
  learning rates need no change. Raising ``batch_size`` with N (each process keeping its own share) is
  a larger batch, to be paired with larger rates as for one process;
* evaluation scores each rank's share of a split (``eval_batch_size`` rows at a time in all) and gathers
  the scores, so AUC and logloss are computed over the whole split, identically on every rank;
* rank 0 alone writes the run folder's shared files (config, metrics, plan, sharding plan, model,
  result); what a rank holds alone (its shards, their optimizer state, its RNG) goes to ``ranks/<r>/``.
  A checkpoint is a generation: every rank writes its ``checkpoint-<g>.pt``, then rank 0 writes
  ``checkpoint.pt`` naming ``g`` (the commit), then the older generations are removed; a kill at any
  point leaves one whole generation to resume from;
* the export gathers the shards (and the method's sharded state, ``Searcher.gather_state``) on rank 0
  into an ordinary one-process model, which is exported as a one-process run's is
  (:meth:`ShardedTraining.gathered`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from embdim.config import RunConfig
from embdim.data.cache import SplitArrays
from embdim.distributed.group import Group, split_rows
from embdim.recommender import Recommender, Scored
from embdim.train.checkpoint import atomic_write_json, load_torch, read_weights, save_tensors, save_torch
from embdim.train.evaluate import batch_tensors
from embdim.train.layout import RunFolder
from embdim.train.optim import clip_gradients

LOOKUP_PREFIX = "embedding.lookup."  # the sharded part of a recommender's state
SEARCHER_PREFIX = "embedding.searcher."  # the method's state: replicated, but for its local_state_names()
GENERATION = re.compile(r"checkpoint-(\d+)\.pt")


class _TrainingForward(nn.Module):
    """A recommender's training forward as a module's ``forward``, for DDP to wrap: DDP averages the
    gradients of the parameters a forward through it reaches."""

    def __init__(self, rec: Recommender) -> None:
        super().__init__()
        self.rec = rec

    def forward(self, ids: torch.Tensor, dense: torch.Tensor | None, looked_up_l2: float) -> Scored:
        return self.rec.training_forward(ids, dense, looked_up_l2)


class ShardedTraining:
    """One rank's share of a run on several processes (see the module docstring).

    Args:
        group: this process among the run's processes.
        folder: the run folder (shared by the ranks).
        cfg: the run's config.
    """

    def __init__(self, group: Group, folder: RunFolder, cfg: RunConfig) -> None:
        self.group = group
        self.folder = folder
        self.cfg = cfg
        self.own = folder.rank(group.rank)
        self.generation = 0  # of the last checkpoint written or resumed from
        self.objective: Callable[..., Scored] | None = None

    @property
    def is_main(self) -> bool:
        return self.group.is_main

    # ------------------------------------------------------------------ set-up
    def shard(self, rec: Recommender) -> dict[str, Any]:
        """Shard ``rec``'s tables (rank 0 writes the plan) and wrap the rest data-parallel; returns the plan."""
        tc, sharding = self.cfg.train, self.cfg.embedding.sharding
        plan = rec.embedding.lookup.shard(
            tc.optimizer,
            tc.embedding_lr or tc.lr,
            sharding.types,
            sharding.min_column_width,
            sharding.memory_per_process,
            self.group.local_world,
        )
        searcher = rec.embedding.searcher
        searcher.shard(rec.embedding.lookup)  # state that follows the table rows takes their layout
        if self.is_main:
            self.folder.root.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.folder.sharding_plan, plan)
        module = _TrainingForward(rec)
        named = [*module.named_parameters(), *module.named_buffers()]
        local = {f"rec.{SEARCHER_PREFIX}{name}" for name in searcher.local_state_names()}
        sharded = [name for name, _ in named if name.startswith(f"rec.{LOOKUP_PREFIX}") or name in local]
        replicated = [p for name, p in module.named_parameters() if name not in sharded and p.requires_grad]
        if replicated:
            DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, sharded)
            # buffers (batch norm's running statistics) follow rank 0's at every training forward; a method's
            # parameters may sit out steps (DML's lengths while warming up and once cut, AMTL's mask networks
            # once the sizes are frozen, PEP's thresholds in retraining): the same ones on every rank
            idle = searcher.has_idle_parameters()
            self.objective = DistributedDataParallel(module, find_unused_parameters=idle)
        else:
            self.objective = module
        return plan

    # ------------------------------------------------------------------ training and scoring
    def step(
        self,
        rec: Recommender,
        optimizers: list,
        ids: torch.Tensor,
        dense: torch.Tensor | None,
        labels: torch.Tensor,
        step: int,
        global_rows: int,
        looked_up_l2: float = 0.0,
        clip_grad_norm: float | None = None,
    ) -> float:
        """One step on this rank's share of a global batch of ``global_rows`` rows (ids int64 [B_r, F],
        dense float [B_r, Dn] | None, labels float [B_r]); returns the global batch's mean task loss."""
        assert self.objective is not None, "shard() first"
        rec.embedding.searcher.batch_rows = global_rows / self.group.world  # batch-mean penalties: the global mean
        logits, penalty = self.objective(ids, dense, looked_up_l2)
        task = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="sum")
        total = task * (self.group.world / global_rows)  # averaged over ranks: the global batch's mean
        if penalty is not None:
            total = total + penalty
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        total.backward()
        if clip_grad_norm is not None:  # the averaged (replicated) gradients: every rank clips alike
            clip_gradients([p for p in rec.parameters() if p.grad is not None], clip_grad_norm)
        for opt in optimizers:
            opt.step()
        rec.embedding.searcher.on_step(step, rec.embedding.lookup)
        return self.group.sum([float(task.detach())])[0] / global_rows

    def share(self, batch: np.ndarray) -> np.ndarray:
        """This rank's rows of a global batch's row indices ``batch`` [B] -> [B_r]."""
        return np.array_split(batch, self.group.world)[self.group.rank]

    @torch.no_grad()
    def predict(self, rec: Recommender, split: SplitArrays, batch_size: int) -> np.ndarray:
        """Logits [N] of the whole split, in row order, on every rank: each rank scores its share
        (``batch_size`` rows at a time in all) and the scores are gathered. Every rank runs as many
        batches (some empty), since each lookup is a collective."""
        world, rank = self.group.world, self.group.rank
        sizes = split_rows(len(split), world)
        start, mine = sum(sizes[:rank]), sizes[rank]
        per_rank = max(1, -(-batch_size // world))
        local = np.empty(mine, dtype=np.float32)
        was_training = rec.training
        rec.eval()
        for lo in range(0, max(sizes), per_rank):
            a, b = min(lo, mine), min(lo + per_rank, mine)
            ids, dense, _ = batch_tensors(split, np.arange(start + a, start + b))
            local[a:b] = rec(ids, dense).float().numpy()
        rec.train(was_training)
        return self.group.gather_rows(local, sizes)

    # ------------------------------------------------------------------ weights and checkpoints
    def local_weights(self, rec: Recommender) -> dict[str, torch.Tensor]:
        """What this rank holds of ``rec``'s state: the replicated model and searcher, its table shards."""
        shards = rec.embedding.lookup.local_shards()
        return {
            **rec.model.state_dict(prefix="model."),
            **rec.embedding.searcher.state_dict(prefix=SEARCHER_PREFIX),
            **{LOOKUP_PREFIX + key: value for key, value in shards.items()},
        }

    def load_local_weights(self, rec: Recommender, state: dict[str, torch.Tensor]) -> None:
        """Inverse of :meth:`local_weights` (strict: a key missing or left over is an error)."""
        parts: dict[str, dict[str, torch.Tensor]] = {"model.": {}, SEARCHER_PREFIX: {}, LOOKUP_PREFIX: {}}
        for key, value in state.items():
            prefix = next((p for p in parts if key.startswith(p)), None)
            if prefix is None:
                raise KeyError(f"{key!r} is no part of this model")
            parts[prefix][key.removeprefix(prefix)] = value
        rec.model.load_state_dict(parts["model."])
        rec.embedding.searcher.load_state_dict(parts[SEARCHER_PREFIX])
        rec.embedding.lookup.load_local_shards(parts[LOOKUP_PREFIX])

    def save_weights(self, name: str, rec: Recommender) -> None:
        """This rank's weights as ``ranks/<r>/<name>`` (safetensors, atomically)."""
        self.own.mkdir(parents=True, exist_ok=True)
        save_tensors(self.own / name, self.local_weights(rec))

    def load_weights(self, name: str, rec: Recommender) -> None:
        self.load_local_weights(rec, read_weights(self.own / name))

    def weights_path(self, name: str) -> Path:
        return self.own / name

    def save_checkpoint(self, shared: dict[str, Any], own: dict[str, Any]) -> None:
        """Commit a checkpoint: this rank's ``own`` state as the next generation, then (rank 0) ``shared``
        naming it as ``checkpoint.pt``, then the older generations go. Every rank must call it."""
        generation = self.generation + 1
        self.own.mkdir(parents=True, exist_ok=True)
        save_torch(self.own / f"checkpoint-{generation}.pt", own)
        self.group.barrier()  # every rank's part is on disk before the commit names it
        if self.is_main:
            save_torch(self.folder.checkpoint, {**shared, "processes": self.group.world, "generation": generation})
        self.group.barrier()
        self.generation = generation
        self.remove_stale_generations()

    def load_checkpoint(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The committed checkpoint: (shared part, this rank's part)."""
        shared = load_torch(self.folder.checkpoint)
        if shared.get("processes") != self.group.world or "generation" not in shared:
            raise ValueError(
                f"{self.folder.checkpoint} was written by {shared.get('processes', 1)} process(es), not "
                f"{self.group.world}"
            )
        own = load_torch(self.own / f"checkpoint-{shared['generation']}.pt")
        self.generation = shared["generation"]
        return shared, own

    def remove_stale_generations(self) -> None:
        """This rank's checkpoint files other than the committed generation (a kill may leave a newer one)."""
        for path in self.own.glob("checkpoint-*.pt"):
            match = GENERATION.fullmatch(path.name)
            if match and int(match.group(1)) != self.generation:
                path.unlink(missing_ok=True)

    # ------------------------------------------------------------------ checks
    def first_error(self, error: str | None) -> str | None:
        """The first rank's ``error`` (``None`` when no rank has one), on every rank."""
        errors = [None] * self.group.world
        torch.distributed.all_gather_object(errors, error)
        return next((e for e in errors if e is not None), None)

    def largest_weight(self, rec: Recommender) -> float:
        """The largest |w| over every rank's weights (``inf`` for a non-finite one)."""
        local = max(
            (
                float(t.abs().nan_to_num(posinf=np.inf).max())
                for t in self.local_weights(rec).values()
                if t.is_floating_point() and t.numel()
            ),
            default=0.0,
        )
        values = [0.0] * self.group.world
        torch.distributed.all_gather_object(values, local)
        return max(values)

    # ------------------------------------------------------------------ export
    def gathered(self, rec: Recommender, build: Callable[[], Recommender]) -> Recommender | None:
        """On rank 0, an unsharded copy of ``rec`` (``build()`` makes the same model, which it fills with
        the gathered tables and the replicated weights and state); ``None`` on the others. Every rank
        must call it; the global RNG is left as it was."""
        tables = rec.embedding.lookup.gather_tables(dst=0)
        state = rec.embedding.searcher.gather_state(rec.embedding.lookup, dst=0)  # the method's, whole
        if tables is None or state is None:
            return None
        with torch.random.fork_rng(devices=[]):
            copy = build()
        copy.model.load_state_dict(rec.model.state_dict())
        searcher = copy.embedding.searcher
        searcher.load_state_dict(state[0])
        searcher.load_checkpoint_state(state[1])
        del state
        with torch.no_grad():
            for name, table in tables.items():
                copy.embedding.lookup.table_weight(name).copy_(table)
        del tables
        return copy.eval()
