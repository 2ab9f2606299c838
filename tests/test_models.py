"""CTR models (FM, DeepFM, DLRM, AutoInt+) and their shared layers."""

from __future__ import annotations

import itertools

import pytest
import torch
from pydantic import ValidationError

from embdim.data.schema import FieldInfo
from embdim.models.base import CTRModel, ModelConfig
from embdim.models.dlrm import DLRM
from embdim.models.fm import FM
from embdim.models.layers import (
    DROPOUT_RESOLUTION,
    MLP,
    DenseAsFields,
    DotInteraction,
    Dropout,
    FeaturesLinear,
    FMInteraction,
    MultiHeadSelfAttention,
)
from embdim.plugins import MODELS

BUILTIN_MODELS = {"fm", "deepfm", "dlrm", "autoint"}
MODEL_NAMES = MODELS.names()
SMALL_VOCAB = 7
NUM_DENSE = 3
#: Small hidden layers so the whole file stays fast; the defaults are checked separately.
SMALL_OPTIONS: dict[str, dict] = {
    "fm": {},
    "deepfm": {"hidden": [32, 16]},
    "dlrm": {"bottom_hidden": [8], "top_hidden": [32, 16]},
    "autoint": {"attention_layers": 2, "heads": 2, "attention_dim": 8, "hidden": [32, 16]},
}
#: Minimum share of parameter tensors that must receive a non-zero gradient (ReLU may zero a few).
MIN_NONZERO_GRAD_SHARE = 0.9
ATOL = 1e-5


def make_fields(num_fields: int, vocab: int = SMALL_VOCAB) -> list[FieldInfo]:
    return [FieldInfo(name=f"f{i}", vocab_size=vocab + i) for i in range(num_fields)]


