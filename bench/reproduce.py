"""Run every preset on real MNIST and print a Markdown table of reported vs measured figures.

    python bench/reproduce.py --data /path/to/datasets [--only tutorial5_dense ...]

Each preset runs as a real ``snnrun`` subprocess in bench/results/<preset>[-<overrides>]/; the
table is also written to bench/results/reproduce.md. ``--reuse`` takes a preset's finished run
from that folder instead of training it again (csnn_best trains for about 15 minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

PRESETS = [
    # (preset, extra overrides, setting, reported figure)
    ("tutorial5_dense", [], "FC1000-FC10, lif β=0.95, atan, direct, T=25, membrane_ce, Adam 5e-4, batch 128, 1 epoch",
     "93.9 % after 1 epoch"),
    ("tutorial5_dense", ["seed=1"], "the same, another seed", "93.9 % after 1 epoch"),
    ("tutorial5_dense", ["seed=2"], "the same, another seed", "93.9 % after 1 epoch"),
    ("tutorial5_dense", ["model.precision=bf16"], "the same (seed 0) with bf16 weight layers", "93.9 % after 1 epoch"),
    ("tutorial6_csnn", ["trainer.max_steps=150"], "12C5-MP2-64C5-MP2-FC10, lif β=0.5, fast_sigmoid 25, direct, T=50, "
     "spike_rate_ce, Adam 1e-2, batch 128, 150 iterations", "95.7 % after 150 iterations"),
    ("tutorial6_csnn", ["trainer.max_steps=150", "model.precision=bf16"], "the same with bf16 weight layers",
     "95.7 % after 150 iterations"),
    ("graded_fc100", [], "FC100-FC10 graded, xavier init, noise on x − 0.5, T=128, membrane_sum_ce (mean), "
     "SGD 0.1 m=0.5, batch 1000, 1 epoch", "85.6 % after 1 epoch"),
    ("if_rate_fc500", [], "FC500-FC500-FC10 if + synaptic current, rectified, rate encoder, fast_sigmoid 100, "
     "normalised spike_count_ce, Adam 1e-3, T=32, batch 500, 1 epoch", "none reported (must beat chance)"),
    ("csnn_best", [], "12C5-MP2-64C5-MP2-FC10, lif learned β, fast_sigmoid 25, direct, T=25, membrane_ce (mean), "
     "membrane readout, Adam 2e-3 one-cycle, shifts ≤ 2 px, bf16, 15 epochs", "target ≥ 99.3 %"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.environ.get("SNNRUN_DATA", "data"),
                        help="folder holding MNIST/raw (default: $SNNRUN_DATA, else ./data)")
    parser.add_argument("--only", nargs="*", help="preset names to run (default: all)")
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--reuse", action="store_true",
                        help="read a preset's finished run from <out>/<run> instead of training it again")
    args = parser.parse_args()
    snnrun = shutil.which("snnrun", path=str(Path(sys.executable).parent)) or "snnrun"
    out = Path(args.out)
    rows = ["| preset | setting | reported | ours (test acc) | training wall time | train samples/s |",
            "|---|---|---|---|---|---|"]
    for name, extra, setting, reported in PRESETS:
        if args.only and name not in args.only:
            continue
        run_dir = out / "-".join([name, *extra]).replace("=", "_")
        cmd = [snnrun, f"experiment={name}", f"data.root={Path(args.data).resolve()}", *extra, f"hydra.run.dir={run_dir}"]
        if not (args.reuse and (run_dir / "results.json").is_file()):
            shutil.rmtree(run_dir, ignore_errors=True)
            print("$", " ".join(cmd[1:]), file=sys.stderr, flush=True)
            subprocess.run(cmd, check=True)
        r = json.loads((run_dir / "results.json").read_text())
        preset = " ".join([f"`{name}`", *(f"`{e}`" for e in extra)])
        rows.append(f"| {preset} | {setting} | {reported} | **{100 * r['test_acc']:.2f} %** | {r['wall_s']:.0f} s | "
                    f"{r['train_samples_per_s']:.0f} |")
    table = "\n".join(rows)
    out.mkdir(parents=True, exist_ok=True)
    (out / "reproduce.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
