"""safetensors files written tensor by tensor, without a copy of the whole state in memory.

``safetensors.torch.save_file`` first turns every tensor into a ``bytes`` object and refuses tensors
that share memory, so saving a state dict costs a second copy of it (a caller that clones shared
views first pays a third): gigabytes for tables of millions of rows, at every save. :func:`write_tensors`
writes the same format (an 8-byte little-endian header length, a JSON header padded with spaces to 8
bytes, then each tensor's bytes in header order) straight from each tensor's memory, so the only
copies are of tensors that are not contiguous, one at a time. Tensors are laid out in the order
``save_file`` uses (by dtype, then by name), so the files are byte-identical to its files and
``safetensors.torch.load_file`` reads them.

This module imports nothing of embdim: every layer may use it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import BinaryIO

import torch

#: safetensors' name of each dtype a state dict holds, in the order its writer lays tensors out
#: (its dtype enumeration, descending; then by name)
DTYPE_NAMES = {
    torch.int64: "I64",
    torch.float64: "F64",
    torch.float32: "F32",
    torch.int32: "I32",
    torch.bfloat16: "BF16",
    torch.float16: "F16",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
_RANK = {dtype: rank for rank, dtype in enumerate(DTYPE_NAMES)}
HEADER_ALIGN = 8  # the header is padded so the data starts 8-byte aligned


def write_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` (any shape, views and shared memory allowed; a GPU's are copied to the host one at a time)
    to ``path`` as safetensors."""
    if sys.byteorder != "little":
        raise RuntimeError("safetensors stores little-endian bytes; this machine is big-endian")
    for name, t in tensors.items():
        if t.dtype not in DTYPE_NAMES:
            raise TypeError(f"{name}: dtype {t.dtype} has no safetensors name here")
    order = sorted(tensors, key=lambda name: (_RANK[tensors[name].dtype], name))
    header: dict[str, object] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name in order:
        t = tensors[name]
        size = t.numel() * t.element_size()
        header[name] = {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % HEADER_ALIGN)
    with open(path, "wb") as out:
        out.write(len(text).to_bytes(8, "little"))
        out.write(text)
        for name in order:
            _write_bytes(out, tensors[name])


def _write_bytes(out: BinaryIO, tensor: torch.Tensor) -> None:
    flat = tensor.detach().cpu().contiguous().reshape(-1)  # a copy only where not contiguous or not on the CPU
    if flat.numel():
        out.write(memoryview(flat.view(torch.uint8).numpy()))
