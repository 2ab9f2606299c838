"""Typed configuration: YAML files composed from library configs, ``key=value`` overrides.

An experiment YAML names its parts by library config (``dataset: frappe`` reads
``configs/datasets/frappe.yaml``, found in the nearest ``datasets/`` folder above the experiment
file) or writes them inline. Models and methods are registered plug-ins whose options default to
their classes' (``embdim options NAME`` lists them): ``method: pep`` is PEP with its defaults, and a
``configs/methods/<name>.yaml`` (or ``models/``), where a project keeps one, replaces those defaults.
Everything is validated before any work starts; a bad key or value raises :class:`ConfigError`
naming the file and the dotted key.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from embdim.budget import BudgetUnreachable
from embdim.data.prepare import PreprocessConfig
from embdim.data.schema import FieldInfo
from embdim.distributed import CPU_SHARDING_TYPES
from embdim.errors import ConfigError, shorten
from embdim.lookup import FUSABLE_OPTIMIZERS
from embdim.options import Options
from embdim.plugins import MODELS, READERS, SEARCHERS
from embdim.recommender import Precision

DEFAULT_DATA_ROOT = Path("..") / "shared" / "datasets"
SECTION_FOLDERS = {"dataset": "datasets", "model": "models", "method": "methods"}
PLUGIN_SECTIONS = ("model", "method")  # registered plug-ins whose mappings extend their library config


class Strict(Options):
    """A config section: unknown keys and bools given for numbers are errors naming the key."""


class DatasetConfig(Strict):
    name: str = Field(description="dataset name; keys the cache folder")
    reader: str = Field(description="registered reader (embdim list)")
    options: dict[str, Any] = Field(default_factory=dict, description="the reader's own options")
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)

    @field_validator("reader")
    @classmethod
    def _known_reader(cls, name: str) -> str:
        if name not in READERS:
            raise ValueError(f"unknown reader {name!r}; registered: {', '.join(READERS.names())}")
        return name

    def reader_options(self) -> BaseModel:
        return READERS.get(self.reader).Options(**self.options)


class PluginConfig(Strict):
    """A registered plug-in by name plus its own validated options."""

    name: str
    options: dict[str, Any] = Field(default_factory=dict)


#: Sharding types TorchRec has that a run on the CPU cannot use, and why (the error names the key).
UNAVAILABLE_SHARDING_TYPES = {
    "row_wise": "TorchRec shards rows only on CUDA devices",
    "table_row_wise": "TorchRec shards rows only on CUDA devices",
    "grid_shard": "TorchRec shards rows only on CUDA devices",
    "data_parallel": "a data-parallel table needs a dense kernel and a torch optimizer, which sharded runs do "
    "not build yet",
}
#: Fused kernels need column shards whose width is a multiple of this (fbgemm's requirement).
COLUMN_WIDTH_MULTIPLE = 4


class ShardingConfig(Strict):
    """How TorchRec's planner may place the tables of a run on several processes (``train.processes``).

    Every table gets one of ``types`` (the planner picks by its cost model): ``table_wise`` (the whole table
    on one rank), ``column_wise`` (column blocks on several ranks), ``table_column_wise`` (column blocks,
    each on one rank of a machine). Tables are always trained by a fused kernel (``train.optimizer`` adagrad
    or sgd inside the backward pass).
    """

    types: list[str] = Field(
        default_factory=lambda: list(CPU_SHARDING_TYPES),
        description=f"sharding types the planner may choose per table: {', '.join(CPU_SHARDING_TYPES)}",
    )
    min_column_width: int | None = Field(
        None,
        ge=COLUMN_WIDTH_MULTIPLE,
        description="narrowest column shard (a multiple of 4); default: a table's width shared out over the "
        "processes, so each may hold a block of it (TorchRec's own default, 128, keeps tables narrower than 256 whole)",
    )
    memory_per_process: int | None = Field(
        None,
        ge=1,
        description="bytes of table shards one process may hold, as TorchRec's planner counts them (weights, "
        "optimizer state and its lookup buffers): the per-rank cap of its plan; default: TorchRec's",
    )

    @field_validator("types")
    @classmethod
    def _known_types(cls, types: list[str]) -> list[str]:
        if not types:
            raise ValueError(f"name at least one sharding type: {', '.join(CPU_SHARDING_TYPES)}")
        for name in types:
            if name in UNAVAILABLE_SHARDING_TYPES:
                raise ValueError(f"{name}: {UNAVAILABLE_SHARDING_TYPES[name]}; use {', '.join(CPU_SHARDING_TYPES)}")
            if name not in CPU_SHARDING_TYPES:
                raise ValueError(f"unknown sharding type {shorten(repr(name))}; use {', '.join(CPU_SHARDING_TYPES)}")
        return list(dict.fromkeys(types))

    @field_validator("min_column_width")
    @classmethod
    def _fused_width(cls, width: int | None) -> int | None:
        if width is not None and width % COLUMN_WIDTH_MULTIPLE:
            raise ValueError(f"{width} is not a multiple of {COLUMN_WIDTH_MULTIPLE} (fused kernels need it)")
        return width


class EmbeddingConfig(Strict):
    dim: int = Field(16, ge=1, description="output width d of every field")
    backend: Literal["torch", "torchrec"] = Field(
        "torch", description="lookup backend: torch, or torchrec (fused Adagrad/SGD with train.fused)"
    )
    sparse: bool = Field(False, description="sparse gradients for the tables (SparseAdam / Adagrad / SGD)")
    sparse_first_order: bool = Field(
        False, description="with sparse: the models' n x 1 first-order tables too (pays only for huge vocabularies)"
    )
    init_std: float = Field(0.01, gt=0, description="normal-init std of the tables")
    sharding: ShardingConfig = Field(
        default_factory=ShardingConfig, description="placement of the tables on several processes (train.processes)"
    )


class LRScheduleConfig(Strict):
    """How the learning rate moves within a stage; every stage starts at its base rates.

    ``constant``; ``plateau``: each evaluation without a new best validation score, once ``patience``
    of them have passed since the last drop or improvement, multiplies every rate by ``factor``
    (FuxiCTR's ``reduce_lr_on_plateau``: factor 0.1, patience 1); early stopping still counts the
    evaluations since the last improvement (``train.patience``), so with patience 1 and
    ``train.patience: 2`` a stage ends after two drops in a row without improvement; ``cosine``: from the
    base rate to ``min_lr`` over the stage's step limit (``train.epochs`` or ``train.max_steps``);
    ``step``: times ``factor`` every ``step_epochs`` epochs. No rate goes below ``min_lr`` (or its base
    rate, if that is lower).
    """

    kind: Literal["constant", "plateau", "cosine", "step"] = Field("constant", description="schedule")
    factor: float = Field(0.1, gt=0, lt=1, description="plateau, step: rate multiplier per drop")
    patience: int = Field(1, ge=1, description="plateau: evaluations without improvement before each drop")
    min_lr: float = Field(1e-6, ge=0, description="floor of every rate")
    step_epochs: float = Field(1.0, gt=0, description="step: epochs between drops")

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: Any) -> Any:
        return {"kind": value} if isinstance(value, str) else value  # lr_schedule: plateau

    def scale(self, step: int, drops: int, steps_per_epoch: int, stage_steps: int) -> float:
        """The multiplier of every base rate after ``step`` steps of a stage of at most ``stage_steps``
        steps, with ``drops`` plateau drops so far (the ``min_lr`` floor is applied per rate, after it)."""
        if self.kind == "plateau":
            return self.factor**drops
        if self.kind == "step":
            return self.factor ** math.floor(step / (self.step_epochs * steps_per_epoch))
        if self.kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(step / stage_steps, 1.0)))
        return 1.0


class TrainConfig(Strict):
    optimizer: Literal["adam", "adamw", "adagrad", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0)
    lr_schedule: LRScheduleConfig = Field(default_factory=LRScheduleConfig)
    clip_grad_norm: float | None = Field(
        None,
        gt=0,
        description="clip the global gradient norm (dense layers and tables with a .grad; fused tables and "
        "PEP's row-wise thresholds update inside the backward pass and are not clipped)",
    )
    embedding_lr: float | None = Field(None, gt=0, description="learning rate of the tables; default lr")
    weight_decay: float = Field(0.0, ge=0, description="decay of the dense layers (coupled L2 for adam)")
    embedding_weight_decay: float = Field(
        0.0,
        ge=0,
        description="L2 of every table the model reads (raw tables, first-order table, dense features' "
        "vectors), in the form embedding_decay says",
    )
    embedding_decay: Literal["optimizer", "looked_up"] = Field(
        "optimizer",
        description="optimizer: the tables' weight decay, on every row each step (coupled L2 = the "
        "gradient of lambda/2 |W|^2 for adam/adagrad/sgd, as FuxiCTR's embedding_regularizer; decoupled for "
        "adamw; needs dense table gradients); looked_up: the loss term lambda/2 sum |w_r|^2 over the "
        "distinct rows a batch reads, so rows are decayed when looked up (works with sparse and fused tables)",
    )
    fused: bool = Field(
        True, description="fused optimizer kernels; with backend torchrec also Adagrad/SGD fused into backward"
    )
    precision: Precision = Field(
        "fp32",
        description="arithmetic of the model's dense part (interactions, MLPs) in training and evaluation: fp32, "
        "or bf16 (torch.autocast; weights, tables, lookups, the loss and the metrics stay float32); bf16 needs "
        "native bfloat16 (AVX512_BF16 or AMX-BF16 CPUs, CUDA compute capability 8.0+) and is refused elsewhere",
    )
    batch_size: int = Field(
        4096, ge=1, description="rows per step in all (on several processes: the global batch, shared out)"
    )
    eval_batch_size: int = Field(16384, ge=1, description="rows scored at a time in all (shared out likewise)")
    processes: int = Field(
        1,
        ge=1,
        description="train on this many local processes (torch's elastic launcher; torchrun sets it): tables "
        "sharded by TorchRec, the rest data-parallel, each process reading its share of every batch",
    )
    epochs: int = Field(10, ge=1, description="maximum epochs per stage")
    max_steps: int | None = Field(None, ge=1, description="stop a stage after this many steps")
    eval_every_steps: int | None = Field(None, ge=1, description="evaluate every N steps; default each epoch")
    patience: int = Field(2, ge=1, description="evaluations without improvement before stopping")
    monitor: Literal["auc", "logloss"] = Field("auc", description="validation metric for selection")
    seed: int = Field(2026, ge=0, description="seed of the initialisation, shuffles and dropout")
    threads: int | None = Field(None, ge=1, description="torch CPU threads; default torch's choice")
    device: str = Field(
        "cpu",
        pattern=r"^(cpu|cuda(:\d+)?)$",
        description="where the model trains and is evaluated: cpu, or cuda / cuda:N (one GPU; the torch backend, one "
        "process); batches are gathered on the CPU and copied over, and the exported model is written from the CPU",
    )
    checkpoint_every_steps: int = Field(1000, ge=1, description="also checkpoint between evaluations")
    progress: bool = Field(True, description="show progress bars")
    init_from: str | None = Field(
        None, description="run folder (or .safetensors file) whose weights start this run (hot start)"
    )

    @property
    def looked_up_l2(self) -> float:
        """The weight of the looked-up rows' L2 term in the loss (0 when the optimizer applies the L2)."""
        return self.embedding_weight_decay if self.embedding_decay == "looked_up" else 0.0


RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
"""Run names: one folder name, no path separators and no ``..`` (a run stays inside its run_root)."""


def check_folder_name(name: str, what: str = "name") -> str:
    """``name`` if it is a safe single folder name (:data:`RUN_NAME`, at most 200 characters), else ValueError."""
    if not RUN_NAME.fullmatch(name) or ".." in name or len(name) > 200:
        raise ValueError(
            f"{what} {shorten(repr(name))} must be one folder name: letters, digits and _.+- "
            "(starting with a letter or digit, no '/' or '..')"
        )
    return name


class RunConfig(Strict):
    name: str = Field(description="run folder name under run_root")
    dataset: DatasetConfig
    model: PluginConfig
    method: PluginConfig = Field(default_factory=lambda: PluginConfig(name="full"))
    embedding: EmbeddingConfig = Field(default_factory=EmbeddingConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    run_root: str = Field("runs", description="where run folders go")
    cache_root: str = Field("cache", description="where prepared datasets are cached")
    data_root: str | None = Field(None, description="root of relative data paths; default $EMBDIM_DATA_ROOT")

    @field_validator("name")
    @classmethod
    def _safe_name(cls, name: str) -> str:
        return check_folder_name(name)

    @model_validator(mode="after")
    def _fusable_torchrec_optimizer(self) -> RunConfig:
        fused_tables = self.embedding.backend == "torchrec" and self.train.fused
        if fused_tables and self.train.optimizer not in FUSABLE_OPTIMIZERS:
            raise ValueError(
                f"train.optimizer={self.train.optimizer} cannot be fused into TorchRec's backward on CPU: "
                f"use train.optimizer={' or '.join(FUSABLE_OPTIMIZERS)}, or train.fused=false"
            )
        t = self.train
        whole_table_decay = t.embedding_weight_decay > 0 and t.embedding_decay == "optimizer"
        if whole_table_decay and (fused_tables or self.embedding.sparse):
            tables = "fused TorchRec tables" if fused_tables else "sparse table gradients (embedding.sparse)"
            raise ValueError(
                f"train.embedding_weight_decay: {tables} cannot decay every row each step; "
                "set train.embedding_decay=looked_up (decay the rows a batch reads)"
            )
        if t.device != "cpu":
            self._check_device()
        if t.processes > 1:
            self._check_shardable()
        if t.lr_schedule.kind == "plateau" and t.lr_schedule.patience >= t.patience:
            raise ValueError(
                f"train.lr_schedule.patience={t.lr_schedule.patience} must be below train.patience={t.patience}: "
                "the stage would stop before the learning rate drops"
            )
        return self

    def _check_device(self) -> None:
        """What training on a GPU needs (the error names ``train.device`` and the setting); whether the device
        exists is checked where the run starts (:func:`embdim.train.trainer.check_device`)."""
        t, emb = self.train, self.embedding
        if emb.backend != "torch":
            raise ValueError(
                f"train.device={t.device}: embedding.backend=torchrec runs its fused table kernels on the CPU in this "
                "installation (fbgemm's CPU build); set embedding.backend=torch"
            )
        if t.processes > 1:
            raise ValueError(
                f"train.device={t.device}: train.processes={t.processes} shards over gloo on the CPU; several GPUs "
                "(NCCL) are not supported yet: use train.processes=1"
            )

    def _check_shardable(self) -> None:
        """What a run on several processes needs (the error names ``train.processes`` and the setting)."""
        t, emb, n = self.train, self.embedding, self.train.processes
        method = self.method.name
        if method in SEARCHERS and not SEARCHERS.get(method).shardable:
            able = [name for name in SEARCHERS.names() if SEARCHERS.get(name).shardable]
            raise ValueError(
                f"train.processes={n}: method {method} does not train on several processes yet (those that do: "
                f"{', '.join(able)}); use train.processes=1"
            )
        if emb.backend != "torchrec":
            raise ValueError(f"train.processes={n} shards the tables with TorchRec: set embedding.backend=torchrec")
        if not t.fused:
            raise ValueError(
                f"train.processes={n}: TorchRec's sharded tables on the CPU train only with fused kernels: set "
                "train.fused=true (train.optimizer adagrad or sgd)"
            )
        if t.looked_up_l2 > 0:
            raise ValueError(
                f"train.processes={n}: train.embedding_decay=looked_up would count the distinct rows of each "
                "process's share of a batch, not of the batch; set train.embedding_weight_decay=0 (not yet supported)"
            )
        if emb.sparse_first_order:
            raise ValueError(
                f"train.processes={n}: embedding.sparse_first_order (sparse gradients in the data-parallel part) is "
                "not supported; set it to false"
            )
        if t.batch_size < n:
            raise ValueError(
                f"train.batch_size={t.batch_size} gives a process no row: use at least train.processes={n}"
            )

    def resolved_data_root(self) -> Path:
        if self.data_root:
            return Path(self.data_root)
        return Path(os.environ.get("EMBDIM_DATA_ROOT", DEFAULT_DATA_ROOT))

    def model_options(self) -> BaseModel:
        return MODELS.get(self.model.name).Config(**self.model.options)

    def method_options(self) -> BaseModel:
        return SEARCHERS.get(self.method.name).Config(**self.method.options)


def with_processes(cfg: RunConfig, processes: int) -> RunConfig:
    """``cfg`` run on ``processes`` processes (a launcher's ``WORLD_SIZE``), validated again; a config that asks
    for another number, or cannot run on that many, is a :class:`ConfigError` naming ``train.processes``."""
    if cfg.train.processes == processes:
        return cfg
    if cfg.train.processes != 1:
        raise ConfigError(
            f"train.processes={cfg.train.processes}, but the launcher started {processes} processes (WORLD_SIZE): "
            f"set train.processes={processes}, or leave it out under torchrun"
        )
    data = cfg.model_dump()
    data["train"]["processes"] = processes
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"{processes} processes (WORLD_SIZE): invalid configuration\n{_format_errors(err)}") from None


def resolve_budget(cfg: RunConfig, fields: list[FieldInfo]) -> RunConfig:
    """The config a run trains: with ``method.budget`` set, the width and method options with which the
    method aims at it (:meth:`~embdim.searchers.base.Searcher.for_budget`, relative to the uniform
    ``n x embedding.dim`` tables), as ``embdim bench`` resolves its budgets; ``cfg`` itself otherwise.

    Resolving twice changes nothing (a width or scale method spends its budget). A budget the method
    cannot reach is a :class:`ConfigError` naming ``method.budget``.
    """
    options = cfg.method_options()
    budget = getattr(options, "budget", None)
    if budget is None:
        return cfg
    try:
        dim, resolved = SEARCHERS.get(cfg.method.name).for_budget(fields, cfg.embedding.dim, options, budget)
    except BudgetUnreachable as err:
        raise ConfigError(f"method.budget: {err}") from None
    method = PluginConfig(name=cfg.method.name, options=resolved.model_dump(mode="json"))
    return cfg.model_copy(update={"embedding": cfg.embedding.model_copy(update={"dim": dim}), "method": method})


# ---------------------------------------------------------------------- loading
def parse_value(text: str, key: str = "value") -> Any:
    """A CLI override value, read as YAML (``3``, ``1e-3``, ``[64, 32]``, ``true``, ``deepfm``)."""
    try:
        return yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError as err:
        where = getattr(err, "problem", None) or "cannot parse it"
        raise ConfigError(f"override {key}={shorten(text)}: not valid YAML ({where})") from None


def apply_override(data: dict[str, Any], assignment: str, shown_key: str | None = None) -> None:
    """Set ``a.b.c=value`` in a nested dict (creating levels as needed); errors name ``shown_key``
    (the key as the user wrote it) when given."""
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} must look like key=value")
    key, value = assignment.split("=", 1)
    parts = key.strip().split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if not isinstance(child, dict):
            if child is not None and not isinstance(child, str):
                raise ConfigError(f"override {key}: {'.'.join(parts[: i + 1])} is not a section")
            child = {} if child is None else child
            node[part] = child
        node = child
    node[parts[-1]] = parse_value(value, shown_key or key.strip())


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def find_library_config(start: Path, section: str, name: str) -> Path:
    folder = SECTION_FOLDERS[section]
    for parent in [start, *start.parents]:
        candidate = parent / folder / f"{name}.yaml"
        if candidate.is_file():
            return candidate
    raise ConfigError(f"{section}: no library config {folder}/{name}.yaml found above {start}")


