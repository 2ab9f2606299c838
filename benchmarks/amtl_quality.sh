#!/usr/bin/env bash
# AMTL quality runs (issue 5): full baseline, AMTL hot-started from it, cold start and ablations.
# Every run uses the quickstart settings (DeepFM with BN and dropout 0.2, d=10, Adam 1e-3, batch 4096,
# patience 2), one torch thread, and the same seed for full and amtl. Run from the repository root:
#   bash benchmarks/amtl_quality.sh full            # full baselines, 3 seeds x 2 datasets
#   bash benchmarks/amtl_quality.sh hot             # AMTL hot-started from each full run
#   bash benchmarks/amtl_quality.sh cold            # AMTL from scratch (same budget)
#   bash benchmarks/amtl_quality.sh ablations       # twins=false, straight_through=false (cold start)
#   bash benchmarks/amtl_quality.sh emergent        # no penalty, no budget (the paper's setting), cold start
#   bash benchmarks/amtl_quality.sh summary         # mean +- std table of every finished run
# Results: runs/amtl_*/result.json.
set -euo pipefail
PHASE=${1:?phase: full | hot | cold | ablations | emergent | summary}
if [ "$PHASE" = summary ]; then
  exec .venv/bin/python - <<'PY'
import json, statistics
from collections import defaultdict
from pathlib import Path

groups = defaultdict(list)
for path in sorted(Path("runs").glob("amtl_*_s[0-9]*/result.json")):
    r = json.loads(path.read_text())
    variant, dataset = r["name"].split("_")[1], r["dataset"]
    groups[(dataset, variant)].append(r)
def ms(values):
    values = list(values)
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"
full = {(r["dataset"], r["seed"]): r for (d, v), rs in groups.items() if v == "full" for r in rs}
print("| dataset | variant | seeds | test AUC | Δ AUC vs full (same seed) | test logloss | bytes ratio "
      "| spearman(size, count) | search-end valid AUC | train s |")
print("|---|---|---|---|---|---|---|---|---|---|")
for (dataset, variant), rs in sorted(groups.items()):
    rho = [r["searcher"]["spearman_size_frequency"]["all"] for r in rs if r.get("searcher")]
    cut = [r["stages"]["search"]["valid_auc"] for r in rs if "search" in r["stages"]]
    delta = [r["test_auc"] - full[(dataset, r["seed"])]["test_auc"] for r in rs if (dataset, r["seed"]) in full]
    print(f"| {dataset} | {variant} | {','.join(str(r['seed']) for r in rs)} | {ms(r['test_auc'] for r in rs)} | "
          f"{ms(delta) if delta else '-'} | {ms(r['test_logloss'] for r in rs)} | {ms(r['bytes_ratio'] for r in rs)} | "
          f"{ms(rho) if rho else '-'} | {ms(cut) if cut else '-'} | {ms(r['train_seconds'] for r in rs)} |")
PY
fi
SEEDS=${SEEDS:-"1 2 3"}
DATASETS=${DATASETS:-"frappe movielens_100k"}
RUN=".venv/bin/embdim run"
COMMON="train.threads=1 --no-progress"
for seed in $SEEDS; do
  for ds in $DATASETS; do
    full="amtl_full_${ds}_s${seed}"
    case $PHASE in
      full) $RUN configs/experiments/quickstart.yaml name=$full dataset=$ds train.seed=$seed $COMMON ;;
      hot) while [ ! -f runs/$full/result.json ]; do sleep 20; done  # the full run it starts from
           $RUN configs/experiments/amtl_hot.yaml name=amtl_hot_${ds}_s${seed} dataset=$ds \
             train.seed=$seed train.init_from=runs/$full $COMMON ;;
      cold) $RUN configs/experiments/amtl_hot.yaml name=amtl_cold_${ds}_s${seed} dataset=$ds \
              train.seed=$seed train.init_from=null $COMMON ;;
      ablations)  # from the cold start (the better variant in our runs)
        $RUN configs/experiments/amtl_hot.yaml name=amtl_shared_${ds}_s${seed} dataset=$ds \
          train.seed=$seed train.init_from=null method.twins=false $COMMON
        $RUN configs/experiments/amtl_hot.yaml name=amtl_soft_${ds}_s${seed} dataset=$ds \
          train.seed=$seed train.init_from=null method.straight_through=false $COMMON ;;
      emergent) $RUN configs/experiments/amtl_hot.yaml name=amtl_emergent_${ds}_s${seed} dataset=$ds \
                  train.seed=$seed train.init_from=null method.budget=null $COMMON ;;
      *) echo "unknown phase $PHASE" >&2; exit 2 ;;
    esac > /dev/null
    echo "$(date -u +%H:%M:%S) done $PHASE $ds seed $seed"
  done
done
