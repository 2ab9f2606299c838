"""The pre-flight memory estimate: what a run will hold, computed before anything is built.

Counted, in bytes: the method's tables and own state (:meth:`Searcher.training_memory`), the model's
parameters (its first-order table grows with the vocabulary), gradients (tables with dense gradients
only; sparse gradients cover a batch, fused tables have none), the optimizer's state (Adam two
slots per value, Adagrad one, SGD none), a second copy of the method's tables (the plain tables
while the fused ones are built; the slim model while it is exported and loaded back to be checked),
the activations of the larger of a training and an evaluation batch, the metrics' arrays over the
larger of the valid and test splits, and the Python and torch runtime. Fused TorchRec tables are
counted as fbgemm stores them, each row padded to a multiple of four values. Weights and checkpoints
are written from the tensors' own memory (no copy). The dataset
cache is memory-mapped: its pages count in a process's resident set once touched, but the kernel
can drop them, so they are reported next to the estimate and not held against the machine's free
memory. A run on several local processes (``train.processes``) is estimated for the whole machine: the
tables and the method's state that follows them once (shared out as shards), the model's dense part, the
method's replicated state (``MethodMemory.replicated``) and the runtime once per process.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from embdim.config import RunConfig, parse_value
from embdim.data.schema import DatasetSchema, FieldInfo
from embdim.distributed.torchrec_lookup import padded_dim
from embdim.errors import EmbdimError
from embdim.models.layers import FeaturesLinear
from embdim.plugins import MODELS, SEARCHERS
from embdim.storage import FLOAT_BYTES, INT64_BYTES

#: Optimizer state per trained value (Adam: first and second moment; Adagrad: the sum of squares).
STATE_SLOTS = {"adam": 2, "adamw": 2, "adagrad": 1, "sgd": 0}
#: Resident set of the interpreter with torch, polars and embdim imported (torchrec adds the second).
RUNTIME_BYTES = 320 << 20
TORCHREC_RUNTIME_BYTES = 110 << 20
#: Activations kept for the backward pass per batch row and model input value (layers, copies, grads).
ACTIVATION_COPIES = 8
#: AUC and logloss over a scored split hold about ten 8-byte arrays per row (scores in float64, their
#: order, sorted copy, differences and ranks, the labels, the rarest id's count of test_by_frequency).
METRIC_BYTES_PER_ROW = 10 * INT64_BYTES
GIB = 1 << 30


class InsufficientMemory(EmbdimError):
    """The estimate exceeds the memory this machine has free; the message shows the estimate."""


@dataclass
class MemoryEstimate:
    """A run's expected memory, by part (bytes), and the mapped cache pages it may touch."""

    parts: dict[str, int]
    mapped_cache: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def describe(self) -> str:
        parts = ", ".join(f"{name} {value / GIB:.2f}" for name, value in self.parts.items() if value)
        return f"{self.total / GIB:.2f} GiB ({parts}; plus up to {self.mapped_cache / GIB:.2f} GiB of mapped cache)"


def estimate_training_memory(
    cfg: RunConfig, schema: DatasetSchema, cache_dir: Path | None = None, model: tuple[int, int] | None = None
) -> MemoryEstimate:
    """The memory a run of ``cfg`` on data with ``schema`` will hold at its peak (see the module docstring);
    ``cache_dir``, the prepared data's folder, sizes the mapped cache; ``model``, if known, is
    ``_model_size`` of ``cfg`` (which builds the model's dense part)."""
    tc, emb = cfg.train, cfg.embedding
    fields = schema.fields
    method = SEARCHERS.get(cfg.method.name).training_memory(fields, emb.dim, cfg.method_options())
    model_params, id_table_rows = model or _model_size(cfg, fields, schema.num_dense)
    slots = STATE_SLOTS[tc.optimizer]
    fused = emb.backend == "torchrec" and tc.fused
    raw = method.tables
    if fused:  # fbgemm's rows (and their Adagrad state) are padded to a multiple of four values
        raw = method.fused_tables if method.fused_tables is not None else method.tables // emb.dim * padded_dim(emb.dim)
    tables = raw + id_table_rows * FLOAT_BYTES  # the first-order table trains like a table
    dense_grad_tables = 0 if (fused or emb.sparse) else method.tables
    if not (emb.sparse and emb.sparse_first_order):
        dense_grad_tables += id_table_rows * FLOAT_BYTES
    others = model_params * FLOAT_BYTES + method.parameters
    batch_values = max(tc.batch_size, tc.eval_batch_size) * (len(fields) + schema.num_dense) * emb.dim
    # on several local processes the tables are shared out (their shards sum to them), and so is the method's
    # state that follows them; the rest is held by every process; rank 0 gathers the tables whole to export
    # them (the second copy)
    copies = tc.processes
    parts = {
        "tables": tables + (copies - 1) * id_table_rows * FLOAT_BYTES,
        "model and method parameters": copies * others,
        "gradients": dense_grad_tables + copies * others,
        "optimizer state": slots * (tables + copies * others),
        "method state": method.state + (copies - 1) * method.replicated,
        "a second copy of the tables (fusing, export)": method.tables,
        "activations": ACTIVATION_COPIES * batch_values * FLOAT_BYTES,
        "metrics": METRIC_BYTES_PER_ROW * max(schema.rows.get(split, 0) for split in ("valid", "test")),
        "runtime": copies * (RUNTIME_BYTES + (TORCHREC_RUNTIME_BYTES if emb.backend == "torchrec" else 0)),
    }
    cache = sum(p.stat().st_size for p in Path(cache_dir).glob("*/*.npy")) if cache_dir else 0
    return MemoryEstimate(parts, mapped_cache=cache)


