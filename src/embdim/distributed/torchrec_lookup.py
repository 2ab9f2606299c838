"""``torchrec`` lookup backend: the searcher's tables as a TorchRec EmbeddingBagCollection.

Each :class:`~embdim.lookup.TableSpec` becomes one ``EmbeddingBagConfig`` (same name, ``num_rows``
rows, ``dim`` columns) read by one KeyedJaggedTensor feature per field (``f<field>``). Every bag holds
exactly one id, so sum pooling returns the row itself: ``forward(ids [B, F])`` gives the same
:class:`~embdim.lookup.RawEmbeddings` (``[B, F_t, D_t]`` per table) as
:class:`~embdim.lookup.TorchLookup`. Ids are shifted by the field's row offset inside its table,
exactly as in the torch backend, so the two backends hold identical tables (same row order), and
state dicts use TorchLookup's keys (``tables.<name>.weight``): checkpoints, ``train.init_from`` and
exports carry over between the backends.

Training modes:

* plain ``EmbeddingBagCollection``, trained by torch optimizers: dense gradients, or sparse ones
  when ``sparse=True`` (each ``nn.EmbeddingBag`` then emits a sparse gradient).
* fused (:meth:`TorchRecLookup.fuse_optimizer`, called by :func:`embdim.train.optim.build_optimizers`
  when ``train.fused`` is on): the collection is replaced by a ``FusedEmbeddingBagCollection`` whose
  fbgemm kernel applies Adagrad or SGD to the looked-up rows inside the backward pass; the tables
  get no ``.grad`` and no torch optimizer. fbgemm has no CPU Adam, so fused Adam is refused with an
  error. Only gradients that flow through the lookup's output reach fused tables: a searcher whose
  penalty reads :meth:`table_weight` directly must train with ``train.fused=false``.

Fused tables are zero-padded to a width divisible by 4 (fbgemm's requirement); outputs,
``table_weight`` and state dicts hide the padding. TorchRec draws its own initial weights, which
are overwritten; the global RNG is restored around those draws so that a seed gives the same
tables, model weights and dropout masks as the torch backend.

Sharding (:meth:`TorchRecLookup.shard`, for a run on several processes): TorchRec's planner places
the tables on the ranks of the default process group (table-wise, column-wise or table-column-wise:
on the CPU TorchRec shards rows only on GPUs, and model-parallel shards have only fused kernels) and
``DistributedModelParallel`` replaces ``self.collection`` by the sharded collection in place, so
``forward`` is unchanged: each rank looks up its own slice of a batch and gets that slice's rows back
(TorchRec's all-to-alls route the ids to the shards and the vectors back). The fused optimizer's
updates follow TorchRec's gradient division: the gradient a shard applies is the mean of the ranks'
gradients, as data parallelism averages a dense layer's. A sharded lookup's tables are read and
written through :meth:`TorchRecLookup.local_shards` / :meth:`TorchRecLookup.load_local_shards` (this
rank's part, for checkpoints) and :meth:`TorchRecLookup.gather_tables` (whole tables on one rank, for
the export); ``table_weight`` refuses, since a whole table exists nowhere. State a method lays out like a
table (PEP's) follows :meth:`TorchRecLookup.column_blocks` (every rank's column blocks) and
:meth:`TorchRecLookup.local_columns` (this rank's, as views).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.modules.fused_embedding_modules import FusedEmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from embdim.distributed import CPU_SHARDING_TYPES
from embdim.errors import ConfigError
from embdim.lookup import FUSABLE_OPTIMIZERS, FusedTableOptimizer, Lookup, RawEmbeddings, TableSpec
from embdim.storage import FLOAT_BYTES

#: torch.optim.Adagrad's default eps; fbgemm's default (1e-8) would make fused and torch Adagrad differ.
TORCH_ADAGRAD_EPS = 1e-10

#: fbgemm's fused kernels need table widths divisible by this; narrower widths are zero-padded (the
#: padding never receives a gradient, so it stays zero, and it is hidden from outputs and state dicts).
FUSED_DIM_MULTIPLE = 4


#: Key of one local shard of table ``name`` in :meth:`TorchRecLookup.local_shards`: its first row and column.
SHARD_KEY = "tables.{name}.weight@{row},{col}"


def padded_dim(dim: int) -> int:
    """``dim`` rounded up to a multiple of :data:`FUSED_DIM_MULTIPLE`."""
    return -(-dim // FUSED_DIM_MULTIPLE) * FUSED_DIM_MULTIPLE


def even_column_width(dim: int, world: int) -> int:
    """The narrowest column shard that lets a ``dim``-wide table split over ``world`` ranks, a shard each
    (a multiple of :data:`FUSED_DIM_MULTIPLE`): the default ``min_column_width``.

    TorchRec's own default (128 columns) keeps any table narrower than 256 whole, and embdim's lookup
    holds every field in one table, so on a CPU, where rows do not shard, the run would sit on one rank.

    >>> even_column_width(16, 2), even_column_width(16, 8), even_column_width(10, 2)
    (8, 4, 8)
    """
    return padded_dim(-(-padded_dim(dim) // world))


def feature_name(field: int) -> str:
    """KJT key of categorical field ``field``."""
    return f"f{field}"


def bag_configs(specs: Sequence[TableSpec], pad: bool = False) -> list[EmbeddingBagConfig]:
    """One sum-pooled ``EmbeddingBagConfig`` per table, one feature per field it holds (``pad``: widths
    rounded up for the fused kernels)."""
    return [
        EmbeddingBagConfig(
            num_embeddings=spec.num_rows,
            embedding_dim=padded_dim(spec.dim) if pad else spec.dim,
            name=spec.name,
            feature_names=[feature_name(f) for f in spec.field_ids],
            pooling=PoolingType.SUM,
        )
        for spec in specs
    ]


@contextmanager
def _rng_untouched() -> Iterator[None]:
    """Restore torch's global CPU RNG state on exit (TorchRec modules draw their own throw-away init)."""
    state = torch.get_rng_state()
    try:
        yield
    finally:
        torch.set_rng_state(state)


