"""Exported model folders verify themselves: every tamper is refused naming the file and field; no code runs."""

from __future__ import annotations

import dataclasses
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from embdim import FieldInfo
from embdim.errors import ModelFileError
from embdim.recommender import (
    EXPORT_FORMAT_VERSION,
    MODEL_JSON,
    SELF_HASH,
    build_recommender,
    content_sha256,
    export_model,
    file_sha256,
    load_model,
)
from embdim.slim import SlimEmbedding

FIELDS = [
    FieldInfo("small", 3, np.array([0, 50, 20])),
    FieldInfo("mid", 40, np.r_[0, np.arange(39, 0, -1)]),
    FieldInfo("big", 500, np.r_[3, np.arange(499, 0, -1)]),
]
DIM = 8
#: one method per storage kind: dense (full), dense with projections (mde), ragged (amtl), compact (pep)
#: and csr (pep_csr: pep's rows in csr, the layout its plans take where rows keep few of many columns),
#: hashed (hash) and qr (qr), both with a plain field beside
METHODS = {
    "full": {},
    "mde": {"alpha": 0.5},
    "amtl": {},
    "pep": {},
    "pep_csr": {},
    "hash": {"buckets": 0.9},
    "qr": {},
}


def _ids(batch: int = 32) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.stack([torch.randint(0, f.vocab_size, (batch,), generator=gen) for f in FIELDS], 1)


@pytest.fixture(params=list(METHODS))
def exported(request, tmp_path) -> Path:
    torch.manual_seed(0)
    method = request.param.removesuffix("_csr")
    rec = build_recommender(FIELDS, 0, DIM, "deepfm", {"hidden": [8]}, method, METHODS[request.param])
    if method == "pep":  # prune a part of the table so the rows differ in length
        with torch.no_grad():
            rec.embedding.searcher.threshold.fill_(float(torch.logit(torch.tensor(0.008))))
    if request.param == "pep_csr":
        slim = rec.embedding.export()
        rec.embedding = SlimEmbedding(dataclasses.replace(slim.plan, storage="csr"), [slim.groups[0].to_csr()])
    if request.param == "amtl":  # give values different prefix lengths
        with torch.no_grad():
            rec.embedding.searcher.b2.copy_(torch.randn_like(rec.embedding.searcher.b2))
    folder = tmp_path / "model"
    export_model(rec.eval(), folder)
    return folder


def _resign(folder: Path) -> None:
    """Recompute every hash, as a careful tamperer would: what is left are the structural checks."""
    meta = json.loads((folder / MODEL_JSON).read_text())
    meta["files"] = {name: file_sha256(folder / name) for name in meta["files"]}
    meta[SELF_HASH] = content_sha256(meta)
    (folder / MODEL_JSON).write_text(json.dumps(meta))


def _edit_json(folder: Path, name: str, edit) -> None:
    data = json.loads((folder / name).read_text())
    edit(data)
    (folder / name).write_text(json.dumps(data))


def _edit_tensors(folder: Path, name: str, edit) -> None:
    tensors = load_file(str(folder / name))
    edit(tensors)
    save_file(tensors, str(folder / name))


def test_an_untouched_export_loads_and_predicts_like_the_model(exported):
    rec = load_model(exported)
    assert rec(_ids()).shape == (32,) and torch.isfinite(rec(_ids())).all()


def test_an_edited_file_fails_its_hash(exported):
    _edit_tensors(exported, "model.safetensors", lambda t: t.__setitem__(next(iter(t)), next(iter(t.values())) + 1))
    with pytest.raises(ModelFileError, match=r"model\.safetensors: content differs from its SHA-256"):
        load_model(exported)


def test_an_edited_hash_is_refused(exported):
    _edit_json(exported, MODEL_JSON, lambda m: m.__setitem__(SELF_HASH, "0" * 64))
    with pytest.raises(ModelFileError, match=r"model\.json: field 'sha256' does not match"):
        load_model(exported)


def test_an_unknown_format_version_is_refused(exported):
    _edit_json(exported, MODEL_JSON, lambda m: m.__setitem__("format_version", EXPORT_FORMAT_VERSION + 1))
    _resign(exported)
    with pytest.raises(ModelFileError, match=r"model\.json: field 'format_version'"):
        load_model(exported)


def test_a_changed_tensor_shape_is_refused_naming_the_tensor(exported):
    def grow(tensors):
        name = next(k for k in tensors if k.endswith((".weight", ".values")))
        tensors[name] = torch.cat([tensors[name], tensors[name][:1]])

    _edit_tensors(exported, "embedding.safetensors", grow)
    _resign(exported)
    group_error = r"embedding\.safetensors: group g0 .*(weight|offsets|run_offsets|columns|values)"
    with pytest.raises(ModelFileError, match=group_error):
        load_model(exported)


def test_shifted_row_counts_are_refused(exported):
    def shift(meta):
        meta["groups"][0]["rows"][0] += 1

    _edit_json(exported, "embedding.json", shift)
    _resign(exported)
    with pytest.raises(ModelFileError, match=r"embedding\.json: field 'groups\[0\]': 'rows'"):
        load_model(exported)


def test_a_relabelled_dtype_is_refused(exported):
    def relabel(tensors):
        name = next(k for k in tensors if k.endswith((".weight", ".values")))
        tensors[name] = tensors[name].double()

    _edit_tensors(exported, "embedding.safetensors", relabel)
    _resign(exported)
    with pytest.raises(ModelFileError, match=r"float64 with 1 dims, expected float32|float64 with 2 dims"):
        load_model(exported)


def test_an_emptied_group_list_is_refused(exported):
    _edit_json(exported, "embedding.json", lambda m: m.__setitem__("groups", []))
    _resign(exported)
    with pytest.raises(ModelFileError, match=r"embedding\.(json|safetensors)"):
        load_model(exported)


def test_model_weights_of_another_shape_are_refused(exported):
    def widen(tensors):
        name = next(k for k in tensors if k.endswith("weight") and tensors[k].ndim == 2)
        tensors[name] = torch.zeros(tensors[name].shape[0], tensors[name].shape[1] + 1)

    _edit_tensors(exported, "model.safetensors", widen)
    _resign(exported)
    with pytest.raises(ModelFileError, match=r"model\.safetensors: '.*' is float32 \[.*\], the model needs"):
        load_model(exported)


class _Payload:
    """Unpickling this would create a marker file: proof that code ran."""

    marker: Path

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickle_dropped_into_the_folder_is_refused_and_never_run(exported, tmp_path):
    payload = _Payload()
    payload.marker = tmp_path / "code-ran"
    (exported / "model.pt").write_bytes(pickle.dumps(payload))
    with pytest.raises(ModelFileError, match=r"unexpected file\(s\) model\.pt"):
        load_model(exported)
    assert not payload.marker.exists()


def test_a_missing_or_garbage_file_names_the_file(exported):
    (exported / "embedding.safetensors").write_bytes(b"\x00garbage")
    _resign(exported)
    with pytest.raises(ModelFileError, match=r"embedding\.safetensors: not a readable safetensors file"):
        load_model(exported)
    (exported / "embedding.safetensors").unlink()
    with pytest.raises(ModelFileError, match=r"missing embedding\.safetensors"):
        load_model(exported)
