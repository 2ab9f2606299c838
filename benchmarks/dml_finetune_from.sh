#!/bin/bash
# DML with method.finetune_from=initial against the default (search) on every shipped bench set at 50/20/10 %, 3 seeds (issue 22),
# cheapest sets first, resumable:
#   bash benchmarks/dml_finetune_from.sh [JOBS]
# Results: runs/bench/dml_finetune_from_<set>/results.csv and report.md: dml_search (the default) and
# dml_initial side by side.
set -euo pipefail
jobs=${1:-1}
for set in movielens_100k_fm synthetic_criteo_fm frappe_fm movielens_100k_deepfm synthetic_criteo_deepfm frappe_deepfm; do
  .venv/bin/embdim bench "benchmarks/configs/dml_finetune_from_$set.yaml" --jobs "$jobs" --rerun-stale --no-progress train.threads=1
done
