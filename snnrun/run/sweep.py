"""Sweep summaries: when a multirun ends, one table with a row per job, best first.

Each job folder of the sweep holds Hydra's ``.hydra/overrides.yaml`` and snnrun's
``results.json``; ``SweepSummary`` (a Hydra callback) reads them back and writes
``summary.csv`` and ``summary.md`` into the sweep folder. A job that failed, or left no
results at all, is a failed row with the first line of its error; it never hides the rows
of the jobs that finished.
"""

from __future__ import annotations

import csv
import io
import json
import signal
import statistics
import sys
from pathlib import Path

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from ..atomic import write_atomic

COLUMNS = ("job", "overrides", "status", "test_acc", "best_test_acc", "best_val_acc", "test_acc_at_best_val", "test_loss",
           "energy_pj", "train_samples_per_s", "wall_s",
           "error")


def _job_folders(sweep_dir: Path) -> list[Path]:
    jobs = [p.parent.parent for p in sweep_dir.glob("*/.hydra/overrides.yaml")]
    return sorted(jobs, key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name))


def _first_line(text: str) -> str:
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return lines[0] if lines else ""


def collect(sweep_dir: str | Path) -> list[dict]:
    """One row per job folder, sorted: finished jobs best first by the sweep's objective (the best
    validation accuracy where a job holds out a validation split, else the final test accuracy,
    as ``snnrun`` returns it to sweepers), then failures."""
    sweep_dir = Path(sweep_dir)
    rows, job_overrides = [], []
    for job in _job_folders(sweep_dir):
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()) or []
        job_overrides.append(overrides)
        row = dict.fromkeys(COLUMNS)
        row["job"] = job.name
        path = job / "results.json"
        try:
            results = json.loads(path.read_text())
        except (OSError, ValueError):
            results = {"status": "failed", "error": f"no readable results.json in {job} (the job crashed or was killed)"}
        for key in COLUMNS[2:]:
            row[key] = results.get(key)
        if row["status"] != "ok":
            row["status"] = row["status"] or "failed"
            row["error"] = _first_line(row["error"] or "unknown error")
        rows.append(row)
    shared = set.intersection(*(set(o) for o in job_overrides)) if len(job_overrides) > 1 else set()
    for row, overrides in zip(rows, job_overrides):
        row["overrides"] = " ".join(o for o in overrides if o not in shared)
    return sorted(rows, key=lambda r: (r["status"] != "ok", -objective(r)))


def objective(row: dict) -> float:
    """What the sweep optimises for this job: best_val_acc with a validation split, else test_acc."""
    value = row["best_val_acc"] if row["best_val_acc"] is not None else row["test_acc"]
    return value if value is not None else -1.0


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def markdown(rows: list[dict]) -> str:
    return _table(rows, COLUMNS)


SEED_COLUMNS = ("config", "jobs", "ok", "objective_mean", "objective_std", "objective_min", "objective_max",
                "test_acc_mean", "test_acc_std")


