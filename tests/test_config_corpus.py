"""A generated corpus of bad configs and overrides: each is one ``error:`` line naming its key, before any work.

Every option of every registered model and method, and of the run's sections, gets values of the
wrong type or out of range; unknown keys at every level; malformed overrides and YAML files; unsafe
names; budgets, seeds, split ratios and ``init_from`` that cannot work. The whole corpus is slow-marked;
a sample runs in the default suite.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import BaseModel
from typer.testing import CliRunner

from conftest import REPO_ROOT, TINY_SYNTHETIC
from embdim.cli import app
from embdim.config import EmbeddingConfig, LRScheduleConfig, TrainConfig
from embdim.plugins import MODELS, SEARCHERS

QUICKSTART = REPO_ROOT / "configs" / "experiments" / "quickstart.yaml"


@dataclass(frozen=True)
class Case:
    """``overrides`` (or a YAML ``text`` written as the experiment) must fail naming ``key``."""

    id: str
    key: str
    overrides: tuple[str, ...] = ()
    text: str | None = None


def _bad_values(annotation: object) -> list[object]:
    """Override values of the wrong type for a field of this type (YAML text)."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Literal:
        return ["not_a_choice"]
    if type(None) in args:  # Optional[X]: X's bad values
        inner = [a for a in args if a is not type(None)]
        return _bad_values(inner[0]) if len(inner) == 1 else ["[[[]]]"]
    if annotation is bool:
        return ["maybe", "[1]"]
    if annotation in (int, float):
        return ["ten", "true", "[1, 2]", ".inf"] if annotation is float else ["ten", "true", "2.5"]
    if typing.get_origin(annotation) is list:
        return ["{a: 1}"]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return ["{no_such_key: 1}"]
    return []


def _option_cases(prefix: str, config: type[BaseModel], extra: tuple[str, ...] = ()) -> list[Case]:
    cases = []
    for key, field in config.model_fields.items():
        if key == "progress":  # the CLI's --no-progress sets it after every override
            continue
        for i, value in enumerate(_bad_values(field.annotation)):
            cases.append(Case(f"{prefix}.{key}-{i}", f"{prefix}.{key}", (*extra, f"{prefix}.{key}={value}")))
        for bound, value in (("ge", "-1"), ("gt", "0")):
            if any(getattr(m, bound, None) == 0 for m in field.metadata):
                cases.append(Case(f"{prefix}.{key}-{bound}", f"{prefix}.{key}", (*extra, f"{prefix}.{key}={value}")))
    cases.append(Case(f"{prefix}-unknown", f"{prefix}.no_such_option", (*extra, f"{prefix}.no_such_option=1")))
    return cases


def _corpus() -> list[Case]:
    cases: list[Case] = []
    cases += _option_cases("train", TrainConfig)
    cases += _option_cases("embedding", EmbeddingConfig)
    cases += _option_cases("train.lr_schedule", LRScheduleConfig)
    for name in MODELS.names():
        cases += _option_cases("model", MODELS.get(name).Config, (f"model={name}",))
    for name in SEARCHERS.names():
        cases += [
            Case(f"{c.id}@{name}", c.key, c.overrides)
            for c in _option_cases("method", SEARCHERS.get(name).Config, (f"method={name}",))
        ]
    cases += [
        Case("unknown-section", "no_such_section", ("no_such_section.x=1",)),
        Case("unknown-top-key", "colour", ("colour=red",)),
        Case("unknown-model", "unknown model", ("model=no_such_model",)),
        Case("unknown-method", "unknown searcher", ("method=no_such_method",)),
        Case("unknown-reader", "dataset.reader", ("dataset.reader=no_such_reader",)),
        Case("unknown-dataset", "no library config datasets/nope.yaml", ("dataset=nope",)),
        Case("reader-option", "dataset.options.no_such_option", ("dataset.options.no_such_option=1",)),
        Case("preprocess-key", "dataset.preprocess.no_such_key", ("dataset.preprocess.no_such_key=1",)),
        Case("min-count", "dataset.preprocess.min_count", ("dataset.preprocess.min_count=0",)),
        Case("numeric-mode", "dataset.preprocess.numeric", ("dataset.preprocess.numeric=sometimes",)),
        Case("split-ratios-empty", "dataset.preprocess.split.ratios", ("dataset.preprocess.split.ratios=[1, 0, 0]",)),
        Case("split-ratios-short", "dataset.preprocess.split.ratios", ("dataset.preprocess.split.ratios=[1, 1]",)),
        Case(
            "split-ratios-negative", "dataset.preprocess.split.ratios", ("dataset.preprocess.split.ratios=[1, -1, 1]",)
        ),
        Case("negative-seed", "train.seed", ("train.seed=-1",)),
        Case("negative-split-seed", "dataset.preprocess.split.seed", ("dataset.preprocess.split.seed=-1",)),
        Case("negative-reader-seed", "dataset.options.seed", ("dataset.options.seed=-1",)),
        Case("epochs-bool", "train.epochs", ("train.epochs=true",)),
        Case("lr-inf", "train.lr", ("train.lr=.inf",)),
        Case("lr-nan", "train.lr", ("train.lr=.nan",)),
        Case("plateau-patience", "train.lr_schedule.patience", ("train.lr_schedule=plateau", "train.patience=1")),
        Case(
            "sparse-decay",
            "train.embedding_decay=looked_up",
            ("embedding.sparse=true", "train.embedding_weight_decay=0.1"),
        ),
        Case("fused-adam", "train.optimizer=adam", ("embedding.backend=torchrec", "train.optimizer=adam")),
        Case("backend", "embedding.backend", ("embedding.backend=gpu_magic",)),
        Case("init-from-missing", "train.init_from", ("train.init_from=/nowhere/at/all",)),
        Case("init-from-not-weights", "train.init_from", (f"train.init_from={QUICKSTART}",)),
        Case("override-no-equals", "must look like key=value", ("train.lr",)),
        Case("override-yaml", "override model.hidden", ("model.hidden=[64,",)),
        Case("override-yaml-brace", "override train.lr", ("train.lr={",)),
        Case("override-not-section", "train.lr is not a section", ("train.lr.x=1",)),
        Case("override-model-not-mapping", "model", ("model=[1, 2]",)),
    ]
    for method in ("pep", "dml", "amtl"):
        cases += [
            Case(f"budget-over-one@{method}", "method.budget", (f"method={method}", "method.budget={value: 1.5}")),
            Case(f"budget-zero@{method}", "method.budget.value", (f"method={method}", "method.budget={value: 0}")),
            Case(
                f"budget-kind@{method}",
                "method.budget.kind",
                (f"method={method}", "method.budget={kind: gb, value: 1}"),
            ),
            Case(f"budget-negative@{method}", "method.budget.value", (f"method={method}", "method.budget={value: -3}")),
        ]
    for name in ("../x", "/abs/path", "a/b", "..", ".hidden", "with space", "semi;colon"):
        cases.append(Case(f"name-{name}", "name", (f"name={name}",)))
    cases += [
        Case("yaml-syntax", "not valid YAML", text="name: x\ntrain: [1,\n"),
        Case("yaml-list", "expected a mapping", text="- a\n- b\n"),
        Case("yaml-section-type", "train", text="name: x\ndataset: frappe\nmodel: fm\ntrain: 5\n"),
        Case("yaml-missing-name", "name", text="dataset: frappe\nmodel: fm\n"),
        Case("yaml-missing-model", "model", text="name: x\ndataset: frappe\n"),
        Case("yaml-tab", "not valid YAML", text="name: x\n\tmodel: fm\n"),
    ]
    return cases


