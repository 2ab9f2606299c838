"""Training on several processes: TorchRec shards the tables, the rest is data-parallel, and a run on two
processes is the run on one (same losses, weights, metrics and export), resumable and cleanly failing.

The tests marked ``multiprocess`` start two gloo processes on the CPU each (torch's elastic launcher, or
torchrun): they are slow (``pytest -m multiprocess`` runs them). The others check what needs no process
group: the config's refusals, the shares of a batch, errors coming back from workers, the estimate.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

pytest.importorskip("torchrec")

import example_method  # noqa: F401  (workers that unpickle this module's trainers register the plug-in method too)
from embdim import list_searchers
from embdim.cli import app
from embdim.config import ConfigError, to_yaml, with_processes
from embdim.distributed.group import split_rows
from embdim.errors import DataError, EmbdimError
from embdim.recommender import load_model
from embdim.train.batches import Prefetcher
from embdim.train.evaluate import batch_tensors
from embdim.train.launch import RemoteTraceback, WorkerFailed, rebuild_error
from embdim.train.memory import InsufficientMemory, estimate_training_memory
from embdim.train.metrics import roc_auc
from embdim.train.run import load_run, prepare_dataset, run_experiment
from embdim.train.trainer import Trainer
from test_train import small_config

#: A run whose steps one and two processes take alike: fused SGD at a constant rate, no dropout or batch norm
#: (each process would draw its own masks and normalise by its own share), no clipping or embedding L2.
EXACT = (
    "embedding.backend=torchrec",
    "train.optimizer=sgd",
    "train.lr=0.05",
    "train.lr_schedule=constant",
    "train.embedding_weight_decay=0",
    "train.clip_grad_norm=null",
    "model.dropout=0",
    "model.batch_norm=false",
    "train.max_steps=12",
)
#: Both ranks hold a shard of full's single table: its columns split in two.
COLUMN_SHARDS = ("embedding.sharding.types=[column_wise]", "embedding.sharding.min_column_width=4")
#: full's table is larger than one process may hold (the planner counts 68 kB for it whole with its
#: buffers, 38 kB per half): table-wise is allowed but cannot fit, so the planner splits it.
OVER_THE_CAP = (
    "embedding.sharding.types=[table_wise,column_wise]",
    "embedding.sharding.min_column_width=4",
    "embedding.sharding.memory_per_process=50000",
)
TWO = "train.processes=2"
#: Two processes add only float summation order to the one-process run.
TOLERANCE = 1e-5


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    return {f"{f.name}:{k}": v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(f).items()}


def _assert_same_run(one: Path, two: Path) -> None:
    """The losses and validation metrics of every evaluation, and the exported weights, agree."""
    a, b = _metrics(one), _metrics(two)
    assert [x["step"] for x in a] == [x["step"] for x in b]
    for key in ("train_loss", "valid_auc", "valid_logloss"):
        np.testing.assert_allclose([x[key] for x in b], [x[key] for x in a], rtol=0, atol=TOLERANCE, err_msg=key)
    weights_one, weights_two = _tensors(one / "model"), _tensors(two / "model")
    assert weights_one.keys() == weights_two.keys()
    for key, value in weights_one.items():
        torch.testing.assert_close(weights_two[key], value, rtol=0, atol=TOLERANCE, msg=key)


# ---------------------------------------------------------------------- without a process group
@pytest.mark.parametrize(
    "overrides, names",
    [
        (("embedding.backend=torch",), ("train.processes=2", "embedding.backend=torchrec")),
        (("train.fused=false", "train.optimizer=adam"), ("train.processes=2", "train.fused=true")),
        (("train.embedding_decay=looked_up", "train.embedding_weight_decay=0.1"), ("train.embedding_decay",)),
        (("train.batch_size=1",), ("train.batch_size=1",)),
        (("embedding.sharding.types=[row_wise]",), ("embedding.sharding.types", "CUDA")),
        (("embedding.sharding.types=[data_parallel]",), ("embedding.sharding.types", "dense kernel")),
        (("embedding.sharding.types=[diagonal]",), ("embedding.sharding.types", "unknown sharding type")),
        (("embedding.sharding.min_column_width=6",), ("embedding.sharding.min_column_width", "multiple of 4")),
    ],
)
def test_a_run_on_several_processes_it_cannot_train_is_refused_naming_the_keys(tmp_path, overrides, names):
    with pytest.raises(ConfigError) as err:
        small_config(tmp_path, *EXACT, TWO, *overrides)
    for name in names:
        assert name in str(err.value)
    assert not (tmp_path / "runs").exists()


def test_a_method_that_does_not_shard_is_refused_by_name_before_anything_starts(tmp_path, monkeypatch):
    from embdim.plugins import SEARCHERS

    monkeypatch.setattr(SEARCHERS.get("fixed_widths"), "shardable", False)  # a plug-in that does not opt in
    with pytest.raises(ConfigError, match=r"train\.processes=2: method fixed_widths (.|\n)*those that do: amtl, dml"):
        small_config(tmp_path, *EXACT, TWO, "method=fixed_widths")
    assert not (tmp_path / "runs").exists()


def test_a_launcher_s_world_size_becomes_train_processes_unless_the_config_says_otherwise(tmp_path):
    cfg = small_config(tmp_path, *EXACT)
    assert with_processes(cfg, 2).train.processes == 2
    assert with_processes(with_processes(cfg, 2), 2).train.processes == 2
    with pytest.raises(ConfigError, match=r"train\.processes=3, but the launcher started 2"):
        with_processes(small_config(tmp_path, *EXACT, "train.processes=3"), 2)
    with pytest.raises(ConfigError, match=r"2 processes \(WORLD_SIZE\)(.|\n)*embedding\.backend=torchrec"):
        with_processes(small_config(tmp_path, *EXACT, "embedding.backend=torch"), 2)


def test_each_process_reads_its_share_of_every_global_batch(tmp_path):
    cfg = small_config(tmp_path, "name=s")
    train = prepare_dataset(cfg, progress=False).splits["train"]
    order = np.random.default_rng(0).permutation(len(train))

    def batches(share=None) -> list:
        with Prefetcher(train, order, 100, share=share) as gathered:
            return list(gathered)

    whole = batches()
    shares = [batches(lambda rows, r=r: np.array_split(rows, 3)[r]) for r in range(3)]
    assert [len(s) for s in shares] == [len(whole)] * 3  # every process takes as many steps
    for step, (ids, _, labels) in enumerate(whole):
        parts = [shares[r][step] for r in range(3)]
        assert [len(p[2]) for p in parts] == split_rows(len(labels), 3)
        assert torch.equal(torch.cat([p[0] for p in parts]), ids)
        assert torch.equal(torch.cat([p[2] for p in parts]), labels)


def test_a_worker_s_error_comes_back_as_itself():
    def record(error: BaseException, **extra) -> dict:
        return {"rank": 1, "module": type(error).__module__, "type": type(error).__name__, "message": str(error)} | {
            "errno": None,
            "traceback": "Traceback ...\nValueError: deep inside",
            **extra,
        }

    for error in (ConfigError("train.lr: bad"), DataError("a.csv:3: bad"), InsufficientMemory("needs 9 GiB")):
        back = rebuild_error(record(error))
        assert type(back) is type(error) and str(back) == str(error)
    assert isinstance(rebuild_error(record(KeyboardInterrupt("simulated kill"))), KeyboardInterrupt)
    disk = rebuild_error(record(OSError(28, "No space left on device", "x.pt"), errno=28, filename="x.pt"))
    assert isinstance(disk, OSError) and disk.errno == 28 and disk.filename == "x.pt"
    bug = rebuild_error(record(ValueError("deep inside")))
    assert isinstance(bug, WorkerFailed) and not isinstance(bug, EmbdimError)
    assert str(bug) == "worker rank 1: ValueError: deep inside"
    assert isinstance(bug.__cause__, RemoteTraceback) and "Traceback" in str(bug.__cause__)


def test_the_memory_estimate_of_several_processes_counts_the_tables_once_and_the_rest_per_process(tmp_path):
    one = small_config(tmp_path, *EXACT)
    schema = prepare_dataset(one, progress=False).schema
    a = estimate_training_memory(one, schema)
    b = estimate_training_memory(small_config(tmp_path, *EXACT, TWO), schema)
    assert (
        b.parts["a second copy of the tables (fusing, export)"]
        == a.parts["a second copy of the tables (fusing, export)"]
    )
    assert b.parts["runtime"] == 2 * a.parts["runtime"]
    assert b.parts["model and method parameters"] == 2 * a.parts["model and method parameters"]


@pytest.mark.parametrize("method", ["pep", "amtl"])
def test_the_estimate_counts_a_method_s_sharded_state_once_and_its_replicated_state_per_process(tmp_path, method):
    from embdim.plugins import SEARCHERS

    one = small_config(tmp_path, *EXACT, f"method={method}")
    schema = prepare_dataset(one, progress=False).schema
    memory = SEARCHERS.get(method).training_memory(schema.fields, 8, one.method_options())
    assert 0 < memory.replicated <= memory.state
    a = estimate_training_memory(one, schema).parts["method state"]
    b = estimate_training_memory(small_config(tmp_path, *EXACT, f"method={method}", TWO), schema).parts["method state"]
    assert (a, b) == (memory.state, memory.state + memory.replicated)


# ---------------------------------------------------------------------- two processes
class WithThisModule(Trainer):
    """The trainer, from this module: a worker that unpickles it imports this module, which registers the
    example plug-in method (a plug-in must be registered in every process that trains it)."""


class KilledAtStepSeven(WithThisModule):
    """Raises (like a kill) on every rank after step 7; module level, so that spawned workers import it."""

    def after_step(self, p):
        if p.stage_index == 0 and p.step == 7:
            raise KeyboardInterrupt("simulated kill")


class KilledAtTheSeventhStep(WithThisModule):
    """Raises (like a kill) on every rank after the run's seventh step, in whichever stage it falls."""

    def after_step(self, p):
        if sum(stage["steps"] for stage in self.stage_results.values()) + p.step == 7:
            raise KeyboardInterrupt("simulated kill")


