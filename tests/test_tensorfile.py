"""safetensors files written tensor by tensor: the same bytes as safetensors' own writer."""

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from embdim.tensorfile import DTYPE_NAMES, write_tensors


def _state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    state = {f"t.{str(dtype).removeprefix('torch.')}": (torch.randn(5, 3) * 50).to(dtype) for dtype in DTYPE_NAMES}
    state |= {"scalar": torch.tensor(2.5), "empty": torch.zeros(0, 4), "long": torch.arange(7)}
    return state


# one key: safetensors' writer orders several metadata keys differently from one process to the next
@pytest.mark.parametrize("metadata", [None, {"format": "pt"}])
def test_files_are_byte_identical_to_safetensors_own(tmp_path, metadata):
    state = _state()
    write_tensors(tmp_path / "ours.safetensors", state, metadata)
    save_file(state, str(tmp_path / "theirs.safetensors"), metadata=metadata)
    assert (tmp_path / "ours.safetensors").read_bytes() == (tmp_path / "theirs.safetensors").read_bytes()


def test_metadata_reads_back(tmp_path):
    write_tensors(tmp_path / "w.safetensors", {"x": torch.ones(2)}, {"format": "pt", "note": "x"})
    with safe_open(str(tmp_path / "w.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt", "note": "x"}


def test_views_and_shared_memory_are_written_as_their_values(tmp_path):
    """save_file refuses tensors that share memory; here each name gets its own values."""
    table = torch.randn(6, 8)
    state = {"table": table, "cut": table[:, :5], "rows": table[2:4], "column": table[:, 3]}
    write_tensors(tmp_path / "w.safetensors", state)
    back = load_file(str(tmp_path / "w.safetensors"))
    assert set(back) == set(state)
    for name, tensor in state.items():
        assert torch.equal(back[name], tensor), name


def test_a_dtype_without_a_safetensors_name_is_refused(tmp_path):
    with pytest.raises(TypeError, match="bad"):
        write_tensors(tmp_path / "w.safetensors", {"bad": torch.zeros(2, dtype=torch.complex64)})
