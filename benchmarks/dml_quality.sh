#!/usr/bin/env bash
# DML vs full on rebuilt Frappe and MovieLens-100K with DeepFM (issue 4), one run at a time, 1 thread each.
# Usage: bash benchmarks/dml_quality.sh [SEED ...]   (default seeds 2026 2027 2028); then
#        .venv/bin/python benchmarks/dml_quality.py    (the table for BENCHMARKS.md)
# Finished runs are skipped (same name and config), killed runs resume from their checkpoint.
set -u
cd "$(dirname "$0")/.."
SEEDS=("$@")
[ $# -eq 0 ] && SEEDS=(2026 2027 2028)
for seed in "${SEEDS[@]}"; do
  for ds in frappe movielens; do
    cfg=configs/experiments/dml_${ds}.yaml
    for method in dml full; do
      name=dml_q_${ds}_${method}_s${seed}
      # the experiment file's method section is dml with its budget; full replaces it by name
      override=(); [ "$method" = full ] && override=(method=full)
      echo "$(date -u +%H:%M:%S) start ${name}"
      .venv/bin/embdim run "$cfg" name="$name" "${override[@]}" train.seed="$seed" train.threads=1 --no-progress \
        > "runs/${name}.log" 2>&1 || echo "$(date -u +%H:%M:%S) FAILED ${name} (see runs/${name}.log)"
    done
  done
done
echo "$(date -u +%H:%M:%S) done"
