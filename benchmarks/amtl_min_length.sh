#!/bin/bash
# AMTL with method.min_length=0 on the two FM sets at 50/20/10/5 %, 3 seeds (issue 22), resumable:
#   bash benchmarks/amtl_min_length.sh
# Results: runs/bench/amtl_min_length_<set>/results.csv and report.md, to set against the amtl rows of
# configs/bench/<set>.yaml's sweep.
set -euo pipefail
for set in frappe_fm synthetic_criteo_fm; do
  .venv/bin/embdim bench "benchmarks/configs/amtl_min_length_$set.yaml" --jobs 1 --rerun-stale --no-progress train.threads=1
done
