#!/bin/bash
# Peak memory and CPU time of `embdim prepare` on Criteo-Kaggle-shaped text (embdim generate's
# criteo-kaggle profile: Criteo Kaggle's per-field cardinalities), streamed and in memory.
#
#   bash benchmarks/prepare_scale.sh ROWS [MODES] [MIN_COUNT]   # MODES: "prefer never" (default); MIN_COUNT: 10
#
# Writes benchmarks/out/scale/criteo_ROWS.txt once (kept for reruns) and one cache per mode
# (random 8:1:1 split); prints one JSON line per step (benchmarks/peak_memory.py:
# anonymous and file-backed peaks apart, since the cache is written through memory maps).
set -euo pipefail
rows=${1:?rows}
modes=${2:-prefer never}
min_count=${3:-10}
out=benchmarks/out/scale
py=.venv/bin/python
mkdir -p "$out"
data="$out/criteo_$rows.txt"
if [ ! -f "$data" ]; then
  echo -n "generate rows=$rows "
  $py benchmarks/peak_memory.py --out "$out/generate_$rows.json" -- \
    .venv/bin/embdim generate "$data" --rows "$rows" --no-progress > /dev/null
  cat "$out/generate_$rows.json"
fi
for mode in $modes; do
  name="scale_${rows}_${mode}_min${min_count}"
  rm -rf "cache/$name"-*
  echo -n "prepare rows=$rows EMBDIM_STREAMING=$mode min_count=$min_count "
  EMBDIM_STREAMING=$mode $py benchmarks/peak_memory.py --out "$out/prepare_$name.json" -- \
    .venv/bin/embdim prepare configs/experiments/quickstart.yaml dataset=criteo_sample \
    "dataset.options.path=$PWD/$data" "dataset.name=$name" \
    "dataset.preprocess.split.ratios=[0.8,0.1,0.1]" "dataset.preprocess.min_count=$min_count" > /dev/null 2>&1
  cat "$out/prepare_$name.json"
  echo "cache $(du -sb cache/"$name"-* | cut -f1) bytes"
done