def over_seeds(rows: list[dict]) -> list[dict]:
    """The jobs that differ only in ``seed=``, gathered: how many ended ok, and the mean, sample standard deviation,
    min and max of their objective (best_val_acc with a validation split, else test_acc) and of test_acc, best
    mean first. A headline figure is such a mean with its spread, never the best seed."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        tokens = (row["overrides"] or "").split()
        if any(t.startswith("seed=") for t in tokens):
            groups.setdefault(" ".join(t for t in tokens if not t.startswith("seed=")) or "(all)", []).append(row)
    gathered = []
    for config, members in groups.items():
        ok = [m for m in members if m["status"] == "ok"]
        row = dict.fromkeys(SEED_COLUMNS)
        row.update(config=config, jobs=len(members), ok=len(ok))
        for name, values in (("objective", [objective(m) for m in ok]), ("test_acc", [m["test_acc"] for m in ok])):
            if values:
                row[f"{name}_mean"] = statistics.fmean(values)
                row[f"{name}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
                if name == "objective":
                    row["objective_min"], row["objective_max"] = min(values), max(values)
        gathered.append(row)
    return sorted(gathered, key=lambda r: -(r["objective_mean"] if r["objective_mean"] is not None else -1.0))


def _table(rows: list[dict], columns) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row[c]).replace("|", "\\|") for c in columns) + " |")
    return "\n".join(lines) + "\n"


def _csv(rows: list[dict], columns) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_summary(sweep_dir: str | Path) -> list[dict]:
    """Write summary.csv and summary.md into ``sweep_dir`` (and, where jobs differ in ``seed=``, summary_seeds.csv
    and a second table in summary.md); returns the rows."""
    sweep_dir = Path(sweep_dir)
    rows = collect(sweep_dir)
    write_atomic(sweep_dir / "summary.csv", _csv(rows, COLUMNS))
    seeds = [r for r in over_seeds(rows) if r["jobs"] > 1]
    text = markdown(rows)
    if seeds:
        write_atomic(sweep_dir / "summary_seeds.csv", _csv(seeds, SEED_COLUMNS))
        text += "\nOver seeds (mean and sample standard deviation of the jobs that ended ok):\n\n" + _table(seeds, SEED_COLUMNS)
    write_atomic(sweep_dir / "summary.md", text)
    return rows


STOPPED = ".stopped"  # in a sweep's folder: the signal that stopped one of its jobs, so no later job starts


def exit_code(signame: str) -> int:
    """The command's exit code after a signal stopped it: 128 + the signal's number, as a shell reports it."""
    return 130 if signame == "SIGINT" else 143


def stop(sweep_dir: str | Path, signame: str) -> None:
    """A job of the sweep was stopped by ``signame`` (Ctrl-C, a scheduler's SIGTERM): the jobs after it do not run."""
    write_atomic(Path(sweep_dir) / STOPPED, signame)


def stopped_by(sweep_dir: str | Path) -> str | None:
    """The signal that stopped the sweep in ``sweep_dir``, or None while it runs on."""
    path = Path(sweep_dir) / STOPPED
    return path.read_text().strip() if path.is_file() else None


def stop_on_signals(sweep_dir: str | Path) -> None:
    """In the sweep's own process: SIGINT or SIGTERM stops the sweep. The jobs running (in this process or a
    launcher's workers, which get the signal too) finish their step and save; no later job starts; the command
    then writes the summary and exits 130 or 143. A second SIGINT aborts at once."""
    seen = []

    def request(signum, frame):
        name = signal.Signals(signum).name
        if name == "SIGINT" and "SIGINT" in seen:
            raise KeyboardInterrupt
        seen.append(name)
        stop(sweep_dir, name)
        print(f"snnrun: {name} received: the jobs running finish their step and save, no later job starts",
              file=sys.stderr, flush=True)

    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, request)


class SweepStopped(BaseException):
    """A signal stopped a sweep's job in the sweep's own process: raised past Hydra's launcher (which would go on
    to the next job) to the command, which writes the summary and exits 130 (SIGINT) or 143 (SIGTERM)."""

    def __init__(self, sweep_dir: Path, signame: str):
        super().__init__(f"the sweep was stopped by {signame}")
        self.sweep_dir, self.code = Path(sweep_dir), exit_code(signame)


class SweepSummary(Callback):
    """Hydra callback: at the end of every multirun, summarise its jobs into one table; ``failed`` counts the
    jobs that did not end ok (the command then exits 1), ``stopped`` the signal that stopped one (130 or 143)."""

    failed = 0
    stopped: str | None = None
    planned: int | None = None  # the jobs of a basic sweep, counted before the first runs (Preflight)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if sweep_dir.is_dir():
            SweepSummary.report(sweep_dir)

    @staticmethod
    def report(sweep_dir: Path) -> None:
        """Write and print the summary of the jobs in ``sweep_dir``, and keep what the command's exit code needs."""
        rows = write_summary(sweep_dir)
        ok = sum(r["status"] == "ok" for r in rows)
        SweepSummary.failed, SweepSummary.stopped = len(rows) - ok, stopped_by(sweep_dir)
        stopped = f"; stopped by {SweepSummary.stopped}" if SweepSummary.stopped else ""
        if stopped and SweepSummary.planned and SweepSummary.planned > len(rows):
            stopped += f": {SweepSummary.planned - len(rows)} of {SweepSummary.planned} jobs did not start"
        print(f"\nsweep summary ({ok} of {len(rows)} jobs ok{stopped}): {sweep_dir / 'summary.md'}\n\n"
              f"{(sweep_dir / 'summary.md').read_text()}",
              flush=True)