@contextmanager
def _quiet_torchrec() -> Iterator[None]:
    """Silence TorchRec's notices about its own internals (a topology built by hand, a heuristic storage
    reservation, the deprecation of the sharded tensors its state dicts hold): not the user's to act on."""
    logger = logging.getLogger("torchrec")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        logger.setLevel(level)


def _fused_params(name: str, lr: float) -> dict[str, Any]:
    """The sharder's fused kernel settings for ``train.optimizer`` ``name`` (as the unsharded fused tables')."""
    from fbgemm_gpu.split_embedding_configs import EmbOptimType

    if name == "adagrad":
        return {"optimizer": EmbOptimType.EXACT_ADAGRAD, "learning_rate": lr, "eps": TORCH_ADAGRAD_EPS}
    return {"optimizer": EmbOptimType.EXACT_SGD, "learning_rate": lr}


class TorchRecFusedOptimizer(FusedTableOptimizer):
    """The fused tables' optimizer state (Adagrad sums of squares; none for SGD), for checkpoints.

    ``state_dict()`` copies the fbgemm state of every table; ``load_state_dict`` writes it back in
    place, so a resumed run continues exactly. A changed ``param_groups[0]["lr"]`` is pushed to the
    kernels by :meth:`apply_lr` (the trainer's schedule calls it), so it rules the next backward
    pass, where the updates happen, as a torch optimizer's next step would use it.
    """

    def __init__(self, lookup: TorchRecLookup, name: str, lr: float) -> None:
        self.lookup = lookup
        self.name = name
        self.param_groups: list[dict[str, Any]] = [{"params": [], "lr": lr}]

    def apply_lr(self) -> None:
        self.lookup.set_fused_lr(self.param_groups[0]["lr"])

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.name,
            "lr": self.param_groups[0]["lr"],
            # the live state, as a torch optimizer's state_dict holds references: a checkpoint writes it at
            # once, and a copy would cost another table's worth of memory at every save
            "state": {table: [t.detach() for t in ts] for table, ts in self.lookup.fused_states().items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("optimizer") != self.name:
            raise ValueError(
                f"checkpoint holds fused {state.get('optimizer')!r} optimizer state, this run uses {self.name!r}"
            )
        self.param_groups[0]["lr"] = state["lr"]
        self.lookup.set_fused_lr(state["lr"])
        own = self.lookup.fused_states()
        for table, tensors in state["state"].items():
            for dst, src in zip(own[table], tensors, strict=True):
                dst.copy_(src)


class TorchRecLookup(Lookup):
    """The tables of ``specs`` as one TorchRec (Fused)EmbeddingBagCollection.

    Args:
        specs: the tables.
        num_fields: F.
        sparse: sparse gradients for the non-fused tables (SparseAdam / Adagrad / SGD).

    ``forward(ids [B, F] int64) -> RawEmbeddings`` with ``[B, F_t, D_t]`` per table.
    """

    def __init__(self, specs: Sequence[TableSpec], num_fields: int, sparse: bool = False) -> None:
        super().__init__(specs, num_fields)
        self.sparse = sparse
        self.sharded = False  # the collection is sharded over the default process group's ranks (shard())
        self.collection: nn.Module = self._plain()
        with torch.no_grad():
            for spec in self.specs:
                # the same draws as TorchLookup (nn.Embedding's N(0, 1) reset, then N(0, std)), so a
                # seed gives the same tables, and the same model and dropout draws after them, on both
                weight = self.table_weight(spec.name)
                weight.normal_()
                weight.normal_(std=spec.init_std)
        # the collection's output order: tables in spec order, fields in each spec's order
        order = [f for spec in self.specs for f in spec.field_ids]
        row_offsets = [o for spec in self.specs for o in spec.offsets]
        self.keys = [feature_name(f) for f in order]
        self.register_buffer("order", torch.tensor(order, dtype=torch.long), persistent=False)
        self.register_buffer("row_offsets", torch.tensor(row_offsets, dtype=torch.long), persistent=False)
        self._identity_order = order == list(range(num_fields))
        self.fused_name: str | None = None
        self.widths = [spec.dim for spec in self.specs]  # physical widths in the collection (padded when fused)
        # state dicts look like TorchLookup's (``tables.<name>.weight``, unpadded) whatever the collection
        self._register_state_dict_hook(_public_state_dict)
        self._register_load_state_dict_pre_hook(self._load_public_state_dict)

    # ------------------------------------------------------------------ collections
    def _plain(self) -> EmbeddingBagCollection:
        with _rng_untouched():  # its own init is overwritten: keep the global RNG stream as TorchLookup leaves it
            ebc = EmbeddingBagCollection(tables=bag_configs(self.specs), is_weighted=False)
        if self.sparse:
            for bag in ebc.embedding_bags.values():
                bag.sparse = True  # nn.EmbeddingBag reads this flag at every forward
        return ebc

    def _fused(self, name: str, lr: float) -> FusedEmbeddingBagCollection:
        kwargs: dict[str, Any] = {"lr": lr}
        if name == "adagrad":
            kwargs["eps"] = TORCH_ADAGRAD_EPS
        with _rng_untouched():  # the weights are copied in: fusing must not shift later random draws
            return FusedEmbeddingBagCollection(
                tables=bag_configs(self.specs, pad=True),
                optimizer_type=FUSABLE_OPTIMIZERS[name],
                optimizer_kwargs=kwargs,
            )

    def fuse_optimizer(self, name: str, lr: float) -> FusedTableOptimizer:
        """Fuse ``name`` (adagrad | sgd) into the backward pass; fresh optimizer state, weights kept.

        Called again (next stage), it resets the state like a new torch optimizer would, keeping the
        same parameter objects.
        """
        _check_fusable(name)
        if self.sharded and self.fused_name != name:
            raise ValueError(f"the tables were sharded with fused {self.fused_name}, not {name}")
        if self.fused_name != name:
            fused = self._fused(name, lr)
            with torch.no_grad():
                for spec in self.specs:
                    weight = fused.embedding_bags[spec.name].weight
                    weight.zero_()
                    weight[:, : spec.dim].copy_(self.table_weight(spec.name))
            self.collection = fused
            self.fused_name = name
            self.widths = [padded_dim(spec.dim) for spec in self.specs]
        else:
            for states in self.fused_states().values():
                for t in states:
                    t.zero_()
        self.set_fused_lr(lr)
        return TorchRecFusedOptimizer(self, name, lr)

    def _fused_modules(self) -> list[tuple[list[EmbeddingBagConfig], Any]]:
        if self.fused_name is None or self.sharded:
            return []
        coll = self.collection
        # torchrec groups tables by (pooling, dtype) into one fbgemm module each
        return list(zip(coll._key_to_tables.values(), coll._emb_modules, strict=True))

    def fused_states(self) -> dict[str, list[torch.Tensor]]:
        """Per table, the fbgemm optimizer state tensors (views, updated in place; sharded: this rank's
        shards of them, none for a table held elsewhere)."""
        if self.sharded:
            return self._sharded_fused_states()
        out = {}
        for tables, module in self._fused_modules():
            # SGD keeps no state: fbgemm then lists no tables at all
            per_table = module._emb_module.split_optimizer_states() or [[] for _ in tables]
            for table, states in zip(tables, per_table, strict=True):
                out[table.name] = list(states)
        return out

    def set_fused_lr(self, lr: float) -> None:
        if self.sharded:  # every fbgemm kernel this rank runs, whatever TorchRec grouped into it
            for module in self.collection.modules():
                if hasattr(module, "set_learning_rate") and hasattr(module, "split_optimizer_states"):
                    module.set_learning_rate(lr)
            return
        for _, module in self._fused_modules():
            module._emb_module.set_learning_rate(lr)

    # ------------------------------------------------------------------ sharding
    def shard(
        self,
        optimizer: str,
        lr: float,
        types: Sequence[str] = CPU_SHARDING_TYPES,
        min_column_width: int | None = None,
        memory_per_process: int | None = None,
        local_world: int | None = None,
    ) -> dict[str, Any]:
        """Shard the tables over the ranks of the default process group, with ``optimizer`` (adagrad |
        sgd) at rate ``lr`` fused into their backward; every rank must call it, with the same tables.

        TorchRec's planner chooses, per table, one of ``types`` (``embedding.sharding.types``) and the
        ranks, within ``memory_per_process`` bytes per rank (weights and optimizer state; default
        TorchRec's) and column shards at least ``min_column_width`` wide (default: a table's width shared
        out over the ranks, :func:`even_column_width`). Rank 0 plans and the plan is
        broadcast; the current weights are copied into the shards (widths padded to a multiple of
        :data:`FUSED_DIM_MULTIPLE`). Returns the plan as JSON-able data: per table its sharding type,
        ranks and shards (rank, first row and column, rows and columns).
        """
        from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
        from torchrec.distributed.model_parallel import DistributedModelParallel
        from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
        from torchrec.distributed.planner.storage_reservations import FixedPercentageStorageReservation

        _check_fusable(optimizer)
        if self.sharded or self.fused_name is not None:
            raise RuntimeError("shard() takes the plain collection: call it before any fuse_optimizer()")
        world, rank = dist.get_world_size(), dist.get_rank()
        with _rng_untouched():
            padded = EmbeddingBagCollection(tables=bag_configs(self.specs, pad=True), is_weighted=False)
        with torch.no_grad():
            for spec in self.specs:
                weight = padded.embedding_bags[spec.name].weight
                weight.zero_()
                weight[:, : spec.dim].copy_(self.table_weight(spec.name))
        self.collection = padded  # the unpadded tables are freed
        sharder = EmbeddingBagCollectionSharder(fused_params=_fused_params(optimizer, lr))
        constraints = {
            spec.name: ParameterConstraints(
                sharding_types=list(types),
                compute_kernels=["fused"],
                min_partition=min_column_width or even_column_width(spec.dim, world),
            )
            for spec in self.specs
        }
        # the fx notice is raised at the first sharded lookup, once per process, about TorchRec's own tracing
        logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)
        with _quiet_torchrec():
            topology = Topology(
                world_size=world,
                compute_device="cpu",
                ddr_cap=memory_per_process,
                local_world_size=local_world or world,
            )
            # nothing else shares a rank's memory cap with the shards here: no reservation on top of it
            planner = EmbeddingShardingPlanner(
                topology=topology, constraints=constraints, storage_reservation=FixedPercentageStorageReservation(0.0)
            )
            plan, error = None, None
            if rank == 0:  # planned once and broadcast, so a plan that fails, fails on every rank alike
                try:
                    plan = planner.plan(self, [sharder])
                except Exception as err:  # PlannerError, or a RuntimeError for constraints nothing meets
                    error = f"{type(err).__name__}: {err}"
            box = [(plan, error)]
            dist.broadcast_object_list(box, src=0)
            plan, error = box[0]
            if error is not None:
                raise ConfigError(
                    f"embedding.sharding: TorchRec's planner found no placement of the tables "
                    f"{[(s.name, s.num_rows, padded_dim(s.dim)) for s in self.specs]} on {world} processes with "
                    f"types {list(types)}, memory_per_process={memory_per_process}, "
                    f"min_column_width={min_column_width or 'default (the width shared out over the processes)'} "
                    f"({error.splitlines()[0][:300]}); allow more embedding.sharding.types, raise "
                    "embedding.sharding.memory_per_process or use more processes"
                )
            # shards self.collection in place (the sharded collection is what forward calls from now on)
            DistributedModelParallel(self, plan=plan, sharders=[sharder], device=torch.device("cpu"))
        self.sharded, self.fused_name = True, optimizer
        self.widths = [padded_dim(spec.dim) for spec in self.specs]
        with torch.no_grad():  # TorchRec drew its own shards: the weights are the plain collection's
            for key, shard in self.local_shards().items():
                name, (row, col) = _parse_shard_key(key)
                source = padded.embedding_bags[name].weight
                shard.copy_(source[row : row + shard.shape[0], col : col + shard.shape[1]])
        return _describe_plan(plan.plan["collection"], self.specs, world, optimizer)

    def _sharded_state(self) -> dict[str, Any]:
        with _quiet_torchrec():
            return self.collection.state_dict()

    def local_shards(self) -> dict[str, torch.Tensor]:
        """This rank's shards of the tables (views, padding included), by :data:`SHARD_KEY`; none for a
        table held elsewhere."""
        out = {}
        state = self._sharded_state()
        for spec in self.specs:
            for shard in state[f"embedding_bags.{spec.name}.weight"].local_shards():
                row, col = shard.metadata.shard_offsets
                out[SHARD_KEY.format(name=spec.name, row=row, col=col)] = shard.tensor
        return out

    def column_blocks(self, name: str) -> list[tuple[int, int, int]]:
        """Where table ``name``'s columns are: ``(rank, first column, end column)`` of every shard on every
        rank, in column order, the padding left out (a shard of padding alone is not listed). On the CPU
        every shard holds all the table's rows (TorchRec shards rows only on GPUs); a shard that does not is
        a ``NotImplementedError``."""
        spec = self._spec(name)
        sharded = self._sharded_state()[f"embedding_bags.{name}.weight"]
        blocks = []
        for meta in sharded.metadata().shards_metadata:
            (row, col), (rows, cols) = meta.shard_offsets, meta.shard_sizes
            if row != 0 or rows != spec.num_rows:
                raise NotImplementedError(
                    f"table {name!r}: a shard of rows {row}..{row + rows} of {spec.num_rows} (row-wise sharding); "
                    "state laid out like the table follows column shards only"
                )
            if col < spec.dim:
                blocks.append((meta.placement.rank(), col, min(col + cols, spec.dim)))
        return sorted(blocks, key=lambda block: block[1])

    def local_columns(self, name: str) -> list[tuple[int, int, torch.Tensor]]:
        """This rank's shards of table ``name`` as ``(first column, end column, view [num_rows, end - first])``,
        in column order, the padding left out (see :meth:`column_blocks`); none when another rank holds it."""
        dim = self._spec(name).dim
        out = []
        for key, shard in self.local_shards().items():
            table, (_, col) = _parse_shard_key(key)
            if table == name and col < dim:
                end = min(col + shard.shape[1], dim)
                out.append((col, end, shard[:, : end - col]))
        return sorted(out, key=lambda block: block[0])

    @torch.no_grad()
    def load_local_shards(self, saved: dict[str, torch.Tensor]) -> None:
        """Write :meth:`local_shards` of a checkpoint back in place; shards that do not match (another
        plan: a different number of processes or sharding) are a ``ValueError``."""
        own = self.local_shards()
        saved = {k: v for k, v in saved.items() if _is_shard_key(k)}
        if set(saved) != set(own):
            raise ValueError(
                f"the saved table shards {sorted(saved)} are not this rank's {sorted(own)} (a different "
                "train.processes or embedding.sharding)"
            )
        for key, shard in own.items():
            if saved[key].shape != shard.shape:
                raise ValueError(f"{key}: saved shard {tuple(saved[key].shape)}, this rank's {tuple(shard.shape)}")
            shard.copy_(saved[key])

    @torch.no_grad()
    def gather_tables(self, dst: int = 0) -> dict[str, torch.Tensor] | None:
        """Every table whole (``[num_rows, dim]``, padding dropped) on rank ``dst``, ``None`` on the others;
        every rank must call it."""
        state = self._sharded_state()
        out = {}
        for spec in self.specs:
            sharded = state[f"embedding_bags.{spec.name}.weight"]
            with _quiet_torchrec():
                whole = torch.empty(tuple(sharded.size())) if dist.get_rank() == dst else None
                sharded.gather(dst=dst, out=whole)
            if whole is not None:
                out[spec.name] = whole if whole.shape[1] == spec.dim else whole[:, : spec.dim].contiguous()
        return out if dist.get_rank() == dst else None

    def _sharded_fused_states(self) -> dict[str, list[torch.Tensor]]:
        with _quiet_torchrec():
            states = self.collection.fused_optimizer.state_dict()["state"]
        out: dict[str, list[torch.Tensor]] = {}
        for spec in self.specs:
            suffix = f"embedding_bags.{spec.name}.weight"
            per_state = next((v for k, v in states.items() if k.endswith(suffix)), {})
            out[spec.name] = [s.tensor for _, t in sorted(per_state.items()) for s in t.local_shards()]
        return out

    # ------------------------------------------------------------------ lookup
    def forward(self, ids: torch.Tensor) -> RawEmbeddings:
        batch = ids.shape[0]
        cols = ids if self._identity_order else ids[:, self.order]
        shifted = cols + self.row_offsets  # [B, F] rows in collection order
        values = shifted.t().reshape(-1)  # feature-major [F * B]
        n = values.numel()
        kjt = KeyedJaggedTensor(
            keys=self.keys,
            values=values,
            lengths=torch.ones(n, dtype=torch.int32),
            offsets=torch.arange(n + 1, dtype=torch.int32),
            stride=batch,
        )
        keyed = self.collection(kjt)
        pooled = keyed.values()  # [B, sum_t F_t * W_t], W_t the physical width
        if self.sharded and keyed.keys() != self.keys:  # a sharded collection returns its features by shard
            per_key = dict(zip(keyed.keys(), torch.split(pooled, keyed.length_per_key(), dim=1), strict=True))
            pooled = torch.cat([per_key[key] for key in self.keys], dim=1)
        out, start = [], 0
        for spec, width in zip(self.specs, self.widths, strict=True):
            span = len(spec.field_ids) * width
            table = pooled[:, start : start + span].view(batch, len(spec.field_ids), width)
            out.append(table if width == spec.dim else table[..., : spec.dim])
            start += span
        rows = torch.split(shifted, [len(spec.field_ids) for spec in self.specs], dim=1)
        return RawEmbeddings(self.specs, out, self.num_fields, rows)

    def table_weight(self, name: str) -> torch.Tensor:
        if self.sharded:
            raise RuntimeError(
                f"table {name!r} is sharded over {dist.get_world_size()} processes: no rank holds it whole "
                "(gather_tables() collects it on one rank)"
            )
        weight = self.collection.embedding_bags[name].weight
        dim = self._spec(name).dim
        return weight if weight.shape[1] == dim else weight[:, :dim]

    def _spec(self, name: str) -> TableSpec:
        return next(s for s in self.specs if s.name == name)

    def _load_public_state_dict(self, state: dict[str, Any], prefix: str, *args: Any) -> None:
        """``tables.<name>.weight`` [n, D] -> the collection's (padded) parameter, padding kept."""
        for spec in self.specs:
            key = f"{prefix}tables.{spec.name}.weight"
            if key in state and self.sharded:
                raise RuntimeError(f"{key}: a sharded lookup loads its shards with load_local_shards()")
            if key in state:
                value = state.pop(key)
                own = self.collection.embedding_bags[spec.name].weight.detach()
                if value.shape == own.shape or value.ndim != 2 or value.shape[1] != spec.dim:
                    state[f"{prefix}{COLLECTION_KEY.format(name=spec.name)}"] = value  # shape errors name the key
                else:
                    full = own.clone()
                    full[:, : spec.dim] = value
                    state[f"{prefix}{COLLECTION_KEY.format(name=spec.name)}"] = full


