"""Validation accuracy against wall time, one line per run, from run folders: a PNG for the docs.

    python bench/curves.py RUN_DIR [RUN_DIR ...] --out docs/figure.png [--title "..."]

Each run contributes its full evaluations (metrics.jsonl: ``val_acc`` at ``wall_s``, the run's
training clock) and its quick curve points (TensorBoard's ``curve/val_acc`` on a fixed subset of
the validation split), placed on the same clock: an event's time minus the clock's start, which
the first full evaluation gives (its event time minus its ``wall_s``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


def points(run: Path) -> tuple[list, list]:
    """(full evaluations, curve points) as [(wall seconds, validation accuracy)]."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    full = [(r["wall_s"], r["val_acc"]) for r in records if "val_acc" in r]
    events = EventAccumulator(str(run), size_guidance={"scalars": 0})
    events.Reload()
    tags = events.Tags()["scalars"]
    if "curve/val_acc" not in tags or "val/acc" not in tags or not full:
        return full, []
    start = events.Scalars("val/acc")[0].wall_time - full[0][0]
    return full, [(e.wall_time - start, e.value) for e in events.Scalars("curve/val_acc")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run folders; each is labelled by its name after the last -")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--title", default="")
    args = parser.parse_args()
    fig, ax = plt.subplots(figsize=(6.4, 4.0), constrained_layout=True)
    for run in args.runs:
        full, curve = points(run)
        line, = ax.plot(*zip(*sorted(curve + full)), marker=".", linewidth=1.2, label=run.name.rsplit("-", 1)[-1])
        ax.plot(*zip(*full), linestyle="none", marker="o", color=line.get_color())
    ax.set_xlabel("wall time of the run (s), evaluations included")
    ax.set_ylabel("validation accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.set_title(args.title, fontsize="medium")
    ax.legend(fontsize="small", title="dots: 1,000-sample curve points; circles: full validation")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
