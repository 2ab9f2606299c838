#!/bin/bash
# A table larger than one process may hold, trained on two: a synthetic set with one large field (about
# 1.9M distinct values seen of 3M, 16 wide: 121 MB of weights, more with its Adagrad state) and a
# per-process cap of 100 MB for the planner (embedding.sharding.memory_per_process). Table-wise only is
# refused, naming the key; with the default types the planner splits the table in column blocks.
#
#   bash benchmarks/sharded_cap.sh [CAP_BYTES]
set -uo pipefail
cap=${1:-100000000}
out=benchmarks/out/sharded
mkdir -p "$out"
data=(dataset=synthetic dataset.name=one_large_table dataset.options.rows=4000000
  "dataset.options.cardinalities=[3000000,1000,100,10]" "dataset.options.zipf_exponents=[0.3,1.0,1.0,0.5]"
  "dataset.options.intrinsic_dims=[4,2,2,1]" "dataset.options.missing_rates=[0,0,0,0]")
common=(model=deepfm "model.hidden=[400,400,400]" model.batch_norm=true model.dropout=0.2 embedding.dim=16
  embedding.backend=torchrec train.optimizer=adagrad train.lr=0.01 train.embedding_weight_decay=0
  train.clip_grad_norm=10 train.batch_size=4096 train.max_steps=90 train.eval_every_steps=90 train.epochs=1
  train.processes=2 "embedding.sharding.memory_per_process=$cap")
echo "table-wise only, cap $cap bytes (refused):"
rm -rf runs/cap_tablewise
.venv/bin/embdim run configs/experiments/quickstart.yaml name=cap_tablewise "${data[@]}" "${common[@]}" \
  "embedding.sharding.types=[table_wise]" --no-progress 2>&1 | grep '^error' 
echo "default types, cap $cap bytes:"
rm -rf runs/cap_sharded
.venv/bin/python benchmarks/peak_memory.py --out "$out/cap_sharded.json" -- \
  .venv/bin/embdim run configs/experiments/quickstart.yaml name=cap_sharded "${data[@]}" "${common[@]}" \
  --no-progress > "$out/cap_sharded.log" 2>&1
cat "$out/cap_sharded.json"
.venv/bin/python -c "
import json, sys
plan, r = (json.load(open(f'runs/cap_sharded/{f}')) for f in ('sharding_plan.json', 'result.json'))
for name, t in plan['tables'].items():
    print(name, t['rows'], 'x', t['dim'], t['sharding_type'], [(s['rank'], s['columns']) for s in t['shards']])
print('weight bytes per rank', plan['weight_bytes_per_rank'])
print({k: r.get(k) for k in ('processes', 'samples_per_second', 'end_to_end_samples_per_second', 'test_auc')})"