#: Where the collection keeps table ``name`` (EmbeddingBagCollection and its fused form alike).
COLLECTION_KEY = "collection.embedding_bags.{name}.weight"


def _public_state_dict(module: TorchRecLookup, state: dict[str, Any], prefix: str, *args: Any) -> None:
    """The collection's ``embedding_bags.<name>.weight`` -> ``tables.<name>.weight`` without padding
    (sharded: TorchRec's sharded tensor, padding included, renamed only)."""
    for spec in module.specs:
        value = state.pop(f"{prefix}{COLLECTION_KEY.format(name=spec.name)}")
        if module.sharded:
            state[f"{prefix}tables.{spec.name}.weight"] = value
            continue
        state[f"{prefix}tables.{spec.name}.weight"] = (
            value if value.shape[1] == spec.dim else value[:, : spec.dim].contiguous()
        )


def _check_fusable(name: str) -> None:
    if name not in FUSABLE_OPTIMIZERS:
        raise ValueError(
            f"train.optimizer={name} cannot be fused into TorchRec's backward on CPU (fbgemm has no CPU "
            f"Adam): use train.optimizer={' or '.join(FUSABLE_OPTIMIZERS)}, or train.fused=false to train the "
            "TorchRec tables with torch optimizers"
        )


def _is_shard_key(key: str) -> bool:
    return key.startswith("tables.") and "@" in key