def _model_size(cfg: RunConfig, fields: list[FieldInfo], num_dense: int) -> tuple[int, int]:
    """The model's parameter count without its id tables, and the rows of those (built on one-row fields
    and on the meta device, so neither a vocabulary nor a width of any size allocates here)."""
    tiny = [FieldInfo(f.name, 1) for f in fields]
    with torch.device("meta"), torch.no_grad():
        model = MODELS.get(cfg.model.name)(tiny, cfg.embedding.dim, num_dense, cfg.model_options())
        id_tables = [m for m in model.modules() if isinstance(m, FeaturesLinear)]
        small = sum(p.numel() for p in model.parameters()) - sum(m.weight.weight.numel() for m in id_tables)
    return small, len(id_tables) * sum(f.vocab_size for f in fields)


def available_memory() -> int:
    """Bytes this process may still allocate: the kernel's ``MemAvailable``, or less under a cgroup limit."""
    available = _meminfo_available()
    limit, usage = _read_int("/sys/fs/cgroup/memory.max"), _read_int("/sys/fs/cgroup/memory.current")
    if limit is not None and usage is not None:
        available = min(available, max(limit - usage, 0))
    return available


def device_memory(device: torch.device) -> int | None:
    """Bytes free on ``device`` when the run's tables and activations live there (a GPU); ``None`` for the
    CPU, whose free memory :func:`available_memory` measures."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return None


def _meminfo_available() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max": no limit


#: Settings that train the same model in less memory, each a set of overrides, lightest change first.
LIGHTER_SETTINGS: list[dict[str, str]] = [
    {"train.optimizer": "adagrad"},
    {"embedding.sparse": "true", "embedding.sparse_first_order": "true", "train.embedding_decay": "looked_up"},
    {"embedding.backend": "torchrec", "train.optimizer": "adagrad", "train.embedding_decay": "looked_up"},
]
MAX_SUGGESTIONS = 3


def lighter_runs(cfg: RunConfig, schema: DatasetSchema, available: int) -> list[str]:
    """Overrides (as ``key=value`` text) under which ``cfg`` fits in ``available`` bytes, with their
    estimates: the generic lighter settings, the method's own (:meth:`Searcher.lighter_options`, the
    mildest that fits) and both together; at most :data:`MAX_SUGGESTIONS`, fewest keys changed first."""
    method = SEARCHERS.get(cfg.method.name)
    own = [
        {f"method.{k}": str(v) for k, v in o.items()}
        for o in method.lighter_options(cfg.embedding.dim, cfg.method_options())
    ]
    candidates = LIGHTER_SETTINGS + own + [{**o, **s} for o in own for s in LIGHTER_SETTINGS]
    model = _model_size(cfg, schema.fields, schema.num_dense)  # the variants change no model option
    fitting: dict[tuple[str, ...], tuple[int, str]] = {}  # per set of keys changed, its first that fits
    for order, overrides in enumerate(candidates):
        keys = tuple(sorted(overrides))
        variant = None if keys in fitting else _with_overrides(cfg, overrides)
        if variant is None:
            continue
        total = estimate_training_memory(variant, schema, model=model).total
        if total <= available:
            text = " ".join(f"{k}={v}" for k, v in overrides.items())
            fitting[keys] = (order, f"{text} (about {total / GIB:.2f} GiB)")
    ranked = sorted(fitting.items(), key=lambda item: (len(item[0]), item[1][0]))
    return [text for _, (_, text) in ranked[:MAX_SUGGESTIONS]]


def _with_overrides(cfg: RunConfig, overrides: dict[str, str]) -> RunConfig | None:
    """``cfg`` with ``overrides`` applied and validated; ``None`` when they make no valid config."""
    data = cfg.model_dump()
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        if section == "method":
            data["method"]["options"][name] = parse_value(value, key)
        else:
            data[section][name] = parse_value(value, key)
    try:
        variant = RunConfig.model_validate(data)
        variant.method_options()
    except ValueError:
        return None
    return variant


def check_memory(
    estimate: MemoryEstimate, available: int | None = None, lighter: Callable[[int], list[str]] | None = None
) -> None:
    """Refuse a run whose estimate exceeds the free memory, showing both, the settings that would fit
    (``lighter(available)``, e.g. :func:`lighter_runs` of the run) and how to go on anyway."""
    available = available_memory() if available is None else available
    if estimate.total > available:
        lighter = lighter(available) if lighter else []
        fits = (
            "These fit: " + "; ".join(lighter) + ". "
            if lighter
            else "Use a smaller embedding.dim or vocabulary (dataset.preprocess.min_count); no lighter optimizer or "
            "table update fits. "
        )
        raise InsufficientMemory(
            f"this run needs about {estimate.describe()}, but only {available / GIB:.2f} GiB are free. "
            f"{fits}Or run anyway with --no-memory-check"
        )