def _expand_section(section: str, value: Any, base: Path) -> dict[str, Any]:
    """A section given by library name or path becomes its mapping; ``name`` defaults to that name."""
    if isinstance(value, str):
        if section in PLUGIN_SECTIONS and not value.endswith((".yaml", ".yml")):
            return _over_library(section, {"name": value}, base)  # a plug-in needs no library config
        path = Path(value) if value.endswith((".yaml", ".yml")) else find_library_config(base, section, value)
        if not path.is_absolute() and value.endswith((".yaml", ".yml")):
            path = base / path
        loaded = _read_yaml(path)
        loaded.setdefault("name", value if not value.endswith((".yaml", ".yml")) else path.stem)
        return loaded
    if not isinstance(value, dict):
        raise ConfigError(f"{section}: expected a library config name or a mapping, got {value!r}")
    if section in PLUGIN_SECTIONS and isinstance(value.get("name"), str):
        return _over_library(section, value, base)
    return value


def _over_library(section: str, value: dict[str, Any], base: Path) -> dict[str, Any]:
    """A plug-in mapping (``method: {name: pep, s0: -8}``) is its library config with these keys on top,
    so what it leaves out follows ``configs/<section>/<name>.yaml``, not the class defaults."""
    try:
        path = find_library_config(base, section, value["name"])
    except ConfigError:
        return value  # no library config of that name: the mapping stands alone
    given = value.get("options", {}) if set(value) <= {"name", "options"} else value
    return {**_read_yaml(path), **given, "name": value["name"]}