class FailsOnRankOne(Trainer):
    """A bug on rank 1 alone: rank 0 waits in its next collective until the launcher stops it."""

    def after_step(self, p):
        if p.step == 2 and self.sharded is not None and self.sharded.group.rank == 1:
            raise RuntimeError("boom on rank 1")


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_train_full_whose_table_exceeds_a_process_s_cap_as_one_process_does(tmp_path):
    # every step evaluated, so metrics.jsonl holds each step's loss
    opts = (*EXACT, "train.eval_every_steps=1")
    one = run_experiment(small_config(tmp_path, "name=one", *opts))
    two = run_experiment(small_config(tmp_path, "name=two", *opts, *OVER_THE_CAP, TWO))
    runs = tmp_path / "runs"
    _assert_same_run(runs / "one", runs / "two")
    assert (one["processes"], two["processes"]) == (1, 2)
    for key in ("valid_auc", "test_auc", "test_logloss", "embedding_bytes", "model_bytes"):
        assert two[key] == pytest.approx(one[key], abs=TOLERANCE), key
    assert two["test_auc"] > 0.55  # it learned
    # the plan: the single table split in column blocks, one on each rank
    plan = json.loads((runs / "two" / "sharding_plan.json").read_text())
    table = plan["tables"]["all"]
    assert plan["processes"] == 2 and table["sharding_type"] == "column_wise"
    assert sorted(s["rank"] for s in table["shards"]) == [0, 1]
    assert sum(s["columns"] for s in table["shards"]) == 8
    for rank in (0, 1):
        assert (runs / "two" / "ranks" / str(rank) / "best.safetensors").is_file()
    # the bundle loads as a one-process run's does, and its test AUC is the gathered scores' AUC
    import embdim

    bundle = embdim.load(runs / "two")
    test = prepare_dataset(small_config(tmp_path, *EXACT), progress=False).splits["test"]
    ids, dense, labels = batch_tensors(test, np.arange(len(test)))
    with torch.no_grad():
        logits_two = bundle.model(ids, dense).numpy()
        logits_one = load_model(runs / "one" / "model")(ids, dense).numpy()
    np.testing.assert_allclose(logits_two, logits_one, rtol=0, atol=TOLERANCE)
    assert roc_auc(labels.numpy(), logits_two) == pytest.approx(two["test_auc"], abs=1e-6)
    assert two["export_max_abs_logit_diff"] < 1e-6
    with pytest.raises(ConfigError, match="sharded"):
        load_run(runs / "two")  # the training state is spread over the ranks: the bundle is the model


