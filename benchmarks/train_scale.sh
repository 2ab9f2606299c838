#!/bin/bash
# Training speed and peak memory of DeepFM (d=16, batch 4096; uniform, or METHOD's) on a cache written by
# benchmarks/prepare_scale.sh ROWS prefer MIN_COUNT, for a fixed number of steps (evaluated once, at
# the end) or one whole epoch, per table-update setting. Run folders go to runs/scale_*; one JSON
# line per setting (benchmarks/peak_memory.py) followed by the run's training samples/s, train
# seconds, test AUC and the memory estimate it printed before starting.
#
#   bash benchmarks/train_scale.sh ROWS MIN_COUNT [STEPS|epoch] [SETTINGS] [METHOD]   # SETTINGS: "fused sparse"
#
# STEPS limits every stage of a multi-stage method (train.max_steps); METHOD_OPTIONS="method.k=v ..."
# (environment) sets the method's options, e.g. METHOD_OPTIONS=method.inner_dim=32 for mlet.
set -euo pipefail
rows=${1:?rows}
min_count=${2:?min_count}
steps=${3:-600}
settings=${4:-fused sparse}
method=${5:-full}
py=.venv/bin/python
out=benchmarks/out/scale
data="$PWD/$out/criteo_$rows.txt"
dataset=(dataset=criteo_sample "dataset.options.path=$data" "dataset.name=scale_${rows}_prefer_min${min_count}"
  "dataset.preprocess.split.ratios=[0.8,0.1,0.1]" "dataset.preprocess.min_count=$min_count")
limit=("train.max_steps=$steps" "train.eval_every_steps=$steps")
[ "$steps" = epoch ] && limit=()
common=(model=deepfm "model.hidden=[400,400,400]" model.batch_norm=true model.dropout=0.2 embedding.dim=16
  train.batch_size=4096 "${limit[@]}" train.epochs=1
  train.embedding_weight_decay=0.05 train.embedding_decay=looked_up train.clip_grad_norm=10)
declare -A setting=(
  [fused]="embedding.backend=torchrec train.optimizer=adagrad train.lr=0.01"
  [sparse]="embedding.sparse=true embedding.sparse_first_order=true train.optimizer=adam"
  [fused_bf16]="embedding.backend=torchrec train.optimizer=adagrad train.lr=0.01 train.precision=bf16"
  [fused_sparse_first_order]="embedding.backend=torchrec train.optimizer=adagrad train.lr=0.01 embedding.sparse=true embedding.sparse_first_order=true"
  [fused_bf16_sparse_first_order]="embedding.backend=torchrec train.optimizer=adagrad train.lr=0.01 train.precision=bf16 embedding.sparse=true embedding.sparse_first_order=true"
)
for s in $settings; do
  name="scale_${rows}_min${min_count}_${s}_$steps"
  [ "$method" = full ] || name="${name}_$method"
  rm -rf "runs/$name"
  echo -n "train rows=$rows min_count=$min_count steps=$steps setting=$s method=$method "
  # shellcheck disable=SC2086  # the settings and METHOD_OPTIONS split into words
  EMBDIM_STREAMING=prefer $py benchmarks/peak_memory.py --out "$out/train_$name.json" -- \
    .venv/bin/embdim run configs/experiments/quickstart.yaml "name=$name" "method=$method" ${METHOD_OPTIONS:-} "${dataset[@]}" "${common[@]}" \
    ${setting[$s]} --no-progress > "$out/train_$name.log" 2>&1
  cat "$out/train_$name.json"
  $py -c "import json,sys; r=json.load(open(sys.argv[1])); print({k: r.get(k) for k in ('samples_per_second','end_to_end_samples_per_second','train_seconds','eval_seconds','test_auc','memory_estimate_bytes')})" "runs/$name/result.json"
done
