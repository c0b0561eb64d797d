"""Run presets on several seeds on real MNIST and print a Markdown table: mean ± std, min and max
of the headline accuracy beside the reported figure and each seed's, and the mean wall time per run
(training and evaluations, from results.json: not the command's start-up).

    python bench/reproduce.py --data /path/to/datasets [--only tutorial5_dense ...] [--seeds 0 1 2]
                              [--reuse] [--set model.precision=fp32 ...] [--jobs 2]

Each (preset, seed) runs as a real ``snnrun`` subprocess in bench/results/reproduce/<preset>-seed<s>/;
the table is also written to bench/results/reproduce.md. ``--reuse`` reads a finished run from its
folder instead of training it again. The headline is the test accuracy at the best validation
evaluation for presets that hold out a validation set, else the final test accuracy: never the
best test evaluation. ``--set`` adds overrides to every run (say them when quoting the table).
``--jobs N`` runs N seeds of a preset side by side (give each ``--set trainer.num_threads=...``
so that together they use the machine's cores once, and say so when quoting times).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

PRESETS = [
    # (preset, extra overrides, reported figure)
    ("tutorial5_dense", [], "93.9 % after 1 epoch"),
    ("tutorial6_csnn", ["trainer.max_steps=150"], "95.7 % after 150 iterations"),
    ("graded_fc100", [], "85.6 % after 1 epoch"),
    ("if_rate_fc500", [], "none (must beat chance)"),
    ("mnist_fast", [], "target ≥ 99.0 % in ≤ 60 s"),
    ("mnist_best", [], "target ≥ 99.5 % in ≤ 10 min"),
    ("csnn_nir", [], "none"),
    ("smnist_rows_lif", [], "none"),
    ("smnist_rows_rlif", [], "none"),
    ("smnist_pixels_alif", [], "96.4 % (LSNN), 98.7 % (SRNN)"),
    ("psmnist_alif", [], "94.3 % (SRNN)"),
    ("smnist_pixels_fast", [], "target ≥ 90 % in ≤ 15 min; 96.4 % (LSNN), 98.7 % (SRNN), 99.2 % (TC-LIF)"),
    ("psmnist_fast", [], "target ≥ 80 % in ≤ 15 min; 94.3 % (SRNN), 95.36 % (TC-LIF)"),
    ("smnist_pixels_best", [], "target ≥ 98 % in ≤ 2 h; 98.7 % (SRNN), 99.2 % (TC-LIF)"),
    ("psmnist_best", [], "target ≥ 94 % in ≤ 2 h; 94.3 % (SRNN), 95.36 % (TC-LIF)"),
]


def run_all(snnrun: str, preset: str, extra: list[str], seeds: list[int], data: Path, out: Path, reuse: bool,
            jobs: int) -> list[dict]:
    """Each seed's results.json, training the runs that are not reused, ``jobs`` at a time."""
    dirs = {seed: out / "-".join([preset, *extra, f"seed{seed}"]).replace("=", "_") for seed in seeds}
    todo = [seed for seed in seeds if not (reuse and (dirs[seed] / "results.json").is_file())]
    for start in range(0, len(todo), jobs):
        procs = []
        for seed in todo[start:start + jobs]:
            shutil.rmtree(dirs[seed], ignore_errors=True)
            cmd = [snnrun, f"experiment={preset}", f"seed={seed}", f"data.root={data}", *extra,
                   f"hydra.run.dir={dirs[seed]}"]
            print("$", " ".join(cmd[1:]), file=sys.stderr, flush=True)
            procs.append((cmd, subprocess.Popen(cmd, stdout=subprocess.DEVNULL)))
        for cmd, proc in procs:
            if proc.wait() != 0:
                raise subprocess.CalledProcessError(proc.returncode, cmd)
    return [json.loads((dirs[seed] / "results.json").read_text()) for seed in seeds]


def headline(results: dict) -> tuple[float, str]:
    if results.get("best_selected_on") == "val":
        return results["test_acc_at_best_val"], "test at best val"
    return results["test_acc"], "final test"


def row(preset: str, extra: list[str], reported: str, runs: list[dict]) -> str:
    accs = [100 * headline(r)[0] for r in runs]
    spread = f"{statistics.mean(accs):.2f} ± {statistics.stdev(accs):.2f}" if len(accs) > 1 else f"{accs[0]:.2f}"
    name = " ".join([f"`{preset}`", *(f"`{e}`" for e in extra)])
    each = ", ".join(f"{a:.2f}" for a in accs)
    return (f"| {name} | {reported} | **{spread} %** | {min(accs):.2f} | {max(accs):.2f} | {each} | "
            f"{headline(runs[0])[1]} | {statistics.mean(r['wall_s'] for r in runs):.0f} s | "
            f"{statistics.mean(r['train_samples_per_s'] for r in runs):.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.environ.get("SNNRUN_DATA", "data"),
                        help="folder holding MNIST/raw (default: $SNNRUN_DATA, else ./data)")
    parser.add_argument("--only", nargs="*", help="preset names to run (default: all)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--set", nargs="*", default=[], help="overrides added to every run")
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--reuse", action="store_true", help="read finished runs instead of training them again")
    parser.add_argument("--jobs", type=int, default=1, help="seeds of a preset trained side by side")
    args = parser.parse_args()
    snnrun = shutil.which("snnrun", path=str(Path(sys.executable).parent)) or "snnrun"
    data, out = Path(args.data).resolve(), Path(args.out)
    rows = [f"`python bench/reproduce.py {' '.join(sys.argv[1:])}`", "",
            f"| preset | reported | ours: mean ± std | min | max | seeds {', '.join(map(str, args.seeds))} | accuracy | "
            "wall time per run | "
            "train samples/s |", "|---|---|---|---|---|---|---|---|---|"]
    for preset, extra, reported in PRESETS:
        if args.only and preset not in args.only:
            continue
        runs = run_all(snnrun, preset, [*extra, *args.set], args.seeds, data, out / "reproduce", args.reuse, args.jobs)
        rows.append(row(preset, [*extra, *args.set], reported, runs))
        print(rows[-1], flush=True)
    table = "\n".join(rows)
    out.mkdir(parents=True, exist_ok=True)
    (out / "reproduce.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
