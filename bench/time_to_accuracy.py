"""Time to accuracy on MNIST: how long the whole ``snnrun`` command takes to reach 98 %, 99 % and
99.5 % test accuracy, per preset and seed, beside snnTorch's tutorial-6 recipe timed in the same run.

    python bench/time_to_accuracy.py --data /path/to/datasets [--presets mnist_fast mnist_best]
                                     [--seeds 0 1 2] [--anchor-budget 600] [--anchor-eval-every 100]

snnrun: each (preset, seed) runs as a real ``snnrun`` subprocess; its wall time is the command's,
from launch to exit (Python start-up, loading MNIST, every evaluation, checkpoints and the final
figures). A threshold's time is the trainer's clock when the evaluation that first reached it
finished, plus everything the command spent outside the trainer (start-up and teardown): an upper
bound. The headline accuracy is the final test accuracy (these presets hold out no validation
set, and their figure is the last evaluation's, not the best one's).

snnTorch anchor: tutorial 6's recipe written with snnTorch's own API (``nn.Sequential`` of Conv2d,
MaxPool2d and ``snn.Leaky(init_hidden=True)``, a Python loop over T = 50 steps, ``ce_rate_loss``,
Adam 1e-2, batch 128), trained on the same in-memory MNIST tensors (no DataLoader: that favours it)
for ``--anchor-budget`` seconds of training. Every ``--anchor-eval-every`` iterations it is evaluated
on the whole test set, and its clock stops meanwhile (that favours it too). Reported: the training
seconds to 98 % (if reached) and the best accuracy within the budget, its plateau.

Writes bench/results/time_to_accuracy.md (the table) and .json (every curve).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
TARGETS = ("0.98", "0.99", "0.995")


def run_preset(snnrun: str, preset: str, seed: int, data: Path, out: Path, threads: int | None) -> dict:
    run_dir = out / f"{preset}-seed{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = [snnrun, f"experiment={preset}", f"seed={seed}", f"data.root={data}", f"hydra.run.dir={run_dir}",
           *([f"trainer.num_threads={threads}"] if threads else [])]
    print("$", " ".join(cmd[1:]), file=sys.stderr, flush=True)
    tic = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - tic
    results = json.loads((run_dir / "results.json").read_text())
    outside = wall - results["wall_s"]  # start-up and teardown, charged to every threshold
    curve = [(r["step"], r["wall_s"] + outside, r["test_acc"])
             for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())]
    reached = {t: v["wall_s"] + outside for t, v in results["time_to_acc"].items()}
    return {"preset": preset, "seed": seed, "wall_s": wall, "test_acc": results["test_acc"], "reached": reached,
            "curve": curve, "steps": results["steps"], "train_samples_per_s": results["train_samples_per_s"]}


def snntorch_tutorial6(data: Path, budget_s: float, eval_every: int, seed: int) -> dict:
    """snnTorch's tutorial-6 CSNN trained for ``budget_s`` seconds (evaluations not counted)."""
    import snntorch as snn
    from snntorch import functional as SF
    from snntorch import surrogate, utils
    from torch import nn

    from snnrun.data.datasets import torchvision_dataset

    mnist = torchvision_dataset("MNIST", str(data), download=False)
    images = lambda split: split.inputs.float() / 255  # noqa: E731  ToTensor's [0, 1]
    train_x, train_y, test_x, test_y = images(mnist.train), mnist.train.labels, images(mnist.test), mnist.test.labels
    torch.manual_seed(seed)
    grad = surrogate.fast_sigmoid(slope=25)
    net = nn.Sequential(nn.Conv2d(1, 12, 5), nn.MaxPool2d(2), snn.Leaky(beta=0.5, spike_grad=grad, init_hidden=True),
                        nn.Conv2d(12, 64, 5), nn.MaxPool2d(2), snn.Leaky(beta=0.5, spike_grad=grad, init_hidden=True),
                        nn.Flatten(), nn.Linear(64 * 4 * 4, 10),
                        snn.Leaky(beta=0.5, spike_grad=grad, init_hidden=True, output=True))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2, betas=(0.9, 0.999))
    loss_fn = SF.ce_rate_loss()

    def forward(x):
        utils.reset(net)
        return torch.stack([net(x)[0] for _ in range(50)])

    def test_acc() -> float:
        correct = 0
        with torch.no_grad():
            for i in range(0, len(test_y), 1000):
                correct += int((forward(test_x[i:i + 1000]).sum(0).argmax(1) == test_y[i:i + 1000]).sum())
        return correct / len(test_y)

    clock, step, curve, reached, per_epoch = 0.0, 0, [], None, len(train_y) // 128  # drop_last batches
    while clock < budget_s:
        if step % per_epoch == 0:
            order = torch.randperm(len(train_y))
        idx = order[step % per_epoch * 128:][:128]
        tic = time.perf_counter()
        loss = loss_fn(forward(train_x[idx]), train_y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        clock += time.perf_counter() - tic
        step += 1
        if step % eval_every == 0 or clock >= budget_s:
            acc = test_acc()
            curve.append((step, clock, acc))
            print(f"snnTorch tutorial 6: step {step}  {clock:.0f} s  test_acc {100 * acc:.2f} %", file=sys.stderr,
                  flush=True)
            if reached is None and acc >= 0.98:
                reached = clock
    return {"steps": step, "train_s": clock, "best_acc": max(a for _, _, a in curve), "final_acc": curve[-1][2],
            "reached_0.98": reached, "curve": curve}


def mean_std(values: list[float]) -> str:
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}" if len(values) > 1 else f"{values[0]:.2f}"


