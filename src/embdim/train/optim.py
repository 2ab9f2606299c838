"""Optimizers: Adam (coupled decay, as torch defines it), AdamW, Adagrad, SGD; dense or sparse tables."""

from __future__ import annotations

import inspect

import torch
from torch import nn

from embdim.config import TrainConfig
from embdim.lookup import Lookup

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


def build_optimizers(
    tables: list[nn.Parameter],
    others: list[nn.Parameter],
    cfg: TrainConfig,
    sparse: bool,
    lookup: Lookup | None = None,
) -> list[torch.optim.Optimizer]:
    """One optimizer for everything (dense grads), or a sparse one for the tables plus a dense one.

    Args:
        tables: the raw embedding tables.
        others: every other trainable parameter (model, searcher).
        cfg: learning rates, decay and the optimizer name.
        sparse: whether the tables produce sparse gradients.
        lookup: the backend that owns the tables (a fused backend updates them itself).
    """
    emb_lr = cfg.embedding_lr or cfg.lr
    dense_groups = [{"params": others, "lr": cfg.lr, "weight_decay": cfg.weight_decay}] if others else []
    if not sparse:
        groups = [{"params": tables, "lr": emb_lr, "weight_decay": cfg.embedding_weight_decay}, *dense_groups]
        return [_make(cfg.optimizer, [g for g in groups if g["params"]], cfg.fused)]
    if cfg.embedding_weight_decay > 0:
        raise ValueError("train.embedding_weight_decay needs dense gradients: set embedding.sparse=false")
    if cfg.optimizer == "adam":
        table_opt: torch.optim.Optimizer = torch.optim.SparseAdam(tables, lr=emb_lr)
    elif cfg.optimizer == "adagrad":
        table_opt = torch.optim.Adagrad(tables, lr=emb_lr)
    elif cfg.optimizer == "sgd":
        table_opt = torch.optim.SGD(tables, lr=emb_lr)
    else:
        raise ValueError(f"train.optimizer={cfg.optimizer} has no sparse form: use adam, adagrad or sgd")
    return [table_opt, *([_make(cfg.optimizer, dense_groups, cfg.fused)] if dense_groups else [])]
