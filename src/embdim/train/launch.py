"""Starting the processes of a run on several local processes: ``embdim run CONFIG train.processes=N``.

:func:`launch_workers` starts ``N`` workers with torch's elastic launcher (the API behind ``torchrun``:
spawned processes, a c10d rendezvous on a free local port, no restarts). Each worker is one rank: it
calls the entry point it is given (:func:`embdim.train.run.run_experiment` on the same config, which
joins the process group from the launcher's environment), and rank 0's return value is returned. A
worker that fails writes what failed to a file before it exits, so the caller gets that error back as
itself (a ``ConfigError`` stays a ``ConfigError``, an interrupt an interrupt), never the launcher's
report; the other workers are stopped by the launcher.

``torchrun --nproc_per_node N -m embdim run CONFIG`` (and ``--nnodes``, for several machines) starts the
same ranks from outside: there ``run_experiment`` finds the launcher's environment and needs no launch.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import signal
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import embdim.errors as embdim_errors
from embdim.distributed.group import RANK_ENV
from embdim.errors import EmbdimError

#: The launcher's loggers: their notices and their report of a failed worker (whose own error is raised).
LAUNCHER_LOGGERS = ("torch.distributed.elastic", "torch.distributed.launcher", "torch.multiprocessing")
ERROR_FILE = "rank{rank}.json"


class WorkerFailed(Exception):
    """A worker process failed in a way that is not one of embdim's errors (a bug, or a killed process);
    the worker's traceback, when it had one, is the exception's cause."""


class RemoteTraceback(Exception):
    """A worker's traceback, as text (the cause of a :class:`WorkerFailed`)."""

    def __str__(self) -> str:
        return str(self.args[0])


def launch_workers(processes: int, entrypoint: Callable[..., Any], *args: Any) -> Any:
    """``entrypoint(*args)`` on ``processes`` local processes, each one rank; rank 0's return value.

    ``entrypoint`` and ``args`` are pickled (the workers are spawned): module-level functions and classes.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=processes,
        run_id=f"embdim-{uuid.uuid4().hex[:12]}",
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",  # a free port on this machine, as torchrun --standalone
        max_restarts=0,  # a failed run resumes from its checkpoint when run again
        start_method="spawn",
    )
    with tempfile.TemporaryDirectory(prefix="embdim-workers-") as error_dir, _quiet_launcher():
        try:
            results = elastic_launch(config, _worker)(entrypoint, error_dir, *args)
        except ChildFailedError as failed:
            error = _worker_error(Path(error_dir), failed)
            raise error from error.__cause__  # the worker's traceback, if it had one, and not the launcher's
        except SignalException as signalled:  # Ctrl-C or SIGTERM here: the launcher has stopped the workers
            raise KeyboardInterrupt(f"signal {signal.Signals(signalled.sigval).name}") from None
    return results[0]


def _worker(entrypoint: Callable[..., Any], error_dir: str, *args: Any) -> Any:
    """One rank of :func:`launch_workers`."""
    rank = int(os.environ[RANK_ENV])
    _log_like_the_command_line(rank)
    try:
        return entrypoint(*args)
    except BaseException as err:
        _record(Path(error_dir), rank, err)
        sys.exit(1)  # a failed worker: the launcher stops the others


def _log_like_the_command_line(rank: int) -> None:
    """Rank 0 shows embdim's warnings as the command line does (``warning: ...``); the others keep quiet
    (every rank meets the same warnings)."""
    logger = logging.getLogger("embdim")
    if rank != 0:
        logger.setLevel(logging.ERROR)
    elif not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("warning: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.WARNING)
        logger.propagate = False


def _record(error_dir: Path, rank: int, err: BaseException) -> None:
    record = {
        "rank": rank,
        "time": time.time(),
        "module": type(err).__module__,
        "type": type(err).__name__,
        "message": str(err),
        "errno": getattr(err, "errno", None),
        "strerror": getattr(err, "strerror", None),
        "filename": getattr(err, "filename", None),
        "traceback": traceback.format_exc(),
    }
    with contextlib.suppress(OSError):
        (error_dir / ERROR_FILE.format(rank=rank)).write_text(json.dumps(record))


def _worker_error(error_dir: Path, failed: Any) -> BaseException:
    """The first failure among the workers, as the exception it was."""
    records = []
    for path in error_dir.glob(ERROR_FILE.format(rank="*")):
        with contextlib.suppress(OSError, ValueError):
            records.append(json.loads(path.read_text()))
    if not records:  # killed before it could say (a signal: out of memory, say)
        rank, failure = failed.get_first_failure()
        how = f"signal {failure.signal_name()}" if failure.exitcode < 0 else f"exit code {failure.exitcode}"
        return WorkerFailed(f"worker rank {rank} stopped with {how} and no error (killed, or out of memory?)")
    first = min(records, key=lambda r: r["time"])
    return rebuild_error(first)


def rebuild_error(record: dict[str, Any]) -> BaseException:
    """A worker's error record -> the exception to raise here: embdim's errors, interrupts and OS errors as
    themselves; anything else a :class:`WorkerFailed` caused by the worker's traceback."""
    name, message = record["type"], record["message"]
    if name == "KeyboardInterrupt":
        return KeyboardInterrupt(message)
    if record.get("errno") is not None and name in {c.__name__ for c in _os_errors()}:
        return OSError(record["errno"], record.get("strerror") or message, record.get("filename"))
    cls = _embdim_error_class(record["module"], name)
    if cls is not None:
        try:
            return cls(message)
        except TypeError:
            return EmbdimError(message)
    error = WorkerFailed(f"worker rank {record['rank']}: {name}: {message}")
    error.__cause__ = RemoteTraceback(record["traceback"])
    return error


def _os_errors() -> list[type]:
    return [OSError, *OSError.__subclasses__()]


def _embdim_error_class(module: str, name: str) -> type[EmbdimError] | None:
    """embdim's error class ``module.name``, if it is one."""
    if not module.startswith("embdim"):
        return None
    candidate = getattr(embdim_errors, name, None)
    if candidate is None:
        with contextlib.suppress(ImportError):
            candidate = getattr(importlib.import_module(module), name, None)
    return candidate if isinstance(candidate, type) and issubclass(candidate, EmbdimError) else None


@contextlib.contextmanager
def _quiet_launcher() -> Iterator[None]:
    """The launcher's own logs (rendezvous notices, its report of a failed worker or a signal) are not
    shown: a worker's error is raised here as itself. Each of its modules sets its own logger's level, so
    every one of them is quietened (and restored after)."""
    loggers = [
        logging.getLogger(name)
        for name in list(logging.root.manager.loggerDict)
        if any(name == prefix or name.startswith(prefix + ".") for prefix in LAUNCHER_LOGGERS)
    ]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