def _parse_shard_key(key: str) -> tuple[str, tuple[int, int]]:
    """:data:`SHARD_KEY` -> (table name, (first row, first column))."""
    head, _, at = key.rpartition("@")
    row, col = at.split(",")
    return head.removeprefix("tables.").removesuffix(".weight"), (int(row), int(col))


def _describe_plan(module_plan: Any, specs: Sequence[TableSpec], world: int, optimizer: str) -> dict[str, Any]:
    """A TorchRec module plan as JSON-able data: per table its sharding, ranks and shards, and per rank the
    bytes of the shards it holds (float32 weights, padding included; the fused optimizer's state comes on top)."""
    tables, rank_bytes = {}, [0] * world
    for spec in specs:
        sharding = module_plan[spec.name]
        shards = []
        for meta in sharding.sharding_spec.shards:
            rank = meta.placement.rank()
            rows, cols = meta.shard_sizes
            rank_bytes[rank] += rows * cols * FLOAT_BYTES
            shards.append(
                {
                    "rank": rank,
                    "row": meta.shard_offsets[0],
                    "column": meta.shard_offsets[1],
                    "rows": rows,
                    "columns": cols,
                }
            )
        tables[spec.name] = {
            "rows": spec.num_rows,
            "dim": spec.dim,
            "stored_dim": padded_dim(spec.dim),
            "fields": list(spec.field_ids),
            "sharding_type": sharding.sharding_type,
            "compute_kernel": sharding.compute_kernel,
            "ranks": list(sharding.ranks or []),
            "shards": shards,
        }
    return {"processes": world, "optimizer": optimizer, "tables": tables, "weight_bytes_per_rank": rank_bytes}