CORPUS = _corpus()
SAMPLE = CORPUS[::12]  # every twelfth case: each kind of section appears


def _check(case: Case, tmp_path: Path) -> None:
    config = QUICKSTART
    if case.text is not None:
        config = tmp_path / "experiments" / "bad.yaml"
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(case.text)
        (tmp_path / "datasets").mkdir(exist_ok=True)
        (tmp_path / "datasets" / "frappe.yaml").write_text((REPO_ROOT / "configs/datasets/frappe.yaml").read_text())
    base = [f"run_root={tmp_path / 'runs'}", f"cache_root={tmp_path / 'cache'}", *TINY_SYNTHETIC]
    if case.text is not None:
        base = []
    result = CliRunner().invoke(app, ["run", str(config), *base, *case.overrides, "--no-progress"])
    out = result.output
    assert "Traceback" not in out and "internal error" not in out, out
    assert result.exit_code == 2, out
    assert out.startswith("error: "), out
    assert case.key in out, f"the error does not name {case.key!r}:\n{out}"
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cache").exists()  # refused before any work


def test_the_corpus_is_large_and_covers_every_plugin():
    assert len(CORPUS) >= 100
    ids = " ".join(c.id for c in CORPUS)
    for name in [*MODELS.names(), *SEARCHERS.names()]:
        assert f"={name}" in " ".join(o for c in CORPUS for o in c.overrides) or name in ids


@pytest.mark.parametrize("case", SAMPLE, ids=[c.id for c in SAMPLE])
def test_a_sample_of_bad_configs_each_gives_one_error_naming_the_key(case, tmp_path):
    _check(case, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("case", CORPUS, ids=[c.id for c in CORPUS])
def test_every_bad_config_gives_one_error_naming_the_key(case, tmp_path):
    _check(case, tmp_path)


def test_an_error_in_a_yaml_file_names_its_file_and_line(tmp_path):
    experiments = tmp_path / "experiments"
    experiments.mkdir()
    (tmp_path / "datasets").mkdir()
    (tmp_path / "datasets" / "frappe.yaml").write_text((REPO_ROOT / "configs/datasets/frappe.yaml").read_text())
    config = experiments / "e.yaml"
    config.write_text("name: x\ndataset: frappe\nmodel:\n  name: deepfm\n  hiddn: [3]\ntrain:\n  lr: 0.1\n")
    result = CliRunner().invoke(app, ["run", str(config)])
    assert result.exit_code == 2 and f"model.hiddn: unknown key ({config}:5)" in result.output
    overridden = CliRunner().invoke(app, ["run", str(config), "model.hiddn=[4]"])
    assert "model.hiddn: unknown key" in overridden.output and f"{config}:5" not in overridden.output
