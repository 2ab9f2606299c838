"""Shared fixtures: where the read-only real datasets live (tests skip when they are absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import example_method  # noqa: F401  (registers the "fixed_widths" method the contract tests cover too)

REPO_ROOT = Path(__file__).resolve().parents[1]

#: Overrides for a small synthetic data set (4 fields, 6,000 rows) that end-to-end tests train on.
TINY_SYNTHETIC = [
    "dataset=synthetic",
    "dataset.options.rows=6000",
    "dataset.options.cardinalities=[20,200,50,1000]",
    "dataset.options.zipf_exponents=[1.0,1.1,0.9,1.2]",
    "dataset.options.intrinsic_dims=[2,4,2,6]",
    "dataset.options.missing_rates=[0,0,0,0]",
]


def shared_data_root() -> Path:
    """``$EMBDIM_DATA_ROOT`` if set, else ``../shared/datasets`` next to the repository."""
    env = os.environ.get("EMBDIM_DATA_ROOT")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "datasets"


@pytest.fixture
def data_root() -> Path:
    return shared_data_root()


@pytest.fixture
def dataset_dir(data_root: Path):
    """``dataset_dir("frappe")`` -> the folder, or skip the test when it is not there."""

    def get(name: str) -> Path:
        path = data_root / name
        if not path.is_dir():
            pytest.skip(f"shared dataset {name!r} not found under {data_root}")
        return path

    return get
