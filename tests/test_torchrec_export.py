"""TorchRec export: every storage kind loads into a plain EmbeddingBagCollection (fp16 and int8 tables into
TorchRec's quantised one) and reproduces the slim embedding bit for bit; a damaged or edited export is
refused naming the file; the docs' example runs."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.quant.embedding_modules import EmbeddingBagCollection as QuantEmbeddingBagCollection

from conftest import REPO_ROOT
from embdim import FieldInfo
from embdim.errors import ConfigError, ModelFileError
from embdim.plan import EmbeddingPlan
from embdim.recommender import Recommender, build_recommender, export_model, load_model, write_manifest
from embdim.slim import DenseGroup, SlimEmbedding
from embdim.torchrec_export import (
    LOOKUP_TENSORS,
    TABLES_TENSORS,
    TORCHREC_FILES,
    TORCHREC_JSON,
    TorchRecEmbedding,
    export_torchrec,
    load_torchrec,
    zero_pad,
)

FIELDS = [
    FieldInfo("small", 3, np.array([0, 50, 20])),
    FieldInfo("mid", 40, np.r_[0, np.arange(39, 0, -1)]),
    FieldInfo("big", 500, np.r_[3, np.arange(499, 0, -1)]),
]
DIM = 8
#: every storage kind: dense (full, cut widths with a dropped field, mde's projections), ragged with
#: either index (amtl), compact (pep with part of the table pruned) and csr (the same rows in csr, the
#: smaller layout where rows keep few of many columns), hashed (hash: a plain field and two hashed), qr (a
#: plain field and two of quotient-remainder tables)
CASES = ["full", "cut", "mde", "amtl_rows", "amtl_runs", "pep", "pep_csr", "hash", "qr"]


def _runs(n: int, sizes: list[int]) -> torch.Tensor:
    """``n`` row sizes in runs: the sizes in turn, each over an equal share of the ids."""
    return torch.tensor(sizes).repeat_interleave(-(-n // len(sizes)))[:n]


def _model(case: str) -> Recommender:
    torch.manual_seed(0)
    method = {"cut": "full", "amtl_rows": "amtl", "amtl_runs": "amtl", "pep_csr": "pep"}.get(case, case)
    options = {"mde": {"alpha": 0.5}, "hash": {"buckets": 0.9}}.get(method, {})
    rec = build_recommender(FIELDS, 0, DIM, "deepfm", {"hidden": [8]}, method, options)
    searcher = rec.embedding.searcher
    with torch.no_grad():
        if case.startswith("pep"):  # prune a part of the table so the rows differ in length and in span
            searcher.threshold.fill_(float(torch.logit(torch.tensor(0.008))))
        if case == "amtl_rows":  # prefix lengths differ id by id: per-row offsets
            searcher.frozen_lengths = torch.randint(0, DIM + 1, (sum(f.vocab_size for f in FIELDS),))
        if case == "amtl_runs":  # lengths in runs of ids (as frequency-ordered ids have them): per-run index
            searcher.frozen_lengths = torch.cat([_runs(3, [8, 0]), _runs(40, [8, 5, 5, 2]), _runs(500, [6, 3, 1, 0])])
    if case == "cut":  # a dense plan by hand: fields at widths 5, 0 (dropped) and 3
        weights = [torch.randn(f.vocab_size, DIM) for f in FIELDS]
        plan = EmbeddingPlan("full", [f.name for f in FIELDS], [f.vocab_size for f in FIELDS], DIM, [5, 0, 3])
        groups = [
            DenseGroup((2,), (500,), weights[2][:, :3], None, DIM),
            DenseGroup((0,), (3,), weights[0][:, :5], None, DIM),
        ]
        rec.embedding = SlimEmbedding(plan, groups)
    if case == "pep_csr":  # the same rows in csr storage
        slim = rec.embedding.export()
        assert slim.plan.storage == "compact"
        rec.embedding = SlimEmbedding(dataclasses.replace(slim.plan, storage="csr"), [slim.groups[0].to_csr()])
    return rec.eval()


@pytest.fixture(scope="module", params=CASES)
def exported(request, tmp_path_factory) -> tuple[str, SlimEmbedding, Path]:
    """(case, the slim embedding of an exported model folder, its TorchRec export)."""
    root = tmp_path_factory.mktemp(request.param)
    export_model(_model(request.param), root / "model")
    slim = load_model(root / "model").embedding
    export_torchrec(slim, root / "torchrec")
    return request.param, slim, root / "torchrec"


def _every_id(slim: SlimEmbedding) -> torch.Tensor:
    """ids ``[max n, F]`` covering every id of every field (OOV id 0 included), shuffled, plus random ones."""
    gen = torch.Generator().manual_seed(1)
    n = max(slim.plan.vocab_sizes)
    cols = [
        torch.cat([torch.randperm(v, generator=gen), torch.randint(0, v, (n - v,), generator=gen)])
        for v in slim.plan.vocab_sizes
    ]
    return torch.stack(cols, 1)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)


def test_the_export_reproduces_the_slim_embedding_exactly(exported):
    _, slim, folder = exported
    ebc, lookup = load_torchrec(folder)
    assert type(ebc) is EmbeddingBagCollection and isinstance(lookup, TorchRecEmbedding)
    ids = _every_id(slim)
    with torch.no_grad():
        want = slim(ids)
        got = lookup.combine(ebc(lookup.features(ids)), ids)  # the plain collection, called by hand
        assert torch.equal(got, want)
        assert torch.equal(_bits(got), _bits(want))  # bit for bit, the sign of zero included
        assert torch.equal(lookup(ids), want)
        assert torch.equal(lookup(ids[:5]), slim(ids[:5]))  # a small batch too


def test_each_kind_is_laid_out_as_documented(exported):
    case, slim, folder = exported
    meta = json.loads((folder / TORCHREC_JSON).read_text())
    ebc, _ = load_torchrec(folder)
    configs = ebc.embedding_bag_configs()
    assert [c.name for c in configs] == [t["name"] for t in meta["tables"]]
    assert all(c.feature_names == [c.name] and c.pooling.name == "SUM" for c in configs)
    ids_kinds = [f["ids"] for f in meta["fields"]]
    widths = {f: sorted(t["width"] for t in meta["tables"] if t["field"] == f) for f in range(3)}
    lookup_names = set(load_file(str(folder / LOOKUP_TENSORS)))
    if case in ("full", "mde", "cut"):  # dense: one table per stored field, ids used as rows
        assert set(ids_kinds) <= {"direct", "zero"} and all(len(w) <= 1 for w in widths.values())
        assert not any(name.startswith("remap.") for name in lookup_names)
    if case == "cut":
        assert ids_kinds == ["direct", "zero", "direct"] and widths == {0: [5], 1: [], 2: [3]}
    if case == "mde":
        assert meta["projections"] and {f"projection.{p['name']}" for p in meta["projections"]} == lookup_names
    if case.startswith("amtl"):
        index = ("offsets",) if case == "amtl_rows" else ("run_offsets", "run_rows", "run_sizes")
        assert slim.groups[0].index_names == index
        for f, sizes in enumerate(slim.plan.row_sizes):
            assert widths[f] == sorted({int(k) for k in sizes if k > 0})  # one table per distinct size
    if case == "amtl_runs":
        assert widths == {0: [8], 1: [2, 5, 8], 2: [1, 3, 6]}
        assert ids_kinds == ["remapped", "remapped", "remapped"]  # small: id 2 stores nothing
    if case.startswith("pep"):  # compact is exported as csr: the same tables either way
        assert slim.plan.storage == {"pep": "compact", "pep_csr": "csr"}[case]
        assert "remapped" in ids_kinds and any(len(w) > 1 for w in widths.values())
        for f, sizes in enumerate(slim.plan.row_sizes):
            assert sum(t["num_embeddings"] for t in meta["tables"] if t["field"] == f) == int((sizes > 0).sum())
    if case == "hash":  # the 3-id field keeps its table; the others: one table of their buckets each
        assert ids_kinds == ["direct", "hashed", "hashed"] and widths == {0: [8], 1: [8], 2: [8]}
        buckets = [t["num_embeddings"] for t in meta["tables"]]
        assert buckets == [3, 36, 450] == slim.plan.kind.stored_rows(slim.plan)
        assert not lookup_names  # buckets are computed from the id: no remap to store
        _, lookup = load_torchrec(folder)
        group = next(g for g in slim.groups if g.kind == "hashed")
        assert [(f["hash_a"], f["hash_b"]) for f in meta["fields"][1:]] == list(
            zip(group.hash_a.tolist(), group.hash_b.tolist(), strict=True)
        )
        ids = _every_id(slim)
        tables, rows = lookup.remap(ids)
        # every id's bucket, as the slim model hashes it; the OOV id alone in bucket 0
        assert torch.equal(rows[:, 1:], group.bucket(ids[:, 1:])) and bool(
            (tables[:, 1:] == torch.tensor([1, 2])).all()
        )
        assert bool((rows[:, 1:][ids[:, 1:] == 0] == 0).all()) and bool((rows[:, 1:][ids[:, 1:] > 0] > 0).all())
    if case == "qr":  # the 3-id field keeps its table; the others: 40 / 4 and 500 / 4 quotient rows, 4 remainder
        assert ids_kinds == ["direct", "qr", "qr"] and widths == {0: [8], 1: [8, 8], 2: [8, 8]}
        assert [(t["name"], t["num_embeddings"]) for t in meta["tables"]] == [
            ("f0_w8", 3),
            ("f1_w8_q", 10),
            ("f1_w8_r", 4),
            ("f2_w8_q", 125),
            ("f2_w8_r", 4),
        ]
        assert [(f.get("collisions"), f.get("combine")) for f in meta["fields"]] == [(None, None), *[(4, "mult")] * 2]
        assert not lookup_names  # an id's rows are its quotient and remainder: no remap to store
    for f, kind in enumerate(ids_kinds):
        if kind == "remapped":
            table, row = (load_file(str(folder / LOOKUP_TENSORS))[f"remap.{f}.{p}"] for p in ("table", "row"))
            assert table.dtype == torch.int8 and row.dtype == torch.int32 and len(table) == FIELDS[f].vocab_size


def test_bytes_are_reported_against_the_slim_model(exported):
    case, slim, folder = exported
    meta = json.loads((folder / TORCHREC_JSON).read_text())
    export = export_torchrec(slim, folder)  # again, over the old one
    tables = load_file(str(folder / TABLES_TENSORS))
    lookup = load_file(str(folder / LOOKUP_TENSORS))
    assert export.table_bytes == sum(t.numel() * t.element_size() for t in tables.values())
    assert export.remap_bytes + export.projection_bytes == sum(t.numel() * t.element_size() for t in lookup.values())
    assert export.slim_bytes == slim.stored_bytes() == slim.plan.num_bytes
    assert meta["bytes"] == export.bytes() and export.total_bytes == meta["bytes"]["total"]
    assert [c.name for c in export.configs] == [t["name"] for t in meta["tables"]]
    if case in ("full", "cut", "mde"):  # dense: the same values, projections included, and no remap
        assert export.total_bytes == export.slim_bytes and export.remap_bytes == 0
    if case in ("hash", "qr"):  # rows computed from the id: the slim rows alone (the hash's a and b go in the JSON)
        assert export.remap_bytes == 0 and export.total_bytes == sum(slim.plan.kind.stored_rows(slim.plan)) * 4 * DIM


def _resign(folder: Path) -> None:
    """Recompute every hash, as a careful tamperer would: what is left are the structural checks."""
    meta = json.loads((folder / TORCHREC_JSON).read_text())
    write_manifest(
        folder, TORCHREC_JSON, {k: v for k, v in meta.items() if k not in ("files", "sha256")}, TORCHREC_FILES
    )


@pytest.fixture
def ragged_export(tmp_path) -> Path:
    rec = _model("amtl_rows")
    export_torchrec(rec.embedding.export(), tmp_path / "torchrec")
    return tmp_path / "torchrec"


def test_an_edited_file_is_refused_naming_it(ragged_export):
    tensors = load_file(str(ragged_export / TABLES_TENSORS))
    key = next(iter(tensors))
    tensors[key] = tensors[key] + 1
    save_file(tensors, str(ragged_export / TABLES_TENSORS))
    with pytest.raises(
        ModelFileError, match=r"tables\.safetensors: content differs from its SHA-256 in torchrec\.json"
    ):
        load_torchrec(ragged_export)


def test_an_edited_manifest_or_a_stray_file_is_refused(ragged_export):
    meta = json.loads((ragged_export / TORCHREC_JSON).read_text())
    meta["dim"] = 4
    (ragged_export / TORCHREC_JSON).write_text(json.dumps(meta))
    with pytest.raises(ModelFileError, match=r"torchrec\.json: field 'sha256' does not match"):
        load_torchrec(ragged_export)
    (ragged_export / "extra.pt").write_bytes(b"")
    with pytest.raises(ModelFileError, match=r"unexpected file\(s\) extra\.pt"):
        load_torchrec(ragged_export)


def test_resigned_edits_are_refused_naming_the_file_and_field(ragged_export):
    def edit_json(change):
        meta = json.loads((ragged_export / TORCHREC_JSON).read_text())
        change(meta)
        (ragged_export / TORCHREC_JSON).write_text(json.dumps(meta))
        _resign(ragged_export)

    def edit_tensors(name, change):
        tensors = load_file(str(ragged_export / name))
        change(tensors)
        save_file(tensors, str(ragged_export / name))
        _resign(ragged_export)

    original = {name: (ragged_export / name).read_bytes() for name in TORCHREC_FILES}

    def restore():
        for name, data in original.items():
            (ragged_export / name).write_bytes(data)

    edit_json(lambda m: m["tables"][0].__setitem__("num_embeddings", m["tables"][0]["num_embeddings"] + 1))
    with pytest.raises(ModelFileError, match=r"torchrec\.json: field 'fields\[0\]'|tables\.safetensors: tensor"):
        load_torchrec(ragged_export)
    restore()
    edit_json(lambda m: m["tables"][1].__setitem__("width", 99))
    with pytest.raises(ModelFileError, match=r"torchrec\.json: field 'tables\[1\]'"):
        load_torchrec(ragged_export)
    restore()
    edit_tensors(TABLES_TENSORS, lambda t: t.__setitem__(next(iter(t)), t[next(iter(t))].double()))
    with pytest.raises(ModelFileError, match=r"tables\.safetensors: tensor 'embedding_bags\..*\.weight': float64"):
        load_torchrec(ragged_export)
    restore()

    def shuffle_rows(t):
        t["remap.2.row"] = torch.zeros_like(t["remap.2.row"])

    edit_tensors(LOOKUP_TENSORS, shuffle_rows)
    with pytest.raises(ModelFileError, match=r"lookup\.safetensors: tensor 'remap\.2\.row'"):
        load_torchrec(ragged_export)
    restore()
    edit_tensors(LOOKUP_TENSORS, lambda t: t["remap.1.table"].fill_(100))
    with pytest.raises(ModelFileError, match=r"lookup\.safetensors: tensor 'remap\.1\.table': a value outside"):
        load_torchrec(ragged_export)
    restore()
    load_torchrec(ragged_export)  # restored: loads again


@pytest.mark.parametrize(("key", "value"), [("hash_a", 0), ("hash_b", 2**31 - 1), ("hash_a", None), ("hash_b", "1")])
def test_a_hashed_fields_hash_parameters_are_checked_on_load(key, value, tmp_path):
    export_torchrec(_model("hash").embedding.export(), tmp_path / "torchrec")
    meta = json.loads((tmp_path / "torchrec" / TORCHREC_JSON).read_text())
    meta["fields"][2][key] = value
    (tmp_path / "torchrec" / TORCHREC_JSON).write_text(json.dumps(meta))
    _resign(tmp_path / "torchrec")
    with pytest.raises(ModelFileError, match=r"field 'fields\[2\]': a field of ids 'hashed' has one table .*hash_a in"):
        load_torchrec(tmp_path / "torchrec")


#: PEP's pruned rows have no exact int8 TorchRec layout (refused below); every other case exports in both
QUANTISED = [(case, p) for case in CASES for p in ("fp16", "int8") if not (p == "int8" and case.startswith("pep"))]


@pytest.mark.parametrize(("case", "precision"), QUANTISED)
def test_fp16_and_int8_exports_load_into_torchrec_s_quantised_collection_and_reproduce_the_slim_model(
    case, precision, tmp_path
):
    export_model(_model(case), tmp_path / "model")
    slim = load_model(tmp_path / "model").embedding.with_precision(precision)
    export = export_torchrec(slim, tmp_path / "torchrec")
    ebc, lookup = load_torchrec(tmp_path / "torchrec")
    assert type(ebc) is QuantEmbeddingBagCollection
    assert {c.data_type.name for c in ebc.embedding_bag_configs()} == {precision.upper()}
    ids = _every_id(slim)
    with torch.no_grad():
        want = slim(ids)
        assert torch.equal(_bits(lookup.combine(ebc(lookup.features(ids)), ids)), _bits(want))
        assert torch.equal(lookup(ids[:5]), slim(ids[:5]))
    # each row holds its values' bytes (int8: its float16 scale and bias first), rows back to back
    meta = json.loads((tmp_path / "torchrec" / TORCHREC_JSON).read_text())
    tables = load_file(str(tmp_path / "torchrec" / TABLES_TENSORS))
    per_value, per_row = (2, 0) if precision == "fp16" else (1, 4)
    for t in meta["tables"]:
        weight = tables[f"embedding_bags.{t['name']}.weight"]
        assert weight.dtype == torch.uint8 and weight.shape == (t["num_embeddings"], per_row + per_value * t["width"])
    assert meta["precision"] == precision and export.table_bytes == sum(w.numel() for w in tables.values())
    if case in ("full", "cut", "mde"):  # dense: the slim model's bytes exactly
        assert export.total_bytes == export.slim_bytes


@pytest.mark.parametrize("case", ["pep", "pep_csr"])
def test_an_int8_export_of_pruned_rows_is_refused_naming_why(case, tmp_path):
    embedding = _model(case).embedding
    slim = (embedding if isinstance(embedding, SlimEmbedding) else embedding.export()).with_precision("int8")
    with pytest.raises(ConfigError, match=r"no int8 TorchRec export of (compact|csr) storage .*pruned zeros"):
        export_torchrec(slim, tmp_path / "torchrec")
    assert not (tmp_path / "torchrec").exists()


def test_an_int8_export_with_a_non_finite_scale_is_refused_naming_the_table(tmp_path):
    export_torchrec(_model("amtl_rows").embedding.export().with_precision("int8"), tmp_path / "torchrec")
    tensors = load_file(str(tmp_path / "torchrec" / TABLES_TENSORS))
    key = next(iter(tensors))
    tensors[key][0, :2] = torch.tensor([float("inf")], dtype=torch.float16).view(torch.uint8)  # row 0's scale
    save_file(tensors, str(tmp_path / "torchrec" / TABLES_TENSORS))
    _resign(tmp_path / "torchrec")
    with pytest.raises(ModelFileError, match=rf"tables\.safetensors: tensor '{re.escape(key)}': holds non-finite"):
        load_torchrec(tmp_path / "torchrec")


def test_a_compact_embedding_exports_the_same_tables_as_its_rows_in_csr(tmp_path):
    compact, csr = _model("pep").embedding.export(), _model("pep_csr").embedding
    assert compact.plan.storage == "compact" and csr.plan.storage == "csr"
    exports = [export_torchrec(slim, tmp_path / slim.plan.storage) for slim in (compact, csr)]
    for name in (TABLES_TENSORS, LOOKUP_TENSORS):
        ours, theirs = (load_file(str(tmp_path / kind / name)) for kind in ("compact", "csr"))
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert exports[0].total_bytes == exports[1].total_bytes and exports[0].slim_bytes < exports[1].slim_bytes


def test_a_quotient_remainder_embedding_that_sums_its_rows_exports_exactly_too(tmp_path):
    torch.manual_seed(0)
    rec = build_recommender(FIELDS, 0, DIM, "deepfm", {"hidden": [8]}, "qr", {"collisions": 7, "combine": "add"})
    slim = rec.embedding.export()
    export = export_torchrec(slim, tmp_path / "torchrec")
    _, lookup = load_torchrec(tmp_path / "torchrec")
    ids = _every_id(slim)
    with torch.no_grad():
        assert torch.equal(_bits(lookup(ids)), _bits(slim(ids)))
    assert export.total_bytes == export.slim_bytes  # the same rows, and no remap
    meta = json.loads((tmp_path / "torchrec" / TORCHREC_JSON).read_text())
    assert {(f["collisions"], f["combine"]) for f in meta["fields"] if f["ids"] == "qr"} == {(7, "add")}


def _edit_fields(meta: dict, case: str) -> str:
    """Break ``meta`` of the ``hash`` or ``qr`` export one way; returns what the error must say."""
    fields, tables = meta["fields"], meta["tables"]
    if case == "qr: a bad combine":
        fields[1]["combine"] = "max"
        return "combine in"
    if case == "qr: a narrow table":
        for t in tables[1:3]:
            t["width"] = t["embedding_dim"] = 4
            t["name"] = t["feature_name"] = t["name"].replace("_w8", "_w4")
        fields[1]["tables"] = [t["name"] for t in tables[1:3]]
        return "8 wide"
    if case == "a plain field with quotient and remainder tables":
        fields[1]["ids"] = "remapped"
        return "only a field of ids 'qr' has quotient and remainder tables"
    if case == "hash: a narrow table":
        tables[1]["width"] = tables[1]["embedding_dim"] = 4
        tables[1]["name"] = tables[1]["feature_name"] = fields[1]["tables"][0] = "f1_w4"
        return "8 wide"
    if case == "hash: another prime":
        meta["hash_prime"] = 7
        return "expected 2147483647"
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case",
    [
        "qr: a bad combine",
        "qr: a narrow table",
        "a plain field with quotient and remainder tables",
        "hash: a narrow table",
        "hash: another prime",
    ],
)
def test_an_edited_hashed_or_qr_layout_is_refused_naming_the_field(case, tmp_path):
    export_torchrec(_model("hash" if case.startswith("hash") else "qr").embedding.export(), tmp_path / "torchrec")
    meta = json.loads((tmp_path / "torchrec" / TORCHREC_JSON).read_text())
    message = _edit_fields(meta, case)
    (tmp_path / "torchrec" / TORCHREC_JSON).write_text(json.dumps(meta))
    _resign(tmp_path / "torchrec")
    with pytest.raises(ModelFileError, match=re.escape(message)):
        load_torchrec(tmp_path / "torchrec")


def test_a_qr_field_whose_tables_disagree_with_its_collisions_is_refused(tmp_path):
    export_torchrec(_model("qr").embedding.export(), tmp_path / "torchrec")
    meta = json.loads((tmp_path / "torchrec" / TORCHREC_JSON).read_text())
    meta["fields"][1]["collisions"] = 5  # the tables hold 10 quotient rows and 4 remainder rows: c = 4
    (tmp_path / "torchrec" / TORCHREC_JSON).write_text(json.dumps(meta))
    _resign(tmp_path / "torchrec")
    with pytest.raises(ModelFileError, match=r"field 'fields\[1\]': a field of ids 'qr' has a quotient table of 8"):
        load_torchrec(tmp_path / "torchrec")


def test_zero_pad_fills_the_cut_columns():
    assert torch.equal(zero_pad(torch.tensor([[1.0, 2.0]]), 4), torch.tensor([[1.0, 2.0, 0.0, 0.0]]))


def test_the_docs_example_runs_against_an_export(tmp_path):
    """The README's TorchRec example, run on a model exported here, so the docs cannot rot."""
    text = (REPO_ROOT / "README.md").read_text()
    example = next(b for b in re.findall(r"```python\n(.*?)```", text, flags=re.S) if "load_torchrec" in b)
    assert "runs/quickstart/model" in example
    export_model(_model("pep"), tmp_path / "model")
    example = example.replace("runs/quickstart/", f"{tmp_path}/")
    scope: dict = {}
    exec(compile(example, "README.md", "exec"), scope)
    assert (tmp_path / "torchrec" / TORCHREC_JSON).is_file()
    assert isinstance(scope["ebc"], EmbeddingBagCollection)
