"""Building blocks shared by the CTR models: MLPs, first-order terms, dense-as-fields, interactions.

Every interaction here is well-defined on exact zeros and does not depend on the embedding width ``d``
beyond what the input tensor carries, so zero-padded or pruned embeddings are handled as-is.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from embdim.storage import field_bounds

#: Activation names accepted by :class:`MLP`.
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "leaky_relu": nn.LeakyReLU,
}

#: Std of the normal init of the per-dense-feature vectors in :class:`DenseAsFields`
#: (the same scale a freshly initialised embedding row typically has).
DENSE_FIELD_INIT_STD = 0.01

#: Half of the (Σe)² - Σe² identity in :class:`FMInteraction`.
FM_HALF = 0.5

#: Number of attention projections (query, key, value) in :class:`MultiHeadSelfAttention`.
QKV = 3

#: :class:`Dropout` draws 15 random bits per element, so its probability is a multiple of 1 / this.
DROPOUT_RESOLUTION = 1 << 15
DROPOUT_BITS = DROPOUT_RESOLUTION - 1
#: 16-bit draws per 64-bit random word.
DRAWS_PER_WORD = 4


class _DropoutMask(torch.autograd.Function):
    """``x * mask`` with ``mask`` = ``scale`` where a 15-bit uniform draw is at least ``threshold``, else 0,
    in ``x``'s dtype (one multiply forward and one backward: a bool mask would be converted in each)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, threshold: int) -> torch.Tensor:
        n = x.numel()
        # random_() on int64 fills bits 0-62 uniformly: each of a word's four 16-bit lanes has 15 low bits
        # that are uniform and independent of the others
        words = torch.empty((n + DRAWS_PER_WORD - 1) // DRAWS_PER_WORD, dtype=torch.int64, device=x.device)
        draws = words.random_().view(torch.int16)[:n].view(x.shape)
        scale = DROPOUT_RESOLUTION / (DROPOUT_RESOLUTION - threshold)  # exact for the drawn probability
        mask = ((draws & DROPOUT_BITS) >= threshold).to(x.dtype).mul_(scale)
        ctx.save_for_backward(mask)
        return x * mask

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (mask,) = ctx.saved_tensors
        return grad * mask, None


class Dropout(nn.Module):
    """Inverted dropout: in training, each element is zeroed with probability ``p`` and the rest scaled by
    ``1 / (1 - p)``; in evaluation, the identity. Any shape; ``forward(x) -> same shape and dtype``.

    Why not ``nn.Dropout``: on the CPU its mask comes from ``bernoulli_``, one generator call per element,
    which costs as much as the MLP layer's matrix product at CTR batch sizes (BENCHMARKS.md, issue 19).
    Here four elements share one 64-bit draw, each reading 15 of its bits, so ``p`` is applied rounded down
    to a multiple of 1/32768 (:data:`DROPOUT_RESOLUTION`) and the scale is exact for that probability.
    The draws come from torch's generator, so a seed fixes the masks and a checkpoint's RNG state resumes them.

    >>> drop = Dropout(0.25).train()
    >>> y = drop(torch.ones(1000))
    >>> sorted(set(y.tolist()))
    [0.0, 1.3333333730697632]
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability {p} must be in [0, 1)")
        self.p = p
        self.threshold = int(p * DROPOUT_RESOLUTION)  # draws below it are dropped

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.threshold == 0:
            return x
        return _DropoutMask.apply(x, self.threshold)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def make_activation(name: str) -> nn.Module:
    """A fresh activation module by name (see :data:`ACTIVATIONS`)."""
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; known: {', '.join(sorted(ACTIVATIONS))}") from None


def init_linear_layers(module: nn.Module) -> None:
    """Xavier-uniform weights and zero biases for every ``nn.Linear`` inside ``module``."""
    for sub in module.modules():
        if isinstance(sub, nn.Linear):
            nn.init.xavier_uniform_(sub.weight)
            if sub.bias is not None:
                nn.init.zeros_(sub.bias)


class MLP(nn.Module):
    """Feed-forward stack ``[Linear -> (BatchNorm) -> activation -> (Dropout)] * len(hidden)``.

    Args:
        in_dim: width of the input [B, in_dim].
        hidden: widths of the hidden layers; may be empty (then the MLP is the identity, or the output
            layer alone when ``output_dim`` is given).
        dropout: dropout probability after each hidden activation (no module when 0).
        batch_norm: add ``BatchNorm1d`` between each hidden linear layer and its activation.
        activation: name of the hidden activation (see :data:`ACTIVATIONS`).
        output_dim: if given, a final plain ``Linear(hidden[-1], output_dim)`` without activation.

    ``forward(x [B, in_dim]) -> [B, out_dim]`` with ``out_dim`` = ``output_dim`` if given, else
    ``hidden[-1]`` (``in_dim`` when ``hidden`` is empty).
    """

    def __init__(
        self,
        in_dim: int,
        hidden: Sequence[int],
        dropout: float = 0.0,
        batch_norm: bool = False,
        activation: str = "relu",
        output_dim: int | None = None,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_dim
        for h in hidden:
            layers.append(nn.Linear(width, h, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm1d(h))
            layers.append(make_activation(activation))
            if dropout > 0:
                layers.append(Dropout(dropout))
            width = h
        if output_dim is not None:
            layers.append(nn.Linear(width, output_dim))
            width = output_dim
        self.layers = nn.Sequential(*layers)
        self.in_dim = in_dim
        self.out_dim = width
        init_linear_layers(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, in_dim] -> [B, out_dim]."""
        return self.layers(x)

    def keep_input_columns(self, keep: torch.Tensor) -> None:
        """Replace the first linear layer by one that reads only input columns ``keep`` (int64 [K]).

        Exact for inputs that are zero in every dropped column (e.g. embedding dimensions removed by a
        cut): the dropped weights only ever multiplied zeros. Afterwards ``forward`` takes ``[B, K]``.
        """
        first = self.layers[0] if len(self.layers) else None
        if not isinstance(first, nn.Linear):
            raise ValueError("this MLP has no linear input layer to compact (hidden=[] and no output layer)")
        smaller = nn.Linear(len(keep), first.out_features, bias=first.bias is not None)
        with torch.no_grad():
            smaller.weight.copy_(first.weight[:, keep])
            if first.bias is not None:
                smaller.bias.copy_(first.bias)
        self.layers[0] = smaller
        self.in_dim = len(keep)


def kept_input_columns(field_widths: Sequence[int], dim: int, extra_fields: int = 0) -> torch.Tensor:
    """Columns of ``flatten([B, F + extra, dim])`` a cut embedding can make non-zero: int64 [K].

    Field ``f`` keeps its first ``field_widths[f]`` of ``dim`` columns; the ``extra_fields`` vectors
    after the ``F`` embeddings (dense-as-fields) keep all ``dim``.
    """
    widths = [*field_widths, *([dim] * extra_fields)]
    if any(not 0 <= w <= dim for w in widths):
        raise ValueError(f"field widths must lie in [0, {dim}], got {list(field_widths)}")
    return torch.tensor([f * dim + j for f, w in enumerate(widths) for j in range(w)], dtype=torch.long)


class FeatureTable(nn.Module):
    """A model layer holding one learned row per feature value or dense feature (first-order weights,
    dense features' vectors). Trainers treat its parameters like the embedding tables: the tables'
    learning rate and L2 (``train.embedding_lr``, ``train.embedding_weight_decay``)."""

    def __init__(self) -> None:
        super().__init__()
        self._l2_terms: list[torch.Tensor] | None = None  # open while recording_l2() is

    def table_parameters(self) -> list[nn.Parameter]:
        """The parameters that hold rows (biases and the like are not tables)."""
        raise NotImplementedError

    @contextmanager
    def recording_l2(self) -> Iterator[list[torch.Tensor]]:
        """Within the block, each forward appends to the yielded list ``sum ||w_r||^2`` over the distinct
        rows it read (the looked-up form of the embedding L2; 0-d tensors).

        The term is computed from the rows the forward gathered, not from a second lookup: a sparse table
        then gets one gradient per step, where a second lookup's would have to be added to it (a sparse
        addition that costs more than the lookups themselves)."""
        self._l2_terms = []
        try:
            yield self._l2_terms
        finally:
            self._l2_terms = None


class FeaturesLinear(FeatureTable):
    """First-order (logistic-regression) term over the categorical ids, plus dense values and a bias.

    One 1-wide table ``nn.Embedding(sum(vocab_sizes), 1)`` holds a weight per id of every field; field
    ``f``'s ids are shifted by ``offsets[f] = sum(vocab_sizes[:f])``. Dense features (if any) get one
    weight each (``value * w``). The table starts at zero so the term starts neutral.

    Args:
        vocab_sizes: ids per categorical field.
        num_dense: number of dense float features included in the term (0: none).
        bias: add a learned scalar bias.
        sparse: make the table produce sparse gradients (for optimisers that accept them).

    ``forward(ids [B, F] int64, dense [B, Dn] | None) -> [B]``.
    """

    def __init__(self, vocab_sizes: Sequence[int], num_dense: int = 0, bias: bool = True, sparse: bool = False) -> None:
        super().__init__()
        bounds = torch.from_numpy(field_bounds(vocab_sizes))
        self.register_buffer("offsets", bounds[:-1].clone(), persistent=False)
        self.weight = nn.Embedding(int(bounds[-1]), 1, sparse=sparse)
        self.dense = nn.Linear(num_dense, 1, bias=False) if num_dense > 0 else None
        self.bias = nn.Parameter(torch.zeros(1)) if bias else None
        self.init_weights()

    @property
    def sparse(self) -> bool:
        """Whether the id table produces sparse gradients (then a sparse optimizer must own it)."""
        return self.weight.sparse

    @sparse.setter
    def sparse(self, value: bool) -> None:
        # nn.Embedding reads the flag at every forward, so it can follow embedding.sparse after construction
        self.weight.sparse = value

    def init_weights(self) -> None:
        """Zero table, zero bias, Xavier dense weights."""
        nn.init.zeros_(self.weight.weight)
        if self.dense is not None:
            nn.init.xavier_uniform_(self.dense.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def table_parameters(self) -> list[nn.Parameter]:
        return [self.weight.weight, *([] if self.dense is None else [self.dense.weight])]

    def forward(self, ids: torch.Tensor, dense: torch.Tensor | None = None) -> torch.Tensor:
        """ids: int64 [B, F]; dense: float [B, Dn] or None -> float [B]."""
        rows = ids + self.offsets
        if self._l2_terms is None:
            weights = self.weight(rows)  # [B, F, 1]
        else:  # gather each distinct row once: the L2 is their sum of squares, the gradient has a row each
            distinct, inverse = torch.unique(rows, return_inverse=True)
            gathered = self.weight(distinct)  # [U, 1]
            l2 = gathered.square().sum()
            self._l2_terms.append(l2 if self.dense is None else l2 + self.dense.weight.square().sum())
            weights = gathered[inverse]  # [B, F, 1]
        out = weights.sum(dim=(1, 2))
        if self.dense is not None and dense is not None:
            # float32 under autocast too: this is a table's term on raw dense values, which bfloat16
            # would round to three digits, and a [B, Dn] x [Dn, 1] product gains nothing from it
            with torch.autocast(dense.device.type, enabled=False):
                out = out + self.dense(dense).squeeze(-1)
        if self.bias is not None:
            out = out + self.bias
        return out


class DenseAsFields(FeatureTable):
    """Turns dense floats into extra "fields": field ``j`` is ``dense[:, j] * v_j`` with a learned ``v_j``.

    ``forward(dense [B, Dn]) -> [B, Dn, d]``.
    """

    def __init__(self, num_dense: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_dense, dim))
        self.init_weights()

    def init_weights(self) -> None:
        """Small normal vectors, like fresh embedding rows."""
        nn.init.normal_(self.weight, std=DENSE_FIELD_INIT_STD)

    def table_parameters(self) -> list[nn.Parameter]:
        return [self.weight]

    def forward(self, dense: torch.Tensor) -> torch.Tensor:
        """dense: [B, Dn] -> [B, Dn, d]."""
        if self._l2_terms is not None:  # every batch reads every dense feature's vector
            self._l2_terms.append(self.weight.square().sum())
        return dense.unsqueeze(-1) * self.weight


def append_dense_fields(
    emb: torch.Tensor, dense: torch.Tensor | None, dense_fields: DenseAsFields | None
) -> torch.Tensor:
    """Append dense-as-fields vectors to the embeddings: [B, F, d] -> [B, F + Dn, d].

    Returns ``emb`` unchanged when the model has no dense features (``dense_fields is None``).
    """
    if dense_fields is None:
        return emb
    if dense is None:
        raise ValueError("this model was built with dense features but forward() got dense=None")
    return torch.cat([emb, dense_fields(dense)], dim=1)


class FMInteraction(nn.Module):
    """Factorization-machine pairwise term ``Σ_{i<j} <e_i, e_j>`` in O(B F d).

    Uses ``0.5 * ((Σ_i e_i)² - Σ_i e_i²)`` summed over the embedding width.

    ``forward(emb [B, F, d]) -> [B]``.
    """

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        """emb: [B, F, d] -> [B]."""
        if emb.requires_grad and torch.is_grad_enabled() and not torch.jit.is_tracing():
            return _FMPairwise.apply(emb)
        # inference and exports (tracing cannot record a Python autograd function): the identity in plain ops
        return FM_HALF * (emb.sum(dim=1).square() - emb.square().sum(dim=1)).sum(dim=1)


class _FMPairwise(torch.autograd.Function):
    """:class:`FMInteraction`'s term with its gradient written out, ``d/de_f = g (Σ_i e_i - e_f)``.

    Why by hand: autograd's version of the identity passes over ``[B, F, d]`` seven times (the square,
    its sum, and pow's backward: a copy and two multiplies), which made it a tenth of a DeepFM step on
    wide tables; here the forward reads the embeddings twice and the backward writes them once.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, emb: torch.Tensor) -> torch.Tensor:
        total = emb.sum(dim=1)  # [B, d]
        norms = torch.linalg.vector_norm(emb.flatten(start_dim=1), dim=1)  # [B]: Σ_i ||e_i||, one fused read
        ctx.save_for_backward(emb, total)
        return FM_HALF * (total.square().sum(dim=1) - norms.square())

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        emb, total = ctx.saved_tensors
        # g * total broadcast over the fields, minus g * e_f
        return torch.addcmul((grad.unsqueeze(1) * total).unsqueeze(1), emb, grad.view(-1, 1, 1), value=-1)


class DotInteraction(nn.Module):
    """All pairwise dot products ``<x_i, x_j>`` for ``i < j`` (strict upper triangle, no self-terms).

    One batched matmul gives the [B, N, N] Gram matrix; a precomputed flat index buffer picks the upper
    triangle in row-major order ``(0,1), (0,2), ..., (0,N-1), (1,2), ...``.

    Args:
        num_vectors: ``N``, the number of vectors per sample.

    ``forward(x [B, N, d]) -> [B, N (N - 1) / 2]``.
    """

    def __init__(self, num_vectors: int) -> None:
        super().__init__()
        self.num_vectors = num_vectors
        rows, cols = torch.triu_indices(num_vectors, num_vectors, offset=1)
        self.register_buffer("flat_index", rows * num_vectors + cols, persistent=False)

    @property
    def out_dim(self) -> int:
        """Number of pairs ``N (N - 1) / 2``."""
        return self.num_vectors * (self.num_vectors - 1) // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, N, d] -> [B, N (N - 1) / 2]."""
        gram = torch.bmm(x, x.transpose(1, 2))  # [B, N, N]
        return gram.flatten(start_dim=1).index_select(1, self.flat_index)


class MultiHeadSelfAttention(nn.Module):
    """One AutoInt interacting layer: multi-head self-attention over fields with a projected residual.

    ``out = ReLU(concat_h softmax(q_h k_hᵀ / sqrt(head_dim)) v_h + x W_res)`` with ``q = x W_q`` etc.
    The query/key/value (and residual) projections are one fused matmul; the attention itself is two
    batched matmuls over [B, H, N, N] (faster on CPU for the short field "sequences" of CTR data than
    ``scaled_dot_product_attention`` on strided views).

    Args:
        in_dim: width of each input field vector.
        heads: number of attention heads.
        head_dim: width of each head; the output width is ``heads * head_dim``.
        residual: add the projected input ``x W_res`` before the ReLU.
        dropout: dropout on the attention weights (training only).

    ``forward(x [B, N, in_dim]) -> [B, N, heads * head_dim]``.
    """

    def __init__(self, in_dim: int, heads: int, head_dim: int, residual: bool = True, dropout: float = 0.0) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = head_dim
        self.out_dim = heads * head_dim
        self.scale = head_dim**-0.5
        self.has_residual = residual
        self.num_projections = QKV + int(residual)
        self.projection = nn.Linear(in_dim, self.num_projections * self.out_dim, bias=False)
        self.dropout = Dropout(dropout) if dropout > 0 else nn.Identity()
        self.init_weights()

    def init_weights(self) -> None:
        """Xavier-uniform on each of the fused [out_dim, in_dim] blocks (W_q, W_k, W_v, W_res) separately."""
        with torch.no_grad():
            for block in self.projection.weight.split(self.out_dim, dim=0):
                nn.init.xavier_uniform_(block)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, N, in_dim] -> [B, N, heads * head_dim]."""
        batch, num, _ = x.shape
        projected = self.projection(x).split(self.out_dim, dim=-1)  # each [B, N, H * Dh]
        q, k, v = (t.reshape(batch, num, self.heads, self.head_dim).transpose(1, 2) for t in projected[:QKV])
        scores = torch.matmul(q * self.scale, k.transpose(-1, -2))  # [B, H, N, N]
        weights = self.dropout(scores.softmax(dim=-1))
        out = torch.matmul(weights, v).transpose(1, 2).reshape(batch, num, self.out_dim)
        if self.has_residual:
            out = out + projected[QKV]
        return torch.relu(out)
