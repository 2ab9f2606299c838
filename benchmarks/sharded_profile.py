"""Where the time of a step goes on several processes: an ``embdim run`` under ``torchrun``, profiled.

Every rank runs the command line as ``torchrun -m embdim run`` would, with torch's CPU profiler active
over ``--active`` training steps after ``--skip`` (the first steps warm the allocator and the planner's
buffers), and writes one JSON summary per rank to ``--out``:

    PYTHONPATH=$PWD/src .venv/bin/torchrun --standalone --nproc_per_node 2 benchmarks/sharded_profile.py \\
        --out benchmarks/out/sharded -- CONFIG key=value ...

Shares are of the profiled steps' wall time on the rank's main thread: the union of the intervals of
events whose names say all-to-all (TorchRec's ``## all2all ... ##`` ranges and the ``c10d`` all-to-all
ops and the waits on their results: a lookup's ids out, its pooled vectors back, and their gradients),
and likewise all-reduce (the data-parallel part's gradients, DDP) and all-gather. The time a rank waits
for a slower one shows up in its collectives, so the shares differ by rank: both are written.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function, schedule

from embdim.cli import main as embdim_main
from embdim.train.sharded import ShardedTraining

STEP = "embdim::training_step"  # the range around each profiled training step
PATTERNS = {
    # the collectives and the waits on TorchRec's awaitables of the lookup's input and output distribution
    "all_to_all": ("all2all", "alltoall", "all_to_all", "input_dist", "output_dist", "splitsawaitable"),
    "all_reduce": ("allreduce", "all_reduce"),
    "all_gather": ("allgather", "all_gather"),
}


def _union(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of ``(start, end)`` intervals."""
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def summarise(prof: profile) -> dict:
    """Wall time of the profiled steps and the share of each kind of collective, on the main thread."""
    events = prof.events()
    steps = [e for e in events if e.name == STEP]
    thread = steps[0].thread
    step_time = sum(e.time_range.elapsed_us() for e in steps)
    out: dict = {"profiled_steps": len(steps), "step_ms": round(step_time / len(steps) / 1e3, 2)}
    for kind, words in PATTERNS.items():
        spans = [
            (e.time_range.start, e.time_range.end)
            for e in events
            if e.thread == thread and any(w in e.name.lower() for w in words)
        ]
        out[f"{kind}_share"] = round(_union(spans) / step_time, 4)
    table = prof.key_averages().table(sort_by="cpu_time_total", row_limit=25)
    out["top_ops"] = table.splitlines()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip", type=int, default=20, help="training steps before the profile starts")
    parser.add_argument("--active", type=int, default=20, help="training steps profiled")
    parser.add_argument("--out", type=Path, required=True, help="folder for rank<r>.json")
    parser.add_argument("run", nargs=argparse.REMAINDER, help="CONFIG and overrides, after --")
    args = parser.parse_args()
    run = args.run[1:] if args.run[:1] == ["--"] else args.run
    rank = int(os.environ.get("RANK", "0"))
    summaries: list[dict] = []  # the profiled window's summary, taken when its trace is ready
    prof = profile(
        activities=[ProfilerActivity.CPU],
        schedule=schedule(wait=args.skip, warmup=2, active=args.active, repeat=1),
        on_trace_ready=lambda p: summaries.append(summarise(p)),
    )
    original = ShardedTraining.step

    def step(self: ShardedTraining, *a, **k) -> float:  # every training step advances the profiler's schedule
        with record_function(STEP):
            loss = original(self, *a, **k)
        prof.step()
        return loss

    ShardedTraining.step = step  # type: ignore[method-assign]
    sys.argv = ["embdim", "run", *run, "--no-progress"]
    code = 0
    prof.start()
    try:
        embdim_main()
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    finally:
        prof.stop()
    args.out.mkdir(parents=True, exist_ok=True)
    window = summaries[0] if summaries else {"error": "no profiled window: raise the run's steps or lower --skip"}
    summary = {"rank": rank, "rc": code, "threads": torch.get_num_threads(), **window}
    (args.out / f"rank{rank}.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "top_ops"}))
    return code


if __name__ == "__main__":
    sys.exit(main())