def table(runs: list[dict], anchor: dict | None, machine: str) -> str:
    rows = [machine, "", "| preset | seeds | test acc (final, %) | wall time of the command (s) | to 98 % (s) | "
            "to 99 % (s) | to 99.5 % (s) |", "|---|---|---|---|---|---|---|"]
    for preset in dict.fromkeys(r["preset"] for r in runs):
        mine = [r for r in runs if r["preset"] == preset]
        cells = []
        for t in TARGETS:
            times = [r["reached"][t] for r in mine if t in r["reached"]]
            cells.append((mean_std(times) if len(times) == len(mine) else
                          f"{len(times)} of {len(mine)} seeds" + (f" ({mean_std(times)})" if times else "")))
        rows.append(f"| `{preset}` | {', '.join(str(r['seed']) for r in mine)} | "
                    f"{mean_std([100 * r['test_acc'] for r in mine])} | {mean_std([r['wall_s'] for r in mine])} | "
                    + " | ".join(cells) + " |")
    if anchor:
        to98 = f"{anchor['reached_0.98']:.0f} (training only)" if anchor["reached_0.98"] else "not reached"
        rows.append(f"| snnTorch tutorial 6 (T=50) | {anchor['seed']} | {100 * anchor['final_acc']:.2f} (best "
                    f"{100 * anchor['best_acc']:.2f}) after {anchor['steps']} steps | {anchor['train_s']:.0f} of training, "
                    f"evaluations not counted | {to98} | - | - |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.environ.get("SNNRUN_DATA", "data"), help="folder holding MNIST/raw")
    parser.add_argument("--presets", nargs="+", default=["mnist_fast", "mnist_best"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--anchor-budget", type=float, default=600.0, help="snnTorch's training seconds; 0 skips it")
    parser.add_argument("--anchor-eval-every", type=int, default=100, help="snnTorch's iterations between evaluations")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, all cores)")
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data, out = Path(args.data).resolve(), Path(args.out)
    snnrun = shutil.which("snnrun", path=str(Path(sys.executable).parent)) or "snnrun"
    runs = [run_preset(snnrun, p, s, data, out / "time_to_accuracy", args.threads)
            for p in args.presets for s in args.seeds]
    anchor = None
    if args.anchor_budget > 0:
        anchor = {"seed": args.seeds[0],
                  **snntorch_tutorial6(data, args.anchor_budget, args.anchor_eval_every, args.seeds[0])}
    machine = (f"{time.strftime('%Y-%m-%d')}; torch {torch.__version__}; {torch.get_num_threads()} threads on "
               f"{os.cpu_count()} cores; `python bench/time_to_accuracy.py {' '.join(sys.argv[1:])}`")
    text = table(runs, anchor, machine)
    out.mkdir(parents=True, exist_ok=True)
    (out / "time_to_accuracy.md").write_text(text + "\n")
    (out / "time_to_accuracy.json").write_text(json.dumps({"runs": runs, "anchor": anchor, "machine": machine}, indent=1))
    print(text)


if __name__ == "__main__":
    main()
