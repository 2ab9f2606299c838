"""Optimizers: Adam (coupled decay, as torch defines it), AdamW, Adagrad, SGD; dense, sparse or fused tables."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING

import torch
from torch import nn

from embdim.config import TrainConfig
from embdim.lookup import FusedTableOptimizer, Lookup

if TYPE_CHECKING:
    from embdim.recommender import Recommender

DENSE = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "adagrad": torch.optim.Adagrad,
    "sgd": torch.optim.SGD,
}


def _make(name: str, groups: list[dict], fused: bool) -> torch.optim.Optimizer:
    cls = DENSE[name]
    kwargs = {}
    if fused and "fused" in inspect.signature(cls).parameters:
        kwargs["fused"] = True
    try:
        return cls(groups, **kwargs)
    except (RuntimeError, ValueError, TypeError):  # no fused kernel for this optimizer/device
        return cls(groups)


def recommender_optimizers(
    rec: Recommender, cfg: TrainConfig, sparse: bool, lookup: Lookup | None = None
) -> list[torch.optim.Optimizer | FusedTableOptimizer]:
    """:func:`build_optimizers` for a whole recommender: its tables, its searcher's own groups
    (``Searcher.optimizer_groups``) and every other trainable parameter; frozen ones are left out."""
    tables = rec.table_parameters()
    own_groups = [
        g | {"params": [p for p in g["params"] if p.requires_grad]} for g in rec.embedding.searcher.optimizer_groups()
    ]
    taken = {id(p) for p in tables} | {id(p) for g in own_groups for p in g["params"]}
    others = [p for p in rec.parameters() if id(p) not in taken and p.requires_grad]
    return build_optimizers(tables, others, cfg, sparse, lookup=lookup, own_groups=own_groups)


def build_optimizers(
    tables: list[nn.Parameter],
    others: list[nn.Parameter],
    cfg: TrainConfig,
    sparse: bool,
    lookup: Lookup | None = None,
    own_groups: list[dict] | None = None,
) -> list[torch.optim.Optimizer | FusedTableOptimizer]:
    """One optimizer for everything (dense grads), or a sparse one for the tables plus a dense one.

    When ``cfg.fused`` is on and ``lookup`` can fuse ``cfg.optimizer`` into its backward pass
    (TorchRec: adagrad, sgd), the lookup's own tables leave the torch optimizers and a
    :class:`~embdim.lookup.FusedTableOptimizer` (no-op ``step``, real ``state_dict``) takes their
    place in the list; other tables (a sparse first-order table) keep a torch optimizer.

    Args:
        tables: the raw embedding tables (and, with sparse gradients, the models' first-order tables).
        others: every other trainable parameter (model, searcher).
        cfg: learning rates, decay and the optimizer name.
        sparse: whether the tables produce sparse gradients.
        lookup: the backend that owns the tables (a fused backend updates them itself).
        own_groups: parameter groups with their own settings (``Searcher.optimizer_groups``), not
            listed in ``others``; what a group leaves out follows ``cfg``.
    """
    emb_lr = cfg.embedding_lr or cfg.lr
    dense_defaults = {"lr": cfg.lr, "weight_decay": cfg.weight_decay}
    dense_groups = [{"params": others, **dense_defaults}] if others else []
    dense_groups += [dense_defaults | group for group in own_groups or () if group["params"]]
    out: list[torch.optim.Optimizer | FusedTableOptimizer] = []
    if lookup is not None and cfg.fused:
        owned = {id(p) for p in lookup.parameters()}  # before fusing: fusing may replace them
        fused = lookup.fuse_optimizer(cfg.optimizer, emb_lr)
        if fused is not None:
            if cfg.embedding_weight_decay > 0:
                raise ValueError("train.embedding_weight_decay is not applied by fused tables: set train.fused=false")
            out.append(fused)
            tables = [p for p in tables if id(p) not in owned]
    if not sparse:
        groups = [{"params": tables, "lr": emb_lr, "weight_decay": cfg.embedding_weight_decay}, *dense_groups]
        groups = [g for g in groups if g["params"]]
        return [*out, _make(cfg.optimizer, groups, cfg.fused)] if groups else out
    if cfg.embedding_weight_decay > 0:
        raise ValueError("train.embedding_weight_decay needs dense gradients: set embedding.sparse=false")
    if tables:
        out.append(_sparse_optimizer(cfg.optimizer, tables, emb_lr))
    return [*out, *([_make(cfg.optimizer, dense_groups, cfg.fused)] if dense_groups else [])]


def _sparse_optimizer(name: str, tables: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """The torch optimizer for tables with sparse gradients."""
    if name == "adam":
        return torch.optim.SparseAdam(tables, lr=lr)
    if name == "adagrad":
        return torch.optim.Adagrad(tables, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(tables, lr=lr)
    raise ValueError(f"train.optimizer={name} has no sparse form: use adam, adagrad or sgd")