@pytest.mark.slow
@pytest.mark.multiprocess
def test_a_killed_two_process_run_resumes_to_the_one_process_result(tmp_path):
    # fused Adagrad keeps state per row: a resume that lost it would not land within the tolerance
    opts = (*EXACT, *COLUMN_SHARDS, "train.optimizer=adagrad", "train.lr=0.02", "train.eval_every_steps=3")
    one = run_experiment(small_config(tmp_path, "name=one", *opts))
    cfg = small_config(tmp_path, "name=two", *opts, TWO)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, trainer_cls=KilledAtStepSeven)
    run = tmp_path / "runs" / "two"
    assert (run / "checkpoint.pt").is_file() and not (run / "result.json").exists()
    assert [x["step"] for x in _metrics(run)] == [3, 6]
    two = run_experiment(cfg)
    _assert_same_run(tmp_path / "runs" / "one", run)
    for key in ("valid_auc", "test_auc", "test_logloss"):
        assert two[key] == pytest.approx(one[key], abs=TOLERANCE), key
    for rank in (0, 1):  # one generation of each rank's checkpoint is kept
        assert len(list((run / "ranks" / str(rank)).glob("checkpoint-*.pt"))) == 1


@pytest.mark.slow
@pytest.mark.multiprocess
def test_a_rank_s_damaged_checkpoint_starts_every_rank_again_from_step_zero(tmp_path):
    one = run_experiment(small_config(tmp_path, "name=one", *EXACT))
    cfg = small_config(tmp_path, "name=two", *EXACT, *COLUMN_SHARDS, TWO)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, trainer_cls=KilledAtStepSeven)
    run = tmp_path / "runs" / "two"
    (part,) = (run / "ranks" / "1").glob("checkpoint-*.pt")
    part.write_bytes(part.read_bytes()[:100])
    two = run_experiment(cfg)
    assert (run / "checkpoint.pt.corrupt").is_file()
    assert any("cannot be resumed" in w for w in two["warnings"])
    assert two["test_auc"] == pytest.approx(one["test_auc"], abs=TOLERANCE)
    assert [x["step"] for x in _metrics(run)] == [x["step"] for x in _metrics(tmp_path / "runs" / "one")]


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_train_mde_s_tables_placed_on_both_ranks_as_one_process_does(tmp_path):
    opts = (*EXACT, "method=mde", "method.alpha=0.5", "train.optimizer=adagrad", "train.lr=0.02")
    one = run_experiment(small_config(tmp_path, "name=one", *opts, "train.eval_every_steps=3"))
    two = run_experiment(small_config(tmp_path, "name=two", *opts, "train.eval_every_steps=3", TWO))
    runs = tmp_path / "runs"
    _assert_same_run(runs / "one", runs / "two")
    plan = json.loads((runs / "two" / "sharding_plan.json").read_text())
    assert len(plan["tables"]) > 1 and all(plan["weight_bytes_per_rank"])  # both ranks hold tables
    assert two["embedding_bytes"] == one["embedding_bytes"] and two["export_max_abs_logit_diff"] < 1e-6


