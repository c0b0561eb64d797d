"""Multirun sweeps: per-job folders, a summary table, failed jobs as rows, launchers and optuna."""

import csv
import importlib.util

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import FAST, read_results, snnrun

e2e = pytest.mark.e2e  # the tests that run the snnrun command in a subprocess

SWEEP = [*FAST, "trainer.max_steps=4", "trainer.log_every=1"]


def needs(module):
    return pytest.mark.skipif(importlib.util.find_spec(module) is None,
                              reason=f"{module} is not installed (pip install -e '.[sweep]')")


def summary(sweep_dir):
    with open(sweep_dir / "summary.csv") as f:
        return list(csv.DictReader(f))


@e2e
def test_two_surrogates_give_two_jobs_and_a_summary(tmp_path):
    proc = snnrun("-m", "surrogate=atan,fast_sigmoid", *SWEEP, "hydra.sweep.dir=sweep", cwd=tmp_path)
    sweep = tmp_path / "sweep"
    for job in ("0", "1"):
        assert read_results(sweep / job)["status"] == "ok"
        (events,) = (sweep / job).glob("events.out.tfevents.*")
        acc = EventAccumulator(str(events)).Reload()
        assert "test/acc" in acc.Tags()["scalars"]
        assert b"surrogate" in acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]  # no extra run folders
    rows = summary(sweep)
    assert sorted(r["overrides"] for r in rows) == ["surrogate=atan", "surrogate=fast_sigmoid"]
    assert all(r["status"] == "ok" and 0 <= float(r["test_acc"]) <= 1 for r in rows)
    assert float(rows[0]["test_acc"]) >= float(rows[1]["test_acc"])  # best first
    assert all(float(r["wall_s"]) > 0 and float(r["train_samples_per_s"]) > 0 for r in rows)
    md = (sweep / "summary.md").read_text().splitlines()
    assert len(md) == 4 and md[0].startswith("| job | overrides | status | test_acc")
    assert {line.split(" | ")[1] for line in md[2:]} == {"surrogate=atan", "surrogate=fast_sigmoid"}
    assert "sweep summary (2 of 2 jobs ok)" in proc.stdout and "surrogate=fast_sigmoid" in proc.stdout


@e2e
def test_seeds_are_gathered_into_a_mean_and_its_spread(tmp_path):
    import statistics

    proc = snnrun("-m", "seed=0,1,2", "surrogate=atan,fast_sigmoid", *SWEEP, "hydra.sweep.dir=sweep", cwd=tmp_path)
    rows = summary(tmp_path / "sweep")
    with open(tmp_path / "sweep" / "summary_seeds.csv") as f:
        gathered = {r["config"]: r for r in csv.DictReader(f)}
    assert set(gathered) == {"surrogate=atan", "surrogate=fast_sigmoid"}
    for config, row in gathered.items():
        accs = [float(r["test_acc"]) for r in rows if config in r["overrides"].split()]
        assert len(accs) == 3 and row["jobs"] == row["ok"] == "3"
        assert float(row["test_acc_mean"]) == pytest.approx(statistics.fmean(accs))
        assert float(row["test_acc_std"]) == pytest.approx(statistics.stdev(accs))
        assert float(row["objective_min"]) == pytest.approx(min(accs))
    assert "Over seeds" in (tmp_path / "sweep" / "summary.md").read_text() and "Over seeds" in proc.stdout


@e2e
def test_a_failed_job_is_a_failed_row_and_the_others_are_kept(tmp_path):
    """A job refused only once its data is loaded (a validation split larger than the 256 training samples)."""
    proc = snnrun("-m", "data.val_size=0,300,16", *SWEEP, "hydra.sweep.dir=sweep", cwd=tmp_path, check=False)
    assert proc.returncode == 1 and "1 job(s) of the sweep did not end ok" in proc.stderr  # after all three ran
    rows = summary(tmp_path / "sweep")
    assert [r["status"] for r in rows] == ["ok", "ok", "failed"]
    failed = rows[-1]
    assert failed["overrides"] == "data.val_size=300" and failed["test_acc"] == ""
    assert "data.val_size=300 is not allowed" in failed["error"] and "\n" not in failed["error"]


