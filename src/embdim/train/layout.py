"""The run folder's layout: every file a run writes, named in one place (trainer, run, bench and reports
read their names from here).

::

    runs/<name>/
      config.yaml          the resolved config (a different one for the same folder is refused)
      metrics.jsonl        one line per evaluation
      checkpoint.pt        the resumable state (replaced atomically)
      initial.safetensors  the step-0 weights (lottery-ticket rewinds)
      best.safetensors     the selected weights of the current stage
      plan.json            the learned sizes (EmbeddingPlan JSON)
      model/               the bundle: the exported slim model and what scores raw rows (embdim.serve)
      result.json          the result; "status": "completed" or "diverged"
      quantised.json       test metrics and bytes of the bundle with its tables in fp16 / int8 (bench precisions)
      sharding_plan.json   a run on several processes: where TorchRec placed each table (type, ranks, shards)
      ranks/<r>/           a run on several processes: what rank r alone holds (its table shards and their
                           optimizer state in checkpoint-<generation>.pt, initial and best weights); the
                           checkpoint.pt above then holds the progress and names the generation to resume
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_FILE = "checkpoint.pt"
INITIAL_FILE = "initial.safetensors"
BEST_FILE = "best.safetensors"
PLAN_FILE = "plan.json"
MODEL_DIR = "model"
RESULT_FILE = "result.json"
QUANTISED_FILE = "quantised.json"
SHARDING_PLAN_FILE = "sharding_plan.json"
RANKS_DIR = "ranks"
CORRUPT_SUFFIX = ".corrupt"  # an unreadable run-state file is moved aside to <name>.corrupt
COMPLETED, DIVERGED = "completed", "diverged"  # result.json's status


@dataclass(frozen=True)
class RunFolder:
    """The paths of one run folder."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def metrics(self) -> Path:
        return self.root / METRICS_FILE

    @property
    def checkpoint(self) -> Path:
        return self.root / CHECKPOINT_FILE

    @property
    def initial(self) -> Path:
        return self.root / INITIAL_FILE

    @property
    def best(self) -> Path:
        return self.root / BEST_FILE

    @property
    def plan(self) -> Path:
        return self.root / PLAN_FILE

    @property
    def model(self) -> Path:
        return self.root / MODEL_DIR

    @property
    def result(self) -> Path:
        return self.root / RESULT_FILE

    @property
    def quantised(self) -> Path:
        return self.root / QUANTISED_FILE

    @property
    def sharding_plan(self) -> Path:
        return self.root / SHARDING_PLAN_FILE

    def rank(self, rank: int) -> Path:
        """The folder of what rank ``rank`` of a run on several processes holds alone."""
        return self.root / RANKS_DIR / str(rank)