@pytest.mark.slow
@pytest.mark.multiprocess
def test_a_worker_s_bug_surfaces_as_one_error_with_its_traceback(tmp_path):
    with pytest.raises(WorkerFailed, match="worker rank 1: RuntimeError: boom on rank 1") as err:
        run_experiment(small_config(tmp_path, "name=bug", *EXACT, TWO), trainer_cls=FailsOnRankOne)
    assert "after_step" in str(err.value.__cause__)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_embdim_run_on_two_processes_prints_a_worker_s_error_as_one_line(tmp_path):
    config = _config_file(tmp_path, TWO, "embedding.sharding.memory_per_process=1000")  # no placement fits
    result = CliRunner().invoke(app, ["run", str(config), "--no-progress"])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "embedding.sharding.memory_per_process" in errors[0], result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "runs" / "cli").exists()  # it never reached a checkpoint: nothing is left


@pytest.mark.slow
@pytest.mark.multiprocess
def test_torchrun_around_embdim_run_trains_the_same_run(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("no torchrun next to this Python")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "embdim", "run"]
    done = subprocess.run(
        [*command, str(_config_file(tmp_path)), "--no-progress"], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    one = run_experiment(small_config(tmp_path, "name=one", *EXACT))
    result = json.loads((tmp_path / "runs" / "cli" / "result.json").read_text())
    assert result["processes"] == 2  # the launcher's WORLD_SIZE, recorded in the config and the result
    assert "processes: 2" in (tmp_path / "runs" / "cli" / "config.yaml").read_text()
    assert result["test_auc"] == pytest.approx(one["test_auc"], abs=TOLERANCE)
    assert done.stdout.count('"test_auc"') == 1  # rank 0 alone reports
    # default sharding settings: the one table (8 wide) splits into a column block per rank
    plan = json.loads((tmp_path / "runs" / "cli" / "sharding_plan.json").read_text())
    assert sorted((s["rank"], s["columns"]) for t in plan["tables"].values() for s in t["shards"]) == [(0, 4), (1, 4)]


def _config_file(tmp_path: Path, *overrides: str) -> Path:
    """:func:`small_config`'s run of :data:`EXACT` (named ``cli``) as a whole YAML file, for the command line."""
    path = tmp_path / "cli.yaml"
    path.write_text(to_yaml(small_config(tmp_path, "name=cli", *EXACT, *overrides)))
    return path


#: Each method's options for a short run that goes through all its stages (each stage at most
#: ``train.max_steps=12`` steps): PEP passes its targets in the search (its masks then chosen over both
#: ranks) and retrains from the rewound weights; DML warms up (its lengths unused, then trained), its
#: controller steers the lengths to a budget, the cut repairs them to it ([8, 4, 5, 5]) and it fine-tunes;
#: AMTL steers to a budget, freezes its sizes and fine-tunes.
METHOD_OPTIONS = {
    "pep": (
        "method.targets=[0.1,0.3]",  # passed at steps 8 and 12 (a kill at step 7 resumes its row-wise state)
        "method.pull_start_epochs=0",
        "method.drift_per_epoch=8",
        "method.measure_every_steps=2",
        "method.fused_threshold=false",  # torch.compile in each worker would take longer than the run
    ),
    "dml": ("method.warmup_steps=3", "method.anneal_steps=6", "method.budget=0.6", "method.length_lr_scale=200"),
    "amtl": ("method.budget=0.8", "method.budget_interval=1", "method.budget_rate=2"),
}


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.parametrize("method", list_searchers())
def test_every_method_trains_all_its_stages_on_two_processes_resumes_after_a_kill_and_matches_one_process(
    method, tmp_path
):
    from embdim.plugins import SEARCHERS

    opts = (*EXACT, *COLUMN_SHARDS, f"method={method}", *METHOD_OPTIONS.get(method, ()), "train.eval_every_steps=3")
    if not SEARCHERS.get(method).shardable:
        with pytest.raises(ConfigError, match=rf"train\.processes=2: method {method} "):
            small_config(tmp_path, *opts, TWO)
        return
    one = run_experiment(small_config(tmp_path, "name=one", *opts))
    cfg = small_config(tmp_path, "name=two", *opts, TWO)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, trainer_cls=KilledAtTheSeventhStep)
    run, runs = tmp_path / "runs" / "two", tmp_path / "runs"
    assert (run / "checkpoint.pt").is_file() and not (run / "result.json").exists()
    two = run_experiment(cfg, trainer_cls=WithThisModule)
    assert two["processes"] == 2 and list(two["stages"]) == list(one["stages"])
    assert {line["stage"] for line in _metrics(run)} == set(one["stages"])
    _assert_same_run(runs / "one", run)
    for key in ("valid_auc", "test_auc", "test_logloss", "embedding_bytes", "model_bytes"):
        assert two[key] == pytest.approx(one[key], abs=TOLERANCE), key
    assert two["searcher"].keys() == one["searcher"].keys()
    plan = json.loads((run / "sharding_plan.json").read_text())
    assert plan["processes"] == 2 and {s["rank"] for t in plan["tables"].values() for s in t["shards"]} == {0, 1}
    import embdim

    test = prepare_dataset(small_config(tmp_path, *EXACT), progress=False).splits["test"]
    ids, dense, labels = batch_tensors(test, np.arange(len(test)))
    with torch.no_grad():
        logits, logits_one = embdim.load(run).model(ids, dense).numpy(), load_model(runs / "one" / "model")(ids, dense)
    np.testing.assert_allclose(logits, logits_one.numpy(), rtol=0, atol=TOLERANCE)
    assert roc_auc(labels.numpy(), logits) == pytest.approx(two["test_auc"], abs=1e-6)
    assert two["export_max_abs_logit_diff"] < 1e-5