@e2e
def test_a_sweep_with_a_job_that_would_be_refused_runs_none(tmp_path):
    """Every job's values and parts are checked before the first job runs: no hour of training before job 37's typo."""
    proc = snnrun("-m", "neuron.beta=0.9,1.5", "surrogate=atan,sigmoid", *SWEEP, "hydra.sweep.dir=sweep", cwd=tmp_path,
                  check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "job 2 of the sweep" in proc.stderr and "neuron.beta=1.5 is not allowed" in proc.stderr, proc.stderr
    assert not (tmp_path / "sweep").exists()


@e2e
def test_summary_marks_a_job_without_results_as_failed(tmp_path):
    from snnrun.run.sweep import write_summary

    snnrun("-m", "seed=0,1", *SWEEP, "hydra.sweep.dir=sweep", cwd=tmp_path)
    (tmp_path / "sweep" / "1" / "results.json").unlink()  # as if the job had been killed
    rows = write_summary(tmp_path / "sweep")
    assert [(r["job"], r["status"]) for r in rows] == [("0", "ok"), ("1", "failed")]
    assert "no readable results.json" in rows[1]["error"]


@e2e
@needs("hydra_plugins.hydra_joblib_launcher")
def test_joblib_launcher_runs_jobs_in_parallel_without_oversubscribing(tmp_path):
    snnrun("-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "surrogate=atan,fast_sigmoid", *SWEEP,
           "hydra.sweep.dir=sweep", cwd=tmp_path)
    rows = summary(tmp_path / "sweep")
    assert len(rows) == 2 and all(r["status"] == "ok" for r in rows)
    import os
    cores = len(os.sched_getaffinity(0))
    threads = [read_results(tmp_path / "sweep" / job)["threads"] for job in ("0", "1")]
    assert sum(threads) <= max(cores, 2), f"{threads} torch threads per job on {cores} cores"


@e2e
@needs("hydra_plugins.hydra_submitit_launcher")
def test_submitit_local_launcher(tmp_path):
    snnrun("-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", "surrogate=atan,fast_sigmoid",
           *SWEEP, "hydra.sweep.dir=sweep", cwd=tmp_path, timeout=600)
    rows = summary(tmp_path / "sweep")
    assert len(rows) == 2 and all(r["status"] == "ok" for r in rows)


@e2e
@needs("hydra_plugins.hydra_optuna_sweeper")
def test_optuna_search_returns_a_best_value_past_a_failed_trial(tmp_path):
    """A trial that fails (here T = 0, refused) is a failed trial and a failed row; the search goes on."""
    searched = [o for o in SWEEP if not o.startswith("time_steps=")]  # a fixed value would pin the searched T
    proc = snnrun("hparams_search=optuna_lif", "hydra.sweeper.n_trials=5", "hydra.sweeper.params.time_steps='choice(4,0)'",
                  *searched, "hydra.sweep.dir=sweep", cwd=tmp_path, timeout=600, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr  # 1: a job did not end ok
    best = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    assert 0 <= best["best_value"] <= 1 and best["best_params"]["time_steps"] == 4
    assert set(best["best_params"]) == {"optimizer.lr", "neuron.beta", "surrogate.slope", "time_steps"}
    rows = summary(tmp_path / "sweep")
    assert len(rows) == 5 and float(rows[0]["test_acc"]) == pytest.approx(best["best_value"])
    failed = [r for r in rows if r["status"] != "ok"]
    assert failed and all("time_steps=0" in r["overrides"] and "time_steps" in r["error"] for r in failed)
    assert "Best value" in proc.stdout + proc.stderr


@e2e
@pytest.mark.parametrize("launcher", ["basic", pytest.param("joblib", marks=needs("hydra_plugins.hydra_joblib_launcher"))])
def test_a_signal_stops_the_whole_sweep(tmp_path, launcher):
    """Ctrl-C (to the process group, as a terminal sends it) stops the sweep: the running jobs save and say how to
    resume, no later job starts, the summary is written and the command exits 130."""
    import os
    import signal
    import subprocess
    import time

    from conftest import SNNRUN

    parallel = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"] if launcher == "joblib" else []
    proc = subprocess.Popen([SNNRUN, "-m", "seed=0,1,2,3", *parallel, *FAST, "trainer.max_steps=100000",
                             "trainer.eval_every=5", "hydra.sweep.dir=sweep"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    metrics = tmp_path / "sweep" / "0" / "metrics.jsonl"
    deadline = time.time() + 120
    while not metrics.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert metrics.exists(), "job 0 never evaluated"
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 130 and "Traceback" not in err, err
    rows = {r["job"]: r for r in summary(tmp_path / "sweep")}
    assert rows["0"]["status"] == "interrupted" and "Resume this job with" in err
    assert all(r["status"] in ("interrupted", "not run") for r in rows.values())
    assert len(rows) < 4 or rows["3"]["status"] == "not run"  # job 3 never trained
    assert "stopped by SIGINT" in out
    resumed = f"ckpt_path={tmp_path / 'sweep' / '0' / 'checkpoints' / 'last.pt'}"
    assert resumed in err and f"hydra.run.dir={tmp_path / 'sweep' / '0'}-resumed" in err


@e2e
def test_a_sweep_into_job_folders_of_an_earlier_one_is_refused(tmp_path):
    """With a subdir of your own, a second sweep into the same folder would meet the first one's job folders."""
    pattern = "hydra.sweep.subdir=r${hydra.job.num}"
    snnrun("-m", "seed=0,1", *SWEEP, "hydra.sweep.dir=sweep", pattern, cwd=tmp_path)
    before = {p: p.read_bytes() for p in (tmp_path / "sweep").rglob("*") if p.is_file()}
    proc = snnrun("-m", "seed=5,6", *SWEEP, "hydra.sweep.dir=sweep", pattern, cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "job 0" in proc.stderr and "sweep/r0, which already holds" in proc.stderr
    assert {p: p.read_bytes() for p in (tmp_path / "sweep").rglob("*") if p.is_file()} == before
    named = "hydra.sweep.subdir=${hydra.job.override_dirname}"  # new folders in the shared sweep folder: allowed
    snnrun("-m", "seed=5,6", *SWEEP, "hydra.sweep.dir=sweep", named, cwd=tmp_path)
    assert (tmp_path / "sweep" / "multirun.1.yaml").read_bytes() == before[tmp_path / "sweep" / "multirun.yaml"]
    assert len(summary(tmp_path / "sweep")) == 4  # the summary lists the jobs of both


def test_the_summary_ranks_by_the_sweeps_objective_validation_when_held_out(tmp_path):
    """With a validation split the objective is best_val_acc, and the rows follow it, not test_acc."""
    import json

    from snnrun.run.sweep import collect

    jobs = {"0": {"best_val_acc": 0.90, "test_acc": 0.95}, "1": {"best_val_acc": 0.97, "test_acc": 0.91},
            "2": {"best_val_acc": 0.93, "test_acc": 0.99}}
    for job, results in jobs.items():
        (tmp_path / job / ".hydra").mkdir(parents=True)
        (tmp_path / job / ".hydra" / "overrides.yaml").write_text(f"- seed={job}\n")
        (tmp_path / job / "results.json").write_text(json.dumps({"status": "ok", **results}))
    assert [r["job"] for r in collect(tmp_path)] == ["1", "2", "0"]
    for job in jobs:  # without validation figures: by test accuracy
        path = tmp_path / job / "results.json"
        path.write_text(json.dumps({"status": "ok", "test_acc": jobs[job]["test_acc"]}))
    assert [r["job"] for r in collect(tmp_path)] == ["2", "0", "1"]
