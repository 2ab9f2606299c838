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

Sharding (a later issue, not built here): the collection is built in one place
(:func:`bag_configs` + :meth:`TorchRecLookup._plain` / :meth:`TorchRecLookup._fused`) and is only
ever called with a KJT whose ``KeyedTensor.values()`` is read, so a ``DistributedModelParallel``
wrapper can shard ``self.collection`` (table-wise, column-wise over gloo; fused tables need
``dim % 4 == 0``, which the padding gives) without changing ``forward``. ``table_weight`` (and the
state-dict hooks, which will see ShardedTensors) are where shards are then gathered; torchrec
averages gradients over ranks, so learning rates will need scaling there.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.modules.fused_embedding_modules import FusedEmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from embdim.lookup import FUSABLE_OPTIMIZERS, FusedTableOptimizer, Lookup, RawEmbeddings, TableSpec

#: torch.optim.Adagrad's default eps; fbgemm's default (1e-8) would make fused and torch Adagrad differ.
TORCH_ADAGRAD_EPS = 1e-10

#: fbgemm's fused kernels need table widths divisible by this; narrower widths are zero-padded (the
#: padding never receives a gradient, so it stays zero, and it is hidden from outputs and state dicts).
FUSED_DIM_MULTIPLE = 4


def padded_dim(dim: int) -> int:
    """``dim`` rounded up to a multiple of :data:`FUSED_DIM_MULTIPLE`."""
    return -(-dim // FUSED_DIM_MULTIPLE) * FUSED_DIM_MULTIPLE


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
        if name not in FUSABLE_OPTIMIZERS:
            raise ValueError(
                f"train.optimizer={name} cannot be fused into TorchRec's backward on CPU (fbgemm has no CPU "
                f"Adam): use train.optimizer={' or '.join(FUSABLE_OPTIMIZERS)}, or train.fused=false to train the "
                "TorchRec tables with torch optimizers"
            )
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
        if self.fused_name is None:
            return []
        coll = self.collection
        # torchrec groups tables by (pooling, dtype) into one fbgemm module each
        return list(zip(coll._key_to_tables.values(), coll._emb_modules, strict=True))

    def fused_states(self) -> dict[str, list[torch.Tensor]]:
        """Per table, the fbgemm optimizer state tensors (views, updated in place)."""
        out = {}
        for tables, module in self._fused_modules():
            for table, states in zip(tables, module._emb_module.split_optimizer_states(), strict=True):
                out[table.name] = list(states)
        return out

    def set_fused_lr(self, lr: float) -> None:
        for _, module in self._fused_modules():
            module._emb_module.set_learning_rate(lr)

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
        pooled = self.collection(kjt).values()  # [B, sum_t F_t * W_t], W_t the physical width
        out, start = [], 0
        for spec, width in zip(self.specs, self.widths, strict=True):
            span = len(spec.field_ids) * width
            table = pooled[:, start : start + span].view(batch, len(spec.field_ids), width)
            out.append(table if width == spec.dim else table[..., : spec.dim])
            start += span
        rows = torch.split(shifted, [len(spec.field_ids) for spec in self.specs], dim=1)
        return RawEmbeddings(self.specs, out, self.num_fields, rows)

    def table_weight(self, name: str) -> torch.Tensor:
        weight = self.collection.embedding_bags[name].weight
        dim = self._spec(name).dim
        return weight if weight.shape[1] == dim else weight[:, :dim]

    def _spec(self, name: str) -> TableSpec:
        return next(s for s in self.specs if s.name == name)

    def _load_public_state_dict(self, state: dict[str, Any], prefix: str, *args: Any) -> None:
        """``tables.<name>.weight`` [n, D] -> the collection's (padded) parameter, padding kept."""
        for spec in self.specs:
            key = f"{prefix}tables.{spec.name}.weight"
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
    """The collection's ``embedding_bags.<name>.weight`` -> ``tables.<name>.weight`` without padding."""
    for spec in module.specs:
        value = state.pop(f"{prefix}{COLLECTION_KEY.format(name=spec.name)}")
        state[f"{prefix}tables.{spec.name}.weight"] = (
            value if value.shape[1] == spec.dim else value[:, : spec.dim].contiguous()
        )
