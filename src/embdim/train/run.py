"""Run folders: ``runs/<name>/`` with the resolved config, metrics, checkpoints, plan, slim model, result.

A folder without ``result.json`` is an unfinished run: running the same config again resumes it.
A folder with ``result.json`` is finished and is not trained again. A different config for an
existing folder is refused rather than mixed in; the error names the keys that differ.
"""

from __future__ import annotations

import json
import os
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import yaml

from embdim.config import ConfigError, RunConfig, to_yaml, validate, with_processes
from embdim.data.cache import read_schema
from embdim.data.prepare import STREAM_MIN_BYTES, PreparedData, prepare
from embdim.distributed.group import Group, join, launched_world, leave
from embdim.errors import DivergedError, EmbdimError, shorten
from embdim.plugins import READERS
from embdim.recommender import Recommender, check_precision, is_bundle
from embdim.train.checkpoint import atomic_write_json, atomic_write_text, init_weights_path, load_torch
from embdim.train.layout import CHECKPOINT_FILE, CONFIG_FILE, DIVERGED, RANKS_DIR, RESULT_FILE, RunFolder
from embdim.train.trainer import Trainer, build_run_recommender

SHOWN_CHANGES = 5  # differing keys named in an error before "and N more"
_ABSENT = "(absent)"


STREAMING_ENV = "EMBDIM_STREAMING"
"""``auto`` (default): stream sources larger than STREAM_MIN_BYTES; ``prefer``: stream every source whose
reader can; ``never``: read every source whole. The cache is the same either way."""


def prepare_dataset(cfg: RunConfig, progress: bool = True) -> PreparedData:
    """Read, split, encode and cache the config's dataset (or load it from the cache)."""
    ds = cfg.dataset
    reader = READERS.get(ds.reader)(ds.reader_options(), cfg.resolved_data_root())
    mode = os.environ.get(STREAMING_ENV, "auto")
    if mode not in ("auto", "prefer", "never"):
        raise ConfigError(f"${STREAMING_ENV}={shorten(repr(mode))}: use auto, prefer or never")
    return prepare(
        reader,
        ds.preprocess,
        Path(cfg.cache_root),
        ds.name,
        progress=progress,
        streaming=False if mode == "never" else None,
        stream_min_bytes=0 if mode == "prefer" else STREAM_MIN_BYTES,
    )