def make_inputs(
    batch: int, fields: list[FieldInfo], dim: int, num_dense: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Random emb [B, F, d], dense [B, Dn] (or None) and ids [B, F] within each field's vocabulary."""
    gen = torch.Generator().manual_seed(seed)
    emb = torch.randn(batch, len(fields), dim, generator=gen)
    dense = torch.randn(batch, num_dense, generator=gen) if num_dense > 0 else None
    ids = torch.stack([torch.randint(0, f.vocab_size, (batch,), generator=gen) for f in fields], dim=1)
    return emb, dense, ids


def build(name: str, fields: list[FieldInfo], dim: int, num_dense: int, **options) -> CTRModel:
    cls = MODELS.get(name)
    torch.manual_seed(0)
    return cls(fields, dim, num_dense, cls.Config(**{**SMALL_OPTIONS.get(name, {}), **options}))


def pairwise_dots(x: torch.Tensor) -> torch.Tensor:
    """Explicit double loop: [B, N, d] -> [B, N (N - 1) / 2] in row-major upper-triangle order."""
    n = x.shape[1]
    cols = [(x[:, i] * x[:, j]).sum(-1) for i, j in itertools.combinations(range(n), 2)]
    return torch.stack(cols, dim=1)


# ----------------------------------------------------------------------------------------- registry


def test_builtin_models_registered() -> None:
    assert set(MODEL_NAMES) >= BUILTIN_MODELS
    for name in MODEL_NAMES:
        cls = MODELS.get(name)
        assert issubclass(cls, CTRModel)
        assert issubclass(cls.Config, ModelConfig) and cls.Config is not ModelConfig


# ----------------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("num_dense", [0, NUM_DENSE])
@pytest.mark.parametrize(("batch", "num_fields", "dim"), [(1, 1, 1), (5, 3, 4), (17, 40, 16), (8, 10, 64)])
def test_logits_shape(name: str, num_dense: int, batch: int, num_fields: int, dim: int) -> None:
    fields = make_fields(num_fields)
    model = build(name, fields, dim, num_dense).eval()
    emb, dense, ids = make_inputs(batch, fields, dim, num_dense)
    with torch.no_grad():
        logits = model(emb, dense, ids)
    assert logits.shape == (batch,)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_default_config_builds_and_runs(name: str) -> None:
    cls = MODELS.get(name)
    fields = make_fields(6)
    model = cls(fields, 8, NUM_DENSE, cls.Config())
    emb, dense, ids = make_inputs(4, fields, 8, NUM_DENSE)
    assert model(emb, dense, ids).shape == (4,)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_regularised_options_train_and_eval(name: str) -> None:
    """batch_norm / dropout / flipped use_linear (where a model has them) work in both modes."""
    fields_of_config = MODELS.get(name).Config.model_fields
    options = {}
    if "batch_norm" in fields_of_config:
        options["batch_norm"] = True
    for key in ("dropout", "attention_dropout"):
        if key in fields_of_config:
            options[key] = 0.2
    if "use_linear" in fields_of_config:
        options["use_linear"] = not fields_of_config["use_linear"].default
    fields = make_fields(5)
    model = build(name, fields, 8, NUM_DENSE, **options)
    emb, dense, ids = make_inputs(6, fields, 8, NUM_DENSE)
    model.train()(emb, dense, ids).sum().backward()
    with torch.no_grad():
        first, second = model.eval()(emb, dense, ids), model(emb, dense, ids)
    assert first.shape == (6,)
    torch.testing.assert_close(first, second)  # eval mode is deterministic


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_missing_dense_is_an_error(name: str) -> None:
    fields = make_fields(3)
    model = build(name, fields, 4, NUM_DENSE)
    emb, _, ids = make_inputs(2, fields, 4, 0)
    with pytest.raises(ValueError, match="dense"):
        model(emb, None, ids)


# ----------------------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("num_dense", [0, NUM_DENSE])
def test_gradient_flow(name: str, num_dense: int) -> None:
    fields = make_fields(6)
    model = build(name, fields, 8, num_dense)
    emb, dense, ids = make_inputs(16, fields, 8, num_dense)
    emb.requires_grad_(True)
    if dense is not None:
        dense.requires_grad_(True)
    model(emb, dense, ids).sum().backward()

    assert emb.grad is not None and emb.grad.abs().sum() > 0
    if dense is not None:
        assert dense.grad is not None and dense.grad.abs().sum() > 0
    params = dict(model.named_parameters())
    assert params
    for pname, p in params.items():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"
    nonzero = [pname for pname, p in params.items() if p.grad.abs().sum() > 0]
    assert len(nonzero) >= MIN_NONZERO_GRAD_SHARE * len(params), set(params) - set(nonzero)


# ----------------------------------------------------------------------------------------- zeros


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_zero_embeddings_make_logits_independent_of_sample(name: str) -> None:
    """Without dense features and first-order term, all-zero embeddings leave nothing sample-specific."""
    options = {"use_linear": False} if "use_linear" in MODELS.get(name).Config.model_fields else {}
    fields = make_fields(5)
    model = build(name, fields, 8, 0, **options).eval()
    emb, dense, ids = make_inputs(6, fields, 8, 0)
    with torch.no_grad():
        logits = model(torch.zeros_like(emb), dense, ids)
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(logits, logits[:1].expand_as(logits))


def test_fm_zero_embeddings_leave_bias_plus_linear() -> None:
    fields = make_fields(5)
    model = build("fm", fields, 8, 0)
    assert isinstance(model, FM) and model.linear is not None
    with torch.no_grad():
        model.bias.fill_(0.3)
        model.linear.weight.weight.normal_()
    emb, _, ids = make_inputs(6, fields, 8, 0)
    with torch.no_grad():
        logits = model(torch.zeros_like(emb), None, ids)
        expected = model.bias + model.linear(ids)
    torch.testing.assert_close(logits, expected)
    assert logits.std() > 0  # the linear term does depend on the ids


def test_dlrm_zero_embeddings_give_zero_dots() -> None:
    fields = make_fields(4)
    model = build("dlrm", fields, 8, NUM_DENSE)
    assert isinstance(model, DLRM)
    _, dense, _ = make_inputs(3, fields, 8, NUM_DENSE)
    z = model.bottom(dense)
    dots = model.interaction(torch.cat([z.unsqueeze(1), torch.zeros(3, 4, 8)], dim=1))
    assert torch.equal(dots, torch.zeros_like(dots))


# ----------------------------------------------------------------------------------------- interactions


@pytest.mark.parametrize(("batch", "num_fields", "dim"), [(4, 2, 3), (8, 13, 16), (3, 40, 64)])
def test_fm_interaction_matches_explicit_pairs(batch: int, num_fields: int, dim: int) -> None:
    x = torch.randn(batch, num_fields, dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    expected = pairwise_dots(x).sum(dim=1)
    torch.testing.assert_close(FMInteraction()(x), expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(FMInteraction()(x.float()), expected.float(), atol=1e-3, rtol=1e-4)


def test_the_fm_interactions_written_out_gradient_is_autograds() -> None:
    x = torch.randn(5, 7, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(FMInteraction(), (x,))
    grad = torch.randn(5, dtype=torch.float64)
    (ours,) = torch.autograd.grad(FMInteraction()(x), x, grad)
    (explicit,) = torch.autograd.grad(pairwise_dots(x).sum(dim=1), x, grad)
    torch.testing.assert_close(ours, explicit, atol=ATOL, rtol=0)
    with torch.no_grad():  # inference takes the plain ops (what a traced export records): the same values
        plain = FMInteraction()(x)
    torch.testing.assert_close(FMInteraction()(x), plain, atol=ATOL, rtol=0)


def test_dot_interaction_matches_double_loop() -> None:
    x = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3) / 10
    out = DotInteraction(4)(x)
    assert out.shape == (2, 6)
    expected = torch.empty(2, 6)
    for b in range(2):
        k = 0
        for i in range(4):
            for j in range(i + 1, 4):
                expected[b, k] = sum(x[b, i, c] * x[b, j, c] for c in range(3))
                k += 1
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("num_vectors", [1, 2, 5, 41])
def test_dot_interaction_out_dim(num_vectors: int) -> None:
    layer = DotInteraction(num_vectors)
    x = torch.randn(3, num_vectors, 5)
    out = layer(x)
    assert out.shape == (3, layer.out_dim) == (3, num_vectors * (num_vectors - 1) // 2)
    if num_vectors > 1:
        torch.testing.assert_close(out, pairwise_dots(x))


@pytest.mark.parametrize("pad", [1, 7])
def test_interactions_invariant_to_zero_padding(pad: int) -> None:
    x = torch.randn(5, 9, 6, generator=torch.Generator().manual_seed(2))
    padded = torch.cat([x, torch.zeros(5, 9, pad)], dim=2)
    torch.testing.assert_close(FMInteraction()(padded), FMInteraction()(x), atol=ATOL, rtol=0)
    torch.testing.assert_close(DotInteraction(9)(padded), DotInteraction(9)(x), atol=ATOL, rtol=0)


def test_interactions_ignore_zeroed_entries() -> None:
    """Pruned (zeroed) coordinates contribute nothing: same as dropping them."""
    x = torch.randn(4, 6, 8, generator=torch.Generator().manual_seed(3))
    keep = torch.tensor([0, 2, 3, 7])
    mask = torch.zeros(8)
    mask[keep] = 1
    torch.testing.assert_close(FMInteraction()(x * mask), FMInteraction()(x[..., keep]), atol=ATOL, rtol=0)
    torch.testing.assert_close(DotInteraction(6)(x * mask), DotInteraction(6)(x[..., keep]))


# ----------------------------------------------------------------------------------------- layers


def test_features_linear_uses_per_field_offsets() -> None:
    vocab = [3, 4, 2]
    layer = FeaturesLinear(vocab, num_dense=0)
    with torch.no_grad():
        layer.weight.weight.copy_(torch.arange(sum(vocab), dtype=torch.float32).unsqueeze(1))
        layer.bias.fill_(0.5)
    ids = torch.tensor([[0, 0, 0], [2, 3, 1]])
    # row of (field f, id i) is offset_f + i with offsets [0, 3, 7]
    torch.testing.assert_close(layer(ids), torch.tensor([0 + 3 + 7 + 0.5, 2 + 6 + 8 + 0.5]))
    assert "offsets" not in layer.state_dict()  # derived from the vocabulary, not saved


def test_features_linear_dense_term_and_no_bias() -> None:
    layer = FeaturesLinear([5, 5], num_dense=2, bias=False)
    assert layer.bias is None
    ids = torch.zeros(3, 2, dtype=torch.int64)
    dense = torch.randn(3, 2)
    torch.testing.assert_close(layer(ids, dense), dense @ layer.dense.weight.squeeze(0))


def test_dense_as_fields() -> None:
    layer = DenseAsFields(3, 5)
    dense = torch.randn(4, 3)
    out = layer(dense)
    assert out.shape == (4, 3, 5)
    torch.testing.assert_close(out[2, 1], dense[2, 1] * layer.weight[1])


def test_mlp_structure() -> None:
    mlp = MLP(10, [8, 6], dropout=0.1, batch_norm=True, activation="relu", output_dim=1)
    kinds = [type(m).__name__ for m in mlp.layers]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Dropout"] * 2 + ["Linear"]
    assert isinstance(mlp.layers[3], Dropout) and mlp.layers[3].p == 0.1  # embdim's, not nn.Dropout
    assert mlp(torch.randn(4, 10)).shape == (4, 1) and mlp.out_dim == 1
    plain = MLP(10, [8], dropout=0.0, batch_norm=False, activation="tanh")
    assert [type(m).__name__ for m in plain.layers] == ["Linear", "Tanh"] and plain.out_dim == 8
    assert MLP(10, []).out_dim == 10
    with pytest.raises(ValueError, match="activation"):
        MLP(10, [4], activation="nope")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("p", [0.2, 0.5])
def test_dropout_zeroes_the_stated_share_and_keeps_the_expectation(p: float, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    n = 1 << 20
    x = torch.ones(n, dtype=dtype)
    y = Dropout(p).train()(x)
    assert y.dtype == dtype and y.shape == x.shape
    dropped = float((y == 0).double().mean())
    assert abs(dropped - p) < 5 * (p * (1 - p) / n) ** 0.5  # within five binomial standard deviations
    kept = y[y != 0]
    scale = DROPOUT_RESOLUTION / (DROPOUT_RESOLUTION - int(p * DROPOUT_RESOLUTION))
    assert torch.equal(kept, torch.full_like(kept, scale))  # one value: every kept element scaled alike
    assert abs(float(y.double().mean()) - 1.0) < 0.01  # inverted dropout: the expectation is the input's


def test_dropout_masks_are_independent_across_positions_of_a_random_word() -> None:
    # four elements share a 64-bit draw: each lane of it must drop at the rate p, and not together
    torch.manual_seed(1)
    dropped = Dropout(0.5).train()(torch.ones(1 << 18, 4)) == 0
    lane_rates = dropped.double().mean(0)
    assert torch.all((lane_rates - 0.5).abs() < 0.01), lane_rates
    both = (dropped[:, 0] & dropped[:, 3]).double().mean()  # lane 3 has the word's top bit, always 0
    assert abs(float(both) - 0.25) < 0.01


def test_dropout_backward_passes_the_gradient_through_the_kept_elements_only() -> None:
    torch.manual_seed(2)
    x = torch.randn(64, 33, requires_grad=True)
    drop = Dropout(0.3).train()
    y = drop(x)
    g = torch.randn_like(y)
    y.backward(g)
    scale = DROPOUT_RESOLUTION / (DROPOUT_RESOLUTION - drop.threshold)
    kept = y != 0
    torch.testing.assert_close(y, x.detach() * kept * scale)
    torch.testing.assert_close(x.grad, g * kept * scale)


def test_dropout_is_the_identity_in_evaluation_and_its_masks_follow_the_seed() -> None:
    drop = Dropout(0.4)
    x = torch.randn(100, 10)
    assert drop.eval()(x) is x
    drop.train()
    torch.manual_seed(7)
    first = drop(x)
    torch.manual_seed(7)
    assert torch.equal(drop(x), first)
    assert not torch.equal(drop(x), first)
    with pytest.raises(ValueError, match="dropout probability"):
        Dropout(1.0)


@pytest.mark.parametrize("residual", [True, False])
def test_self_attention_matches_reference(residual: bool) -> None:
    layer = MultiHeadSelfAttention(in_dim=6, heads=3, head_dim=4, residual=residual)
    x = torch.randn(5, 7, 6, generator=torch.Generator().manual_seed(4))
    blocks = layer.projection.weight.split(layer.out_dim, dim=0)
    q, k, v = (torch.nn.functional.linear(x, w).view(5, 7, 3, 4).transpose(1, 2) for w in blocks[:3])
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(5, 7, 12)
    if residual:
        expected = expected + torch.nn.functional.linear(x, blocks[3])
    torch.testing.assert_close(layer(x), torch.relu(expected))


def test_self_attention_shapes_and_zero_input() -> None:
    layer = MultiHeadSelfAttention(in_dim=6, heads=3, head_dim=4)
    x = torch.randn(5, 7, 6)
    assert layer(x).shape == (5, 7, 12)
    zeros = layer(torch.zeros(5, 7, 6))
    assert torch.equal(zeros, torch.zeros_like(zeros))  # no biases: zero fields stay zero


# ----------------------------------------------------------------------------------------- configs


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_config_rejects_unknown_key(name: str) -> None:
    with pytest.raises(ValidationError, match="not_an_option"):
        MODELS.get(name).Config(not_an_option=1)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_config_fields_have_defaults_and_descriptions(name: str) -> None:
    config_cls = MODELS.get(name).Config
    for key, info in config_cls.model_fields.items():
        assert not info.is_required(), f"{name}.{key} has no default"
        assert info.description and "\n" not in info.description, f"{name}.{key} lacks a one-line description"


def test_config_defaults() -> None:
    assert MODELS.get("fm").Config().model_dump() == {"use_linear": True}
    assert MODELS.get("deepfm").Config().model_dump() == {
        "hidden": [400, 400, 400],
        "dropout": 0.0,
        "batch_norm": False,
        "use_linear": True,
    }
    dlrm = MODELS.get("dlrm").Config()
    assert dlrm.bottom_hidden == [64] and dlrm.top_hidden == [512, 256]
    autoint = MODELS.get("autoint").Config()
    assert (autoint.attention_layers, autoint.heads, autoint.attention_dim) == (3, 2, 16)
    assert autoint.hidden == [400, 400] and autoint.use_linear is False


def test_config_list_defaults_are_not_shared() -> None:
    config_cls = MODELS.get("deepfm").Config
    config_cls().hidden.append(1)
    assert config_cls().hidden == [400, 400, 400]


@pytest.mark.parametrize(
    ("name", "options"),
    [("deepfm", {"hidden": [0]}), ("deepfm", {"dropout": 1.0}), ("autoint", {"heads": 0})],
)
def test_config_rejects_bad_values(name: str, options: dict) -> None:
    with pytest.raises(ValidationError):
        MODELS.get(name).Config(**options)


def test_dlrm_top_input_width() -> None:
    fields = make_fields(5)
    with_dense = build("dlrm", fields, 8, NUM_DENSE)
    without = build("dlrm", fields, 8, 0)
    assert with_dense.top.in_dim == 8 + 6 * 5 // 2  # [z, dots over z + 5 embeddings]
    assert without.top.in_dim == 5 * 4 // 2 + 5 * 8  # [dots over 5 embeddings, flattened embeddings]


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("deepfm", {"hidden": []}),
        ("dlrm", {"bottom_hidden": [], "top_hidden": []}),
        ("autoint", {"attention_layers": 0}),
        ("autoint", {"hidden": [], "residual": False, "heads": 1}),
    ],
)
def test_edge_configs_run(name: str, options: dict) -> None:
    fields = make_fields(4)
    model = build(name, fields, 6, NUM_DENSE, **options)
    emb, dense, ids = make_inputs(5, fields, 6, NUM_DENSE)
    model(emb, dense, ids).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_state_dict_round_trip(name: str) -> None:
    fields = make_fields(4)
    source = build(name, fields, 6, NUM_DENSE).eval()
    torch.manual_seed(123)
    cls = MODELS.get(name)
    target = cls(fields, 6, NUM_DENSE, cls.Config(**SMALL_OPTIONS.get(name, {}))).eval()
    target.load_state_dict(source.state_dict())
    emb, dense, ids = make_inputs(5, fields, 6, NUM_DENSE)
    with torch.no_grad():
        torch.testing.assert_close(target(emb, dense, ids), source(emb, dense, ids))