def _split_plugin(section: dict[str, Any]) -> dict[str, Any]:
    """``{name: deepfm, hidden: [...]}`` -> ``{name: deepfm, options: {hidden: [...]}}``."""
    section = dict(section)
    if "options" in section and len(section) <= 2:
        return section
    name = section.pop("name", None)
    return {"name": name, "options": section}


def compose(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """The experiment file with library configs expanded and overrides applied (not yet validated)."""
    path = Path(path)
    data = _read_yaml(path)
    base = path.resolve().parent
    # a section replaced by name on the command line (method=mde) is expanded like one in the file
    for assignment in overrides:
        key, _, value = assignment.partition("=")
        if key.strip() in SECTION_FOLDERS and "=" in assignment:
            data[key.strip()] = parse_value(value, key.strip())
    for section in SECTION_FOLDERS:
        if section in data:
            data[section] = _expand_section(section, data[section], base)
    for section in PLUGIN_SECTIONS:
        if section in data:
            data[section] = _split_plugin(data[section])
    for assignment in overrides:
        key = assignment.partition("=")[0].strip()
        if key in SECTION_FOLDERS:
            continue
        parts = key.split(".")
        if parts[0] in ("model", "method") and len(parts) > 1 and parts[1] not in ("name", "options"):
            assignment = ".".join([parts[0], "options", *parts[1:]]) + "=" + assignment.partition("=")[2]
        apply_override(data, assignment, key)
    return data


def key_lines(path: Path, prefix: str = "") -> dict[str, str]:
    """Dotted key -> ``file:line`` of every key in a YAML file (for errors that point into the file)."""
    try:
        root = yaml.compose(path.read_text())
    except (OSError, yaml.YAMLError):
        return {}
    out: dict[str, str] = {}

    def walk(node: yaml.Node, at: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                dotted = f"{at}.{key.value}" if at else str(key.value)
                out[dotted] = f"{path}:{key.start_mark.line + 1}"
                walk(value, dotted)

    if root is not None:
        walk(root, prefix)
    return out


def _format_errors(err: ValidationError, prefix: str = "", lines: dict[str, str] | None = None) -> str:
    out = []
    for e in err.errors():
        loc = ".".join(str(p) for p in (prefix, *e["loc"]) if p != "")
        msg = "unknown key" if e["type"] == "extra_forbidden" else shorten(e["msg"])
        where = (lines or {}).get(loc) or (lines or {}).get(loc.replace(".options.", ".", 1))
        out.append(f"  {loc}: {msg}" + (f" ({where})" if where else ""))
    return "\n".join(out)


def _config_lines(path: Path, overrides: list[str] | tuple[str, ...]) -> dict[str, str]:
    """Where each key of an experiment came from: its file and line, or its dataset library config's;
    keys set on the command line point nowhere (their line would mislead)."""
    lines = key_lines(path)
    try:
        dataset = yaml.safe_load(path.read_text()).get("dataset")
        if isinstance(dataset, str) and not dataset.endswith((".yaml", ".yml")):
            lines |= key_lines(find_library_config(path.resolve().parent, "dataset", dataset), "dataset")
    except (OSError, AttributeError, yaml.YAMLError, ConfigError):
        pass
    overridden = [a.partition("=")[0].strip() for a in overrides]
    return {k: v for k, v in lines.items() if not any(k == o or k.startswith(o + ".") for o in overridden)}


def validate(data: dict[str, Any], source: str = "config", lines: dict[str, str] | None = None) -> RunConfig:
    """Validate a composed config, plug-in options included; errors name each bad key (and, with
    ``lines`` from :func:`key_lines`, the file and line it was written on)."""
    try:
        cfg = RunConfig(**data)
    except ValidationError as err:
        raise ConfigError(f"{source}: invalid configuration\n{_format_errors(err, lines=lines)}") from None
    checks = [
        ("model", lambda: cfg.model_options(), "model"),
        ("method", lambda: cfg.method_options(), "method"),
        ("dataset.options", lambda: cfg.dataset.reader_options(), "dataset.options"),
    ]
    for what, check, prefix in checks:
        try:
            check()
        except ValidationError as err:
            raise ConfigError(f"{source}: invalid {what}\n{_format_errors(err, prefix, lines)}") from None
        except KeyError as err:
            raise ConfigError(f"{source}: {err.args[0]}") from None
    return cfg


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Compose and validate an experiment config."""
    return validate(compose(path, overrides), source=str(path), lines=_config_lines(Path(path), overrides))


def to_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
