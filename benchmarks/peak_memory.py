"""Run a command and report its peak memory split into anonymous and file-backed pages.

``/usr/bin/time``'s maximum RSS counts the resident pages of memory-mapped files too; a prepare
that writes its cache through ``np.memmap`` looks as large as the cache it has written, although
the kernel can drop those pages at any time. This samples ``RssAnon`` and ``RssFile`` of the
command's process tree every ``--every`` seconds and prints one JSON line:

    python benchmarks/peak_memory.py [--out FILE] -- .venv/bin/embdim prepare CONFIG ...
    {"peak_anon_gib": ..., "peak_file_gib": ..., "peak_rss_gib": ..., "cpu_s": ..., "wall_s": ..., "rc": 0}

Peaks are of the tree's sums at one sample (children included); short spikes between two samples
are missed, so the anonymous peak is a lower bound within one sampling interval. For commands that
start several workers (``train.processes=N``), ``process_peaks_gib`` lists each process's own peak
(anonymous + file-backed pages), largest first: the memory one process needs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

GIB = 1 << 30


def _tree(root: int) -> list[int]:
    """``root`` and every descendant, from /proc's parent links."""
    children: dict[int, list[int]] = {}
    for status in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = status.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(status.parent.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def _rss(pid: int) -> tuple[int, int]:
    """RssAnon and RssFile + RssShmem of ``pid``, in bytes (zeros once it has gone)."""
    anon = file = 0
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return 0, 0
    for line in lines:
        key, _, value = line.partition(":")
        if key == "RssAnon":
            anon += int(value.split()[0]) * 1024
        elif key in ("RssFile", "RssShmem"):
            file += int(value.split()[0]) * 1024
    return anon, file


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--every", type=float, default=0.2, help="seconds between samples")
    parser.add_argument("--out", type=Path, help="also write the JSON line to this file")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")
    start = time.monotonic()
    proc = subprocess.Popen(command)
    peak_anon = peak_file = peak_total = 0
    per_process: dict[int, int] = {}  # pid -> its own peak (anonymous + file-backed)
    while proc.poll() is None:
        anon = file = 0
        for pid in _tree(proc.pid):
            a, f = _rss(pid)
            anon, file = anon + a, file + f
            per_process[pid] = max(per_process.get(pid, 0), a + f)
        peak_anon, peak_file, peak_total = max(peak_anon, anon), max(peak_file, file), max(peak_total, anon + file)
        time.sleep(args.every)
    wall = time.monotonic() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    report = {
        "peak_anon_gib": round(peak_anon / GIB, 3),
        "peak_file_gib": round(peak_file / GIB, 3),
        "peak_rss_gib": round(peak_total / GIB, 3),
        "max_rss_gib": round(usage.ru_maxrss * 1024 / GIB, 3),  # what /usr/bin/time reports
        "process_peaks_gib": [round(b / GIB, 3) for b in sorted(per_process.values(), reverse=True)[:8] if b],
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        "wall_s": round(wall, 1),
        "rc": proc.returncode,
        "load": os.getloadavg()[0],
    }
    print(json.dumps(report))
    if args.out:
        args.out.write_text(json.dumps(report) + "\n")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