def run_dir_for(cfg: RunConfig) -> Path:
    return Path(cfg.run_root) / cfg.name


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists stay values)."""
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out |= _flat(value, f"{prefix}.{key}" if prefix else str(key))
    return out


#: keys that say how a run is executed, not what it trains: a run folder resumes, and a sweep keeps its finished
#: runs, whatever they are set to (``--jobs`` sets both; the thread count changes float rounding, not the run)
RUN_SETTINGS = frozenset({"train.threads", "train.progress"})


def config_changes(stored: dict[str, Any], current: dict[str, Any], ignore: frozenset[str] = frozenset()) -> list[str]:
    """The dotted keys whose values differ, as ``key: stored -> current`` (``(absent)`` where a side lacks it),
    the keys in ``ignore`` left out."""
    old, new = _flat(stored), _flat(current)
    return [
        f"{key}: {old.get(key, _ABSENT)} -> {new.get(key, _ABSENT)}"
        for key in sorted((old.keys() | new.keys()) - ignore)
        if old.get(key, _ABSENT) != new.get(key, _ABSENT)
    ]


def stored_config_changes(cfg: RunConfig, run_dir: Path | None = None) -> list[str]:
    """How the config stored in the run folder differs from ``cfg`` (empty: same, or no folder yet), the
    :data:`RUN_SETTINGS` aside. Keys a later version added (``train.processes``, say) count as changed only
    when ``cfg`` moves them off their defaults: the stored config is read as this version would have written it."""
    config_path = (Path(run_dir) if run_dir else run_dir_for(cfg)) / CONFIG_FILE
    if not config_path.exists():
        return []
    stored = _as_written_now(yaml.safe_load(config_path.read_text()))
    return config_changes(stored, yaml.safe_load(to_yaml(cfg)), RUN_SETTINGS)


def _as_written_now(stored: Any) -> Any:
    """A stored config with the keys added since it was written at their defaults (itself when it no
    longer validates: every difference then shows)."""
    try:
        return yaml.safe_load(to_yaml(validate(stored)))
    except (ConfigError, TypeError, ValueError):
        return stored


def describe_changes(changes: list[str], separator: str = "\n  ") -> str:
    """The first ``SHOWN_CHANGES`` of ``config_changes``, then how many more, joined by ``separator``."""
    more = [f"and {len(changes) - SHOWN_CHANGES} more"] if len(changes) > SHOWN_CHANGES else []
    return separator.join([*changes[:SHOWN_CHANGES], *more])


def remove_run_folder(run_dir: Path) -> None:
    """Delete one run's folder (``--force``): only a folder that holds a run (its ``config.yaml``) or
    nothing, never a link, and never one that holds other runs (a bench folder, a run root)."""
    if not run_dir.exists() and not run_dir.is_symlink():
        return
    if run_dir.is_symlink() or not run_dir.is_dir():
        raise ConfigError(f"--force: {run_dir} is not a run folder (a link or a file); remove it yourself")
    inner_runs = [p.parent for p in run_dir.glob(f"*/**/{CONFIG_FILE}")]
    if inner_runs or not ((run_dir / CONFIG_FILE).is_file() or not any(run_dir.iterdir())):
        raise ConfigError(
            f"--force: {run_dir} is not a single run's folder (it has no {CONFIG_FILE}, or holds other runs); "
            "nothing was deleted"
        )
    shutil.rmtree(run_dir)


def preflight(cfg: RunConfig) -> None:
    """Checks that need no data, run before any is prepared (the config itself is validated on load)."""
    check_precision(cfg.train.precision)
    if cfg.train.init_from:
        init_weights_path(Path(cfg.train.init_from))


def run_experiment(
    cfg: RunConfig,
    run_dir: Path | None = None,
    force: bool = False,
    trainer_cls: type[Trainer] = Trainer,
    memory_check: bool = True,
) -> dict[str, Any]:
    """Train (or resume, or return the finished result of) the run described by ``cfg``.

    A run that diverged keeps its folder (last good checkpoint, best weights) and a ``result.json``
    with ``"status": "diverged"`` and no metrics; running it again raises the same
    :class:`~embdim.errors.DivergedError` (``force`` trains it from scratch). ``memory_check`` refuses a
    run whose memory estimate exceeds the free memory (:mod:`embdim.train.memory`).

    With ``train.processes`` above one, the run's processes are started here (:mod:`embdim.train.launch`;
    ``trainer_cls`` must then be a module-level class); in a process a launcher started as one rank of
    several (``torchrun``), this rank of the run is trained, and every rank returns the result.
    """
    world = launched_world()
    if world is not None:
        return _run_as_rank(with_processes(cfg, world), run_dir, force, trainer_cls, memory_check)
    run_dir = Path(run_dir) if run_dir else run_dir_for(cfg)
    if cfg.train.processes > 1:
        return _launch(cfg, run_dir, force, trainer_cls, memory_check)
    resolved = to_yaml(cfg)
    config_path, result_path = run_dir / CONFIG_FILE, run_dir / RESULT_FILE
    finished = _existing_run(cfg, run_dir, force)
    if finished is not None:
        return finished
    data = prepare_dataset(cfg, progress=cfg.train.progress)
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(config_path, resolved)
        result = trainer_cls(cfg, data, run_dir, memory_check=memory_check).fit()
    except DivergedError as err:
        atomic_write_json(result_path, {"status": DIVERGED, "name": cfg.name, "error": str(err)})
        raise
    except BaseException:
        # a run that never reached its first checkpoint leaves nothing behind; later ones stay resumable
        if created and not (run_dir / CHECKPOINT_FILE).exists():
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    atomic_write_json(result_path, result)
    return result


def _existing_run(cfg: RunConfig, run_dir: Path, force: bool) -> dict[str, Any] | None:
    """Checks before a run trains: the config is runnable, ``force`` removes the old folder, a folder with
    another config is refused, a finished run returns its result (a diverged one raises its error)."""
    preflight(cfg)
    if force:
        remove_run_folder(run_dir)
    if (run_dir / CONFIG_FILE).exists():
        changes = stored_config_changes(cfg, run_dir)
        if changes:
            raise ConfigError(
                f"{run_dir} holds a run with a different config (stored -> now):\n  {describe_changes(changes)}\n"
                f"choose another name (name=...) or pass --force to start it again"
            )
        if (run_dir / RESULT_FILE).exists():
            result = json.loads((run_dir / RESULT_FILE).read_text())
            if result.get("status") == DIVERGED:
                raise DivergedError(result["error"])
            return result
    return None


def _launch(
    cfg: RunConfig, run_dir: Path, force: bool, trainer_cls: type[Trainer], memory_check: bool
) -> dict[str, Any]:
    """Start the run's ``train.processes`` ranks here; rank 0's result. A run that never reached its first
    checkpoint leaves nothing behind (the workers may have been stopped before they could clean up)."""
    from embdim.train.launch import launch_workers

    created = not run_dir.exists()
    try:
        return launch_workers(
            cfg.train.processes, _worker_run, cfg.model_dump(mode="json"), run_dir, force, trainer_cls, memory_check
        )
    except DivergedError:
        raise
    except BaseException:
        if created and not (run_dir / CHECKPOINT_FILE).exists():
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def _worker_run(
    cfg_data: dict[str, Any], run_dir: Path, force: bool, trainer_cls: type[Trainer], memory_check: bool
) -> dict[str, Any]:
    """The entry point of each process :func:`_launch` starts."""
    cfg = RunConfig.model_validate(cfg_data)
    if cfg.train.threads is None:  # the cores are shared out, not each process's to take
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // cfg.train.processes))
    return run_experiment(cfg, run_dir, force, trainer_cls, memory_check)


#: How long a rank waits for the others at a collective: rank 0 alone reads and caches the data first.
RANK_TIMEOUT = timedelta(hours=6)


def _run_as_rank(
    cfg: RunConfig, run_dir: Path | None, force: bool, trainer_cls: type[Trainer], memory_check: bool
) -> dict[str, Any]:
    """This process's rank of a run on several processes: rank 0 decides what to do and writes the shared
    files, every rank trains (see :mod:`embdim.train.sharded`)."""
    run_dir = Path(run_dir) if run_dir else run_dir_for(cfg)
    group, opened = join(timeout=RANK_TIMEOUT)
    try:
        return _train_rank(group, cfg, run_dir, force, trainer_cls, memory_check)
    finally:
        if opened:
            leave()


def _train_rank(
    group: Group, cfg: RunConfig, run_dir: Path, force: bool, trainer_cls: type[Trainer], memory_check: bool
) -> dict[str, Any]:
    decision: tuple[str, Any] = ("train", None)
    if group.is_main:
        try:
            result = _existing_run(cfg, run_dir, force)
            if result is not None:
                decision = ("done", result)
        except EmbdimError as err:  # every rank raises it, rather than wait for rank 0
            decision = ("error", (type(err), str(err)))
    kind, payload = group.broadcast(decision)
    if kind == "error":
        error_type, message = payload
        raise error_type(message)
    if kind == "done":
        return payload
    # rank 0 reads and caches the data; the others then open its cache
    data = prepare_dataset(cfg, progress=cfg.train.progress) if group.is_main else None
    group.barrier()
    if data is None:
        data = prepare_dataset(cfg, progress=False)
    created = not run_dir.exists()
    group.barrier()  # every rank has seen whether the folder existed before rank 0 makes it
    if group.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / CONFIG_FILE, to_yaml(cfg))
    group.barrier()
    try:
        result = trainer_cls(cfg, data, run_dir, memory_check=memory_check, group=group).fit()
    except DivergedError as err:
        if group.is_main:
            atomic_write_json(run_dir / RESULT_FILE, {"status": DIVERGED, "name": cfg.name, "error": str(err)})
        raise
    except BaseException:
        if group.is_main and created and not (run_dir / CHECKPOINT_FILE).exists():
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    if group.is_main:
        atomic_write_json(run_dir / RESULT_FILE, result)
    group.barrier()  # the result is on disk when any rank returns
    return result


def load_run(run_dir: str | Path) -> Recommender:
    """The model of a run folder as its last checkpoint left it, in eval mode: the training model (lookup
    tables, the searcher with its state: masks, thresholds, sizes), not the slim export. For a finished
    run these are the weights its export was made from; for a killed one, where it stopped.

    The fields come from the run's bundle (``model/schema.json``) when it has one, so no data is read;
    otherwise the dataset is prepared (or its cache opened). Example::

        rec = load_run("runs/quickstart")
        logits = rec(ids, dense)                       # ids int64 [B, F], dense float32 [B, Dn] | None
        plan = rec.embedding.plan()                    # the sizes it had learned
    """
    folder = RunFolder(Path(run_dir))
    if not folder.config.is_file() or not folder.checkpoint.is_file():
        raise ConfigError(f"{folder.root}: not a run folder with a checkpoint ({CONFIG_FILE}, {CHECKPOINT_FILE})")
    cfg = validate(yaml.safe_load(folder.config.read_text()), source=str(folder.config))
    schema = read_schema(folder.model) if is_bundle(folder.model) else prepare_dataset(cfg, progress=False).schema
    rec = build_run_recommender(cfg, schema)
    state = load_torch(folder.checkpoint)
    if "model" not in state:
        raise ConfigError(
            f"{folder.root} was trained on {state.get('processes', 'several')} processes: its checkpoint is "
            f"sharded over {RANKS_DIR}/; load its exported model instead (embdim.load, load_model)"
        )
    rec.load_state_dict(state["model"])
    rec.embedding.searcher.load_checkpoint_state(state["searcher"])
    return rec.eval()