# ---------------------------------------------------------------------- PEP's state laid out like the table
class _ColumnShardedTable:
    """A lookup's sharded table as PEP reads it on several processes (TorchRecLookup's ``column_blocks`` and
    ``local_columns``): this rank's column blocks of ``table``, copied."""

    def __init__(self, table: torch.Tensor, blocks: list[tuple[int, int, int]], rank: int) -> None:
        self.blocks = blocks
        self.mine = [(first, end, table[:, first:end].clone()) for r, first, end in blocks if r == rank]

    def column_blocks(self, name: str) -> list[tuple[int, int, int]]:
        return sorted(self.blocks, key=lambda b: b[1])

    def local_columns(self, name: str) -> list[tuple[int, int, torch.Tensor]]:
        return sorted(self.mine, key=lambda b: b[0])


class _WholeTable:
    def __init__(self, table: torch.Tensor) -> None:
        self.table = table

    def table_weight(self, name: str) -> torch.Tensor:
        return self.table


#: Column layouts of an 8-wide table on two ranks: halves, interleaved blocks (two per rank), all on rank 1.
LAYOUTS = {
    "halves": [(0, 0, 4), (1, 4, 8)],
    "interleaved": [(0, 0, 2), (1, 2, 4), (0, 4, 6), (1, 6, 8)],
    "table_wise": [(1, 0, 8)],
}


