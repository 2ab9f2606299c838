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

CLIP_EPS = 1e-6  # added to the norm before dividing, as torch.nn.utils.clip_grad_norm_ does

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
    rec: Recommender, cfg: TrainConfig, lookup: Lookup | None = None
) -> list[torch.optim.Optimizer | FusedTableOptimizer]:
    """:func:`build_optimizers` for a whole recommender: its tables (:meth:`Recommender.table_parameters`),
    its searcher's own groups (``Searcher.optimizer_groups``) and every other trainable parameter; frozen
    ones are left out."""
    dense_tables, sparse_tables = rec.table_parameters()
    own_groups = [
        g | {"params": [p for p in g["params"] if p.requires_grad]} for g in rec.embedding.searcher.optimizer_groups()
    ]
    taken = {id(p) for p in [*dense_tables, *sparse_tables]} | {id(p) for g in own_groups for p in g["params"]}
    others = [p for p in rec.parameters() if id(p) not in taken and p.requires_grad]
    dense_tables = [p for p in dense_tables if p.requires_grad]
    sparse_tables = [p for p in sparse_tables if p.requires_grad]
    return build_optimizers(dense_tables, others, cfg, lookup, own_groups, sparse_tables)


def build_optimizers(
    tables: list[nn.Parameter],
    others: list[nn.Parameter],
    cfg: TrainConfig,
    lookup: Lookup | None = None,
    own_groups: list[dict] | None = None,
    sparse_tables: list[nn.Parameter] | None = None,
) -> list[torch.optim.Optimizer | FusedTableOptimizer]:
    """The optimizers of one training stage: the tables at ``train.embedding_lr`` with the embedding L2,
    everything else at ``train.lr`` with ``train.weight_decay``.

    When ``cfg.fused`` is on and ``lookup`` can fuse ``cfg.optimizer`` into its backward pass
    (TorchRec: adagrad, sgd), the lookup's own tables leave the torch optimizers and a
    :class:`~embdim.lookup.FusedTableOptimizer` (no-op ``step``, real ``state_dict``) takes their
    place in the list; tables with sparse gradients get the optimizer's sparse form; the rest share
    one torch optimizer with a parameter group each. Every group records its ``base_lr`` for the
    learning-rate schedule (:func:`set_lr_scale`).

    Args:
        tables: tables with dense gradients (raw tables, first-order tables, dense features' vectors).
        others: every other trainable parameter (model, searcher).
        cfg: learning rates, decay and the optimizer name.
        lookup: the backend that owns the raw tables (a fused backend updates them itself).
        own_groups: parameter groups with their own settings (``Searcher.optimizer_groups``), not
            listed in ``others``; what a group leaves out follows ``cfg``.
        sparse_tables: tables with sparse gradients.
    """
    emb_lr = cfg.embedding_lr or cfg.lr
    table_decay = cfg.embedding_weight_decay if cfg.embedding_decay == "optimizer" else 0.0
    sparse_tables = list(sparse_tables or ())
    dense_defaults = {"lr": cfg.lr, "weight_decay": cfg.weight_decay}
    out: list[torch.optim.Optimizer | FusedTableOptimizer] = []
    if lookup is not None and cfg.fused:
        owned = {id(p) for p in lookup.parameters()}  # before fusing: fusing may replace them
        fused = lookup.fuse_optimizer(cfg.optimizer, emb_lr)
        if fused is not None:
            out.append(fused)
            tables = [p for p in tables if id(p) not in owned]
            sparse_tables = [p for p in sparse_tables if id(p) not in owned]
            if table_decay > 0:
                raise ValueError(
                    "train.embedding_weight_decay: fused tables cannot decay every row each step; "
                    "set train.embedding_decay=looked_up"
                )
    if sparse_tables:
        if table_decay > 0:
            raise ValueError(
                "train.embedding_weight_decay: sparse table gradients cannot decay every row each step; "
                "set train.embedding_decay=looked_up"
            )
        out.append(_sparse_optimizer(cfg.optimizer, sparse_tables, emb_lr))
    groups = [
        {"params": tables, "lr": emb_lr, "weight_decay": table_decay},
        {"params": others, **dense_defaults},
        *(dense_defaults | group for group in own_groups or ()),
    ]
    groups = [g for g in groups if g["params"]]
    if groups:
        out.append(_make(cfg.optimizer, groups, cfg.fused))
    for opt in out:
        for group in opt.param_groups:
            group.setdefault("base_lr", group["lr"])
    return out


def set_lr_scale(optimizers: list, scale: float, min_lr: float = 0.0) -> None:
    """Every group's rate to ``base_lr * scale``, but not below ``min_lr`` (or its base rate, if lower)."""
    for opt in optimizers:
        for group in opt.param_groups:
            base = group["base_lr"]
            group["lr"] = max(base * scale, min(min_lr, base))
        if isinstance(opt, FusedTableOptimizer):  # its updates happen in the next backward: tell it now
            opt.apply_lr()


def clip_gradients(params: list[nn.Parameter], max_norm: float) -> float:
    """Scale the gradients of ``params`` so that their global L2 norm is at most ``max_norm``.

    Sparse gradients are coalesced first (their norm counts each row once). Returns the norm before
    clipping.
    """
    grads = []
    for p in params:
        if p.grad is None:
            continue
        if p.grad.is_sparse:
            p.grad = p.grad.coalesce()
            grads.append(p.grad._values())
        else:
            grads.append(p.grad)
    if not grads:
        return 0.0
    total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    coef = max_norm / (float(total) + CLIP_EPS)
    if coef < 1.0:
        torch._foreach_mul_(grads, coef)
    return float(total)


def _sparse_optimizer(name: str, tables: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """The torch optimizer for tables with sparse gradients."""
    if name == "adam":
        return torch.optim.SparseAdam(tables, lr=lr)
    if name == "adagrad":
        return torch.optim.Adagrad(tables, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(tables, lr=lr)
    raise ValueError(f"train.optimizer={name} has no sparse form: use adam, adagrad or sgd")
