"""embdim's Dropout against nn.Dropout: forward and backward of one MLP layer's activations, side by side.

    .venv/bin/python benchmarks/dropout_speed.py [--rows 4096] [--width 400] [--threads 2] [--rounds 40]

Both run on the same [rows, width] input in float32 and bfloat16, interleaved call by call after three
warm-up calls; prints the median milliseconds of each and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from embdim.models.layers import Dropout

P = 0.2


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--width", type=int, default=400)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=40)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print("| dtype | nn.Dropout ms | embdim Dropout ms | speed-up |")
    print("|---|---|---|---|")
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(args.rows, args.width, dtype=dtype, requires_grad=True)
        grad = torch.randn(args.rows, args.width, dtype=dtype)
        layers = {"torch": torch.nn.Dropout(P).train(), "embdim": Dropout(P).train()}
        times: dict[str, list[float]] = {name: [] for name in layers}
        for i in range(args.rounds + 3):
            for name, layer in layers.items():
                start = time.perf_counter()
                layer(x).backward(grad)
                if i >= 3:
                    times[name].append(time.perf_counter() - start)
        ours, theirs = statistics.median(times["embdim"]), statistics.median(times["torch"])
        print(f"| {dtype} | {theirs * 1e3:.2f} | {ours * 1e3:.2f} | {theirs / ours:.2f}x |")


if __name__ == "__main__":
    main()