def _pep_parts_agree(rank: int, port: int) -> None:
    """One rank of :func:`test_pep_s_sharded_state_gives_what_one_process_computes_over_any_column_layout`."""
    import torch.distributed as dist

    from embdim.data.schema import FieldInfo
    from embdim.searchers.pep import PEPConfig, PEPSearcher

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    fields = [FieldInfo("a", 30), FieldInfo("b", 50)]
    n, d = 80, 8
    for granularity in ("feature_dim", "feature", "field_dim"):  # row-wise (d or 1 per row), or replicated
        for layout, blocks in LAYOUTS.items():
            where = f"{granularity}, {layout}"
            gen = torch.Generator().manual_seed(1)
            table = torch.randn(n, d, generator=gen) * 0.1
            table[5:9] = table[3]  # equal margins: ties the masks break in row-major order
            config = PEPConfig(granularity=granularity, s0=-3.0, targets=[0.3, 0.6], fused_threshold=False)
            one, two = PEPSearcher(fields, d, config), PEPSearcher(fields, d, config)
            with torch.no_grad():
                start = torch.randn(one.threshold.shape, generator=gen) - 3.0
                one.threshold.copy_(start)
                two.threshold.copy_(start)
            whole, sharded = _WholeTable(table), _ColumnShardedTable(table, blocks, rank)
            two.shard(sharded)
            assert two._count_kept(sharded) == one._count_kept(whole), where
            for keep in (0, 1, 200, 333, 639, 640):
                mask = two.shards_.gather(two._top_mask(two.margins(sharded), keep), d, n)
                if rank == 0:
                    assert torch.equal(mask, one._top_mask(one.margins(whole), keep)), (where, keep)
            assert torch.equal(two._sampled_magnitudes(sharded), whole.table.abs().flatten()), where
            # steps of row-wise thresholds: each rank looks up its share of the global batch
            ids = torch.stack([torch.randint(0, f.vocab_size, (12,), generator=gen) for f in fields], 1)
            ids[3] = ids[7]  # a row looked up by both ranks
            weights = torch.randn(12, 2, one.threshold_width, generator=gen)
            for cut in (5, 5, 12):  # uneven shares, then all rows on rank 0 (an epoch's last batch of one row)
                one.batch_thresholds(ids).mul(weights).sum().backward()
                share = slice(0, cut) if rank == 0 else slice(cut, 12)
                (two.batch_thresholds(ids[share]).mul(weights[share]).sum() * 2).backward()
            state = two.gather_state(sharded)
            if rank == 0:
                for key, value in one.state_dict().items():
                    torch.testing.assert_close(state[0][key], value, rtol=0, atol=1e-6, msg=f"{where}: {key}")
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.multiprocess
def test_pep_s_sharded_state_gives_what_one_process_computes_over_any_column_layout():
    """PEP's state on two ranks (halves, interleaved blocks, all on one rank; thresholds per value, per row or
    replicated) measures, masks, steps and gathers as on one process."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_pep_parts_agree, args=(port,), nprocs=2)
