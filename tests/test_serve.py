"""A run's bundle scores raw rows: the same numbers as the trained model on the encoded rows, for every
method and every input format; evaluate reproduces the run's test metrics; unseen values, missing tokens,
missing columns and string labels behave as documented; every export format loads and predicts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

import embdim
from embdim import list_searchers
from embdim.config import load_config
from embdim.data.encoder import OOV_ID
from embdim.errors import ConfigError, DataError, ModelFileError
from embdim.recommender import is_bundle, load_model
from embdim.serve import export_bundle
from embdim.train.evaluate import predict_logits
from embdim.train.run import prepare_dataset, run_experiment

ROWS = {"train": 3000, "valid": 600, "test": 600}
#: One short training per stage: the numbers are compared, not judged.
SHORT = ["train.epochs=2", "train.max_steps=12", "train.eval_every_steps=6", "train.patience=2"]


def shop_rows(rows: int, seed: int) -> pl.DataFrame:
    """Raw rows of a made-up shop: a city (some '?'), an item with a long tail, a price (some empty), and a
    click from a planted teacher."""
    rng = np.random.default_rng(seed)
    teacher = np.random.default_rng(0)
    city_w, item_w = teacher.normal(0, 1, 20), teacher.normal(0, 1, 400)
    city = rng.integers(0, 20, rows)
    item = np.minimum(rng.zipf(1.3, rows) - 1, 399)
    price = rng.lognormal(2, 1, rows)
    logit = city_w[city] + item_w[item] - 0.3 * np.log(price)
    clicked = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(int)
    return pl.DataFrame(
        {
            "city": np.where(rng.random(rows) < 0.05, "?", np.char.add("c", city.astype(str))),
            "item": np.char.add("i", item.astype(str)),
            "price": pl.Series(np.round(price, 2)).scatter(np.flatnonzero(rng.random(rows) < 0.05), None),
            "clicked": clicked,
        }
    )


def write_experiment(root: Path, name: str = "shop", **dataset_options) -> Path:
    """Train/valid/test CSVs of the shop and an experiment reading them with the table reader."""
    for i, (split, rows) in enumerate(ROWS.items()):
        shop_rows(rows, seed=i + 1).write_csv(root / f"{split}.csv")
    options = {
        "files": {split: f"{split}.csv" for split in ROWS},
        "categorical": ["city", "item"],
        "numeric": ["price"],
        "label": "clicked",
        "missing_values": ["?"],
        **dataset_options,
    }
    experiment = {
        "name": name,
        "dataset": {"name": "shop", "reader": "table", "options": options, "preprocess": {"min_count": 2}},
        "model": {"name": "deepfm", "hidden": [16], "dropout": 0.0},
        "method": "full",
        "embedding": {"dim": 8},
        "train": {"batch_size": 256, "lr": 0.01, "progress": False, "checkpoint_every_steps": 5},
        "run_root": str(root / "runs"),
        "cache_root": str(root / "cache"),
        "data_root": str(root),
    }
    path = root / f"{name}.yaml"
    path.write_text(json.dumps(experiment))
    return path


@pytest.fixture(scope="module")
def shop(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shop")
    write_experiment(root)
    return root


def train(root: Path, *overrides: str) -> tuple[Path, dict]:
    cfg = load_config(root / "shop.yaml", [*SHORT, *overrides])
    result = run_experiment(cfg)
    return root / "runs" / cfg.name, result


def encoded_test(run: Path):
    return prepare_dataset(load_config(run / "config.yaml"), progress=False).splits["test"]


#: Where exporting changes the arithmetic: MLET's tables are collapsed once (A @ B in float32) instead of a
#: looked-up row of A times B per batch, which rounds differently.
EXPORT_ROUNDING = {"mlet": 1e-4}


@pytest.mark.parametrize("method", list_searchers())
def test_every_methods_bundle_scores_raw_rows_as_the_trained_model_scores_encoded_rows(shop, method):
    run, result = train(shop, f"method={method}", f"name={method}")
    assert is_bundle(run / "model") and result["bundle_bytes"] > result["model_bytes"] > 0
    bundle = embdim.load(run)  # the run folder or its model/ folder
    scored = bundle.score(shop / "test.csv")
    assert len(scored.logits) == ROWS["test"]
    # raw rows through the bundle: exactly the exported model on the cache's encoded rows
    exported = predict_logits(load_model(run / "model"), encoded_test(run), 512)
    assert np.abs(scored.logits - exported).max() <= 1e-6
    trained = predict_logits(embdim.load_run(run), encoded_test(run), 512)
    assert np.abs(scored.logits - trained).max() <= EXPORT_ROUNDING.get(method, 1e-6) * max(1.0, np.abs(trained).max())
    assert np.array_equal(scored.labels, pl.read_csv(shop / "test.csv")["clicked"].to_numpy().astype(np.float32))


def test_every_table_format_and_a_frame_score_alike(shop):
    run, _ = train(shop, "name=formats")
    bundle = embdim.load(run / "model")
    expected = bundle.predict(shop / "test.csv")
    test = pl.read_csv(shop / "test.csv")
    test.write_csv(shop / "test.tsv", separator="\t")
    test.write_parquet(shop / "test.parquet")
    test.drop("clicked").write_csv(shop / "unlabelled.csv")
    for path in ("test.tsv", "test.parquet", "unlabelled.csv"):
        assert np.array_equal(bundle.predict(shop / path), expected), path
    frame = pl.read_csv(shop / "test.csv", infer_schema_length=0)  # every column as text, as a user may hold it
    assert np.array_equal(bundle.predict(frame.with_columns(pl.col("price").replace("?", None))), expected)
    assert np.isnan(bundle.score(shop / "unlabelled.csv").labels).all()


def test_evaluate_reproduces_the_runs_test_metrics_from_the_raw_test_file(shop):
    run, result = train(shop, "name=evaluate")
    metrics = embdim.load(run).evaluate(shop / "test.csv")
    assert metrics["rows"] == ROWS["test"] and metrics["unlabelled_rows"] == 0
    assert metrics["auc"] == pytest.approx(result["test_auc"], abs=1e-6)
    assert metrics["logloss"] == pytest.approx(result["test_logloss"], abs=1e-6)
    buckets = [(b["lo"], b["rows"]) for b in metrics["test_by_frequency"]]
    assert buckets == [(b["lo"], b["rows"]) for b in result["test_by_frequency"]]


def test_unseen_values_missing_tokens_and_missing_columns(shop):
    run, _ = train(shop, "name=values")
    bundle = embdim.load(run)
    rows = pl.DataFrame({"city": ["c1", "nowhere", "?", None], "item": ["i0", "i0", "i0", "i0"], "price": [1.0] * 4})
    ids, _ = bundle.encoder.transform(bundle.typed(rows))  # the ids the model reads
    city = bundle.encoder.vocab_["city"]
    assert ids[1, 0] == OOV_ID  # never seen in training
    assert ids[2, 0] == ids[3, 0] == city[bundle.encoder.missing_token] != OOV_ID  # '?' is declared missing
    scores = bundle.predict(rows)
    assert scores[2] == scores[3] and np.isfinite(scores).all()
    with pytest.raises(DataError, match="lacks the column\\(s\\) price that the model reads"):
        bundle.predict(rows.drop("price"))
    rows.drop("item").write_csv(shop / "no_item.csv")
    with pytest.raises(DataError, match="item"):
        bundle.predict(shop / "no_item.csv")


def test_a_string_label_is_mapped_as_configured_and_evaluated(tmp_path):
    write_experiment(tmp_path, label_positive="yes")
    for split in ROWS:  # the label as text
        frame = pl.read_csv(tmp_path / f"{split}.csv")
        text = pl.when(pl.col("clicked") == 1).then(pl.lit("yes")).otherwise(pl.lit("no")).alias("clicked")
        frame.with_columns(text).write_csv(tmp_path / f"{split}.csv")
    run, result = train(tmp_path)
    assert embdim.load(run).evaluate(tmp_path / "test.csv")["auc"] == pytest.approx(result["test_auc"], abs=1e-6)


def test_a_model_folder_without_the_data_files_is_no_bundle(shop, tmp_path):
    run, _ = train(shop, "name=nobundle")
    from embdim.recommender import export_model

    export_model(load_model(run / "model"), tmp_path / "plain")
    with pytest.raises(ModelFileError, match="without the data files of a bundle"):
        embdim.load(tmp_path / "plain")
    (run / "model" / "vocab.parquet").unlink()
    with pytest.raises(ModelFileError, match=r"missing vocab\.parquet"):
        embdim.load(run)


@pytest.mark.parametrize("method", ["full", "amtl", "pep"])
def test_every_export_format_loads_and_predicts(shop, method, tmp_path):
    run, _ = train(shop, f"method={method}", f"name=export_{method}")
    bundle = embdim.load(run)
    expected = bundle.predict(shop / "test.csv")
    for precision, tolerance in (("fp32", 0.0), ("fp16", 1e-3), ("int8", 2e-2)):
        report = export_bundle(run, tmp_path / f"bundle_{precision}", "bundle", precision)
        quantised = embdim.load(tmp_path / f"bundle_{precision}")
        assert quantised.model.embedding.plan.precision == precision
        assert report["embedding_bytes"] == quantised.model.embedding.stored_bytes()
        assert np.abs(quantised.predict(shop / "test.csv") - expected).max() <= tolerance
    report = export_bundle(run, tmp_path / "torchrec", "torchrec")
    assert report["max_abs_embedding_diff"] == 0.0
    for precision in ("fp16", "int8"):  # the quantised tables, read by TorchRec's quantised collection
        if precision == "int8" and method == "pep":
            with pytest.raises(ConfigError, match="no int8 TorchRec export"):
                export_bundle(run, tmp_path / f"torchrec_{precision}", "torchrec", precision)
            assert not any(p.name.startswith(f"torchrec_{precision}") or ".tmp" in p.name for p in tmp_path.iterdir())
            continue
        report = export_bundle(run, tmp_path / f"torchrec_{precision}", "torchrec", precision)
        # against the fp32 bundle: the quantisation's own change, as the bundle of that precision has it
        assert 0.0 < report["max_abs_embedding_diff"] <= (1e-3 if precision == "fp16" else 2e-2)
    ids = torch.from_numpy(bundle.encoder.transform(bundle.typed(pl.read_csv(shop / "test.csv")))[0]).long()
    for fmt in ("torchscript", "onnx"):
        report = export_bundle(run, tmp_path / fmt, fmt)
        assert report["max_abs_logit_diff"] <= 1e-5, fmt
    scripted = torch.jit.load(str(tmp_path / "torchscript" / "model.torchscript.pt"))
    dense = torch.from_numpy(bundle.encoder.transform(bundle.typed(pl.read_csv(shop / "test.csv")))[1])
    with torch.no_grad():
        logits = scripted(ids, dense).numpy()
    assert np.abs(1 / (1 + np.exp(-logits)) - expected).max() <= 1e-5


def test_criteo_text_with_and_without_labels_scores_as_the_model_on_encoded_rows(tmp_path):
    from embdim.data.synthetic import criteo_like, write_criteo_text

    spec = criteo_like(1500, total_vocab=3000, seed=3)
    for seed, split in enumerate(ROWS, start=1):
        write_criteo_text(tmp_path / f"{split}.txt", ROWS[split] // 2, seed=seed, spec=spec, progress=False)
    experiment = {
        "name": "criteo",
        "dataset": {
            "name": "criteo_text",
            "reader": "criteo",
            "options": {"files": {split: f"{split}.txt" for split in ROWS}},
            "preprocess": {"min_count": 2, "numeric": "discretize"},
        },
        "model": {"name": "deepfm", "hidden": [16]},
        "embedding": {"dim": 8},
        "train": {"batch_size": 256, "progress": False},
        "run_root": str(tmp_path / "runs"),
        "cache_root": str(tmp_path / "cache"),
        "data_root": str(tmp_path),
    }
    (tmp_path / "criteo.yaml").write_text(json.dumps(experiment))
    run_experiment(load_config(tmp_path / "criteo.yaml", SHORT))
    run = tmp_path / "runs" / "criteo"
    bundle = embdim.load(run)
    scored = bundle.score(tmp_path / "test.txt")
    exported = predict_logits(load_model(run / "model"), encoded_test(run), 512)
    assert np.abs(scored.logits - exported).max() <= 1e-6 and not np.isnan(scored.labels).any()
    lines = (tmp_path / "test.txt").read_text().splitlines()
    (tmp_path / "unlabelled.txt").write_text("".join(line.split("\t", 1)[1] + "\n" for line in lines))
    assert np.array_equal(bundle.predict(tmp_path / "unlabelled.txt"), scored.scores)


def test_the_commands_predict_evaluate_and_export(shop, tmp_path):
    from typer.testing import CliRunner

    from embdim.cli import app

    run, result = train(shop, "name=cli")
    runner = CliRunner()
    out = runner.invoke(app, ["predict", str(run), str(shop / "test.csv")])
    assert out.exit_code == 0, out.output
    printed = pl.read_csv(out.stdout.encode())
    assert printed.columns == ["score", "label"] and printed.height == ROWS["test"]
    assert np.allclose(printed["score"].to_numpy(), embdim.load(run).predict(shop / "test.csv"), atol=1e-6)
    for name in ("scores.csv", "scores.parquet"):
        args = ["predict", str(run / "model"), str(shop / "test.csv"), "--output", str(tmp_path / name)]
        out = runner.invoke(app, args)
        assert out.exit_code == 0, out.output
    parquet, csv = pl.read_parquet(tmp_path / "scores.parquet"), pl.read_csv(tmp_path / "scores.csv")
    assert parquet.columns == csv.columns and np.allclose(parquet["score"], csv["score"], atol=1e-6)
    out = runner.invoke(app, ["evaluate", str(run), str(shop / "test.csv")])
    assert out.exit_code == 0 and json.loads(out.stdout)["auc"] == pytest.approx(result["test_auc"], abs=1e-6)
    out = runner.invoke(app, ["export", str(run), "--format", "bundle", "--precision", "int8"])
    assert out.exit_code == 0, out.output
    assert embdim.load(run / "export-bundle-int8").model.embedding.plan.precision == "int8"
    again = runner.invoke(app, ["export", str(run), "--format", "bundle", "--precision", "int8"])
    assert again.exit_code == 2 and "use --force" in again.output
    for args, error in [
        (["predict", str(run), str(shop / "test.csv"), "--output", "x.json"], "write .csv or .parquet"),
        (["export", str(run), "--format", "pickle"], "--format 'pickle': use one of"),
        (["export", str(run), "--format", "torchrec", "--precision", "int4"], "--precision 'int4': use one of"),
        (["predict", str(shop), str(shop / "test.csv")], "no bundle there"),
        (["predict", str(run), str(shop / "absent.csv")], "absent.csv"),
    ]:
        out = runner.invoke(app, args)
        assert out.exit_code == 2 and error in out.output, (args, out.output)
        assert "Traceback" not in out.output
