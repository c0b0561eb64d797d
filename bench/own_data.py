"""data=tensors against the built-in loader, and a file bigger than memory.

1. MNIST written out as .npz (uint8 [N, 1, 28, 28], int64 labels) trains to the same figures as
   data=mnist with the same seed: both runs go through the snnrun command, results compared.
2. A float32 .npz of --big-gib GiB (more than this machine's memory) is written without ever
   holding it in memory, then snnrun.train runs a few steps on it, memory-mapped: the time to
   the first step (reading, checks, NaN scan) and the process's peak anonymous and file-backed
   resident memory are printed.

    python bench/own_data.py --data $SNNRUN_DATA --steps 200 --big-gib 28 --work /tmp/own_data
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def snnrun(*args, cwd) -> dict:
    exe = Path(sys.executable).with_name("snnrun")
    subprocess.run([str(exe), *args, "hydra.run.dir=run"], cwd=cwd, check=True, capture_output=True, text=True)
    return json.loads((Path(cwd) / "run" / "results.json").read_text())


def same_as_mnist(root: Path, work: Path, steps: int) -> None:
    from torchvision.datasets import MNIST

    for split, train in (("train", True), ("test", False)):
        ds = MNIST(str(root), train=train, download=False)
        np.savez(work / f"mnist_{split}.npz", inputs=ds.data.numpy()[:, None], labels=ds.targets.numpy())
    common = [f"trainer.max_steps={steps}", "seed=0", "trainer.raster_samples=0"]
    (work / "a").mkdir(), (work / "b").mkdir()
    tic = time.perf_counter()
    builtin = snnrun("data=mnist", f"data.root={root}", *common, cwd=work / "a")
    mid = time.perf_counter()
    own = snnrun("data=tensors", f"data.train_path={work / 'mnist_train.npz'}",
                 f"data.test_path={work / 'mnist_test.npz'}", *common, cwd=work / "b")
    end = time.perf_counter()
    print(f"| data=mnist | {builtin['test_acc']:.4f} | {builtin['test_loss']:.6f} | {mid - tic:.1f} s |")
    print(f"| data=tensors (MNIST as .npz) | {own['test_acc']:.4f} | {own['test_loss']:.6f} | {end - mid:.1f} s |")
    print(f"identical: {builtin['test_acc'] == own['test_acc'] and builtin['test_loss'] == own['test_loss']}")


def write_big(path: Path, gib: float, width: int = 784, classes: int = 10) -> int:
    """A stored (uncompressed) .npz of float32 inputs [N, width], streamed in chunks."""
    n = int(gib * 2**30 // (4 * width))
    g = np.random.default_rng(0)
    labels = (np.arange(n) % classes).astype(np.int64)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for key, shape, dtype in (("inputs", (n, width), np.float32), ("labels", (n,), np.int64)):
            with archive.open(f"{key}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array_header_2_0(member, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                                              "fortran_order": False, "shape": shape})
                if key == "labels":
                    member.write(labels.tobytes())
                    continue
                chunk = 65536
                for start in range(0, n, chunk):
                    rows = min(chunk, n - start)
                    x = g.random((rows, width), dtype=np.float32) * 0.5
                    x[:, :classes] += np.eye(classes, dtype=np.float32)[labels[start:start + rows]]
                    member.write(x.tobytes())
    return n


def peak_memory(stop: threading.Event, peaks: dict) -> None:
    while not stop.wait(0.05):
        status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
        for key in ("RssAnon", "RssFile"):
            peaks[key] = max(peaks.get(key, 0), int(status[key].split()[0]) * 1024)


def big_file(work: Path, gib: float, steps: int) -> None:
    import snnrun

    path = work / "big.npz"
    tic = time.perf_counter()
    n = write_big(path, gib)
    written = time.perf_counter() - tic
    test = work / "big_test.npz"
    from snnrun.data import tensors

    x, y = tensors.read(path, "data.train_path")
    np.savez(test, inputs=x[:2000].numpy(), labels=y[:2000].numpy())
    del x, y
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    print(f"big file: {path.stat().st_size / 2**30:.1f} GiB ({n:,} samples of 784 float32), machine memory "
          f"{total / 2**30:.1f} GiB, written in {written:.0f} s")
    peaks: dict = {}
    stop = threading.Event()
    watcher = threading.Thread(target=peak_memory, args=(stop, peaks), daemon=True)
    watcher.start()
    os.chdir(work)
    tic = time.perf_counter()
    results, run_dir = snnrun.train(["data=tensors", f"data.train_path={path}", f"data.test_path={test}",
                                     "model.arch=FC128-FC10", "time_steps=8", "data.batch_size=256",
                                     f"trainer.max_steps={steps}", "trainer.raster_samples=0", "trainer.curve_points=0"])
    wall = time.perf_counter() - tic
    stop.set()
    watcher.join()
    print(f"snnrun.train, {steps} steps: {wall:.0f} s in all, of which training {results['wall_s']:.0f} s; "
          f"peak anonymous memory {peaks['RssAnon'] / 2**30:.2f} GiB, peak file-backed resident "
          f"{peaks['RssFile'] / 2**30:.2f} GiB; test_acc {results['test_acc']:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("SNNRUN_DATA", "data")),
                        help="the folder that holds MNIST/raw (default: $SNNRUN_DATA, else ./data)")
    parser.add_argument("--steps", type=int, default=200, help="training steps of each MNIST run")
    parser.add_argument("--big-gib", type=float, default=28.0, help="size of the big file (0: skip)")
    parser.add_argument("--big-steps", type=int, default=50)
    parser.add_argument("--work", type=Path, default=Path("/tmp/own_data"))
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; python {platform.python_version()}")
    print("| data | test_acc | test_loss | wall |\n|---|---|---|---|")
    same_as_mnist(args.data.resolve(), args.work, args.steps)
    if args.big_gib:
        big_file(args.work, args.big_gib, args.big_steps)
    shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    main()
