#!/bin/bash
# Samples/s and peak memory per process of DeepFM (d=16, batch 4096, TorchRec tables with fused Adagrad)
# on one process and on several, for each METHOD, on a cache written by
#   bash benchmarks/prepare_scale.sh ROWS prefer MIN_COUNT
# for a fixed number of steps per stage (evaluated once, at the end). One JSON line per run
# (benchmarks/peak_memory.py: process_peaks_gib is each process's own peak) followed by the run's
# samples/s, train seconds and test AUC; then, for each method, the step profiled on the largest
# number of processes (benchmarks/sharded_profile.py: all-to-all and all-reduce shares of a step).
#
#   bash benchmarks/sharded_scale.sh ROWS MIN_COUNT [STEPS] [METHODS] [PROCESSES]   # e.g. 4000000 1 60 "full pep" "1 2"
#
# EXTRA="key=value ..." (environment) adds overrides to every run, e.g. a per-process cap:
#   EXTRA="embedding.sharding.memory_per_process=200000000"
set -euo pipefail
rows=${1:?rows}
min_count=${2:?min_count}
steps=${3:-60}
methods=${4:-full pep}
processes=${5:-1 2}
py=.venv/bin/python
out=benchmarks/out/sharded
mkdir -p "$out"
data="$PWD/benchmarks/out/scale/criteo_$rows.txt"
dataset=(dataset=criteo_sample "dataset.options.path=$data" "dataset.name=scale_${rows}_prefer_min${min_count}"
  "dataset.preprocess.split.ratios=[0.8,0.1,0.1]" "dataset.preprocess.min_count=$min_count")
# several processes need fused tables (adagrad or sgd) and no looked-up L2 (docs/scale.md): the same
# settings on one process, so the rows compare like with like
common=(model=deepfm "model.hidden=[400,400,400]" model.batch_norm=true model.dropout=0.2 embedding.dim=16
  embedding.backend=torchrec train.optimizer=adagrad train.lr=0.01 train.embedding_weight_decay=0
  train.clip_grad_norm=10 train.batch_size=4096 "train.max_steps=$steps" "train.eval_every_steps=$steps"
  train.epochs=1)
for method in $methods; do
  for n in $processes; do
    name="sharded_${rows}_min${min_count}_${method}_p${n}_$steps"
    rm -rf "runs/$name"
    echo -n "train rows=$rows min_count=$min_count steps=$steps method=$method processes=$n "
    # shellcheck disable=SC2086  # EXTRA splits into words
    EMBDIM_STREAMING=prefer $py benchmarks/peak_memory.py --out "$out/$name.json" -- \
      .venv/bin/embdim run configs/experiments/quickstart.yaml "name=$name" "method=$method" "${dataset[@]}" \
      "${common[@]}" "train.processes=$n" ${EXTRA:-} --no-progress > "$out/$name.log" 2>&1
    cat "$out/$name.json"
    $py -c "import json,sys; r=json.load(open(sys.argv[1])); print({k: r.get(k) for k in ('processes','samples_per_second','end_to_end_samples_per_second','train_seconds','test_auc')})" "runs/$name/result.json"
  done
  n=${processes##* }
  [ "$n" -gt 1 ] || continue
  name="sharded_${rows}_min${min_count}_${method}_p${n}_${steps}_profile"
  rm -rf "runs/$name"
  echo "profile method=$method processes=$n"
  # shellcheck disable=SC2086
  PYTHONPATH="$PWD/src" EMBDIM_STREAMING=prefer .venv/bin/torchrun --standalone --nproc_per_node "$n" \
    benchmarks/sharded_profile.py --skip $((steps / 3)) --active $((steps / 3)) --out "$out/$name" -- \
    configs/experiments/quickstart.yaml "name=$name" "method=$method" "${dataset[@]}" "${common[@]}" ${EXTRA:-} \
    > "$out/$name.log" 2>&1
  grep -h '^{' "$out/$name.log" || tail -5 "$out/$name.log"
done
