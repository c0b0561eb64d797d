"""Streaming inference against whole-sequence inference on the pixel-wise network, in one command.

    python bench/streaming.py [--threads 1] [--rounds 5] [--batches 1 64]

The network of experiment=smnist_pixels_alif (RFC128-FC128-FC10, one-to-one alif, li readout; fixed
random weights), in eval mode without gradients, on sequences of 784 random pixels. For each batch
size it times, median over rounds:

    stream      ``SpikingNetwork.step``: one pixel in, the outputs so far out, the state carried between
                calls; the time per step is the latency of an answer each time a pixel arrives
    sequence    ``forward`` on the whole 784-step sequence (the kernels' path): what one pays per answer
                without streaming, rerunning the sequence so far, once it is complete

and checks that both give the same outputs. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from kernels import cpu_name, pixels_network  # noqa: E402


def stream(model, x):
    state, mems = None, []
    for x_t in x:
        _, mem, state = model.step(x_t, state)
        mems.append(mem)
    return torch.stack(mems)


def timed(fn, rounds):
    times = []
    for _ in range(rounds):
        tic = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - tic)
    return statistics.median(times), out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = pixels_network()[1].eval()
    print(f"{time.strftime('%Y-%m-%d')}, {cpu_name()}, {args.threads} thread(s), torch {torch.__version__}; "
          f"median of {args.rounds}\n")
    print("| batch | stream: µs per step | whole sequence: ms per forward | stream, 784 steps: ms | "
          "same outputs |\n|---|---|---|---|---|")
    for batch in args.batches:
        x = torch.rand(784, batch, 1, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            model(x)  # kernels loaded or compiled, caches warm
            streamed, mems = timed(lambda: stream(model, x), args.rounds)
            whole, (_, mem) = timed(lambda: model(x), args.rounds)
        same = torch.allclose(mems, mem, rtol=1e-5, atol=1e-5)
        print(f"| {batch} | {1e6 * streamed / len(x):.0f} | {1e3 * whole:.1f} | {1e3 * streamed:.0f} | {same} |")


if __name__ == "__main__":
    main()
