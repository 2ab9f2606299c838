"""Preprocessing speed and peak memory: Criteo-format text (synthetic, gzip) -> encoded cache.

.venv/bin/python benchmarks/preprocess.py --rows 1000000
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

from embdim.data.prepare import PreprocessConfig, prepare
from embdim.data.readers.criteo import CriteoOptions, CriteoReader
from embdim.data.synthetic import write_criteo_text


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "criteo.txt.gz"
        t0 = time.perf_counter()
        write_criteo_text(src, args.rows, seed=0, compress=True)
        t_write = time.perf_counter() - t0
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        reader = CriteoReader(CriteoOptions(path=str(src)), Path(tmp))
        cfg = PreprocessConfig(min_count=10, numeric="discretize")
        t0 = time.perf_counter()
        data = prepare(reader, cfg, Path(tmp) / "cache", "bench", progress=False)
        t_prep = time.perf_counter() - t0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.perf_counter()
        prepare(reader, cfg, Path(tmp) / "cache", "bench", progress=False)
        t_hit = time.perf_counter() - t0
    print(f"rows {args.rows:,}; fields {data.schema.num_fields}; vocab {sum(data.schema.vocab_sizes):,}")
    print("| step | seconds | rows/s |\n|---|---|---|")
    print(f"| write synthetic text (gzip) | {t_write:.1f} | {args.rows / t_write:,.0f} |")
    print(f"| read + split + encode + write cache | {t_prep:.1f} | {args.rows / t_prep:,.0f} |")
    print(f"| load from cache (memory-mapped) | {t_hit:.2f} | - |")
    print(f"peak RSS: {peak / 1024:.0f} MiB (before prepare: {rss_before / 1024:.0f} MiB)")


if __name__ == "__main__":
    main()
