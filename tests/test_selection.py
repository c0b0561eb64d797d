"""Honest model selection: a fixed validation split chooses best.pt; without one, results say test chose it."""

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import FAST, read_metrics, read_results, snnrun
from snnrun.run.assembly import assemble
from snnrun.run.rules import ConfigError
from snnrun.data.datasets import hold_out, synthetic

SMALL = ["data=synthetic", "data.num_train=200", "data.num_test=40", "data.batch_size=20", "time_steps=4",
         "model.arch=FC16-FC10"]


def test_the_validation_split_is_fixed_disjoint_and_the_same_for_every_seed(compose):
    data = synthetic(num_train=200, num_test=10)
    held = hold_out(data, 50)
    assert len(held.train) == 150 and len(held.val) == 50 and held.test is data.test
    rows = {tuple(x.flatten().tolist()) for x in data.train.inputs}
    assert len(rows) == 200  # every synthetic image differs, so membership identifies a sample
    train_rows = {tuple(x.flatten().tolist()) for x in held.train.read(slice(None))}
    val_rows = {tuple(x.flatten().tolist()) for x in held.val.read(slice(None))}
    assert train_rows.isdisjoint(val_rows) and train_rows | val_rows == rows
    again = hold_out(data, 50)
    assert torch.equal(again.val.rows, held.val.rows) and held.val.inputs is data.train.inputs
    assert torch.equal(again.val.read(slice(None)), held.val.read(slice(None))) and torch.equal(again.train.labels, held.train.labels)
    a = assemble(compose(*SMALL, "data.val_size=50", "seed=0")).data
    b = assemble(compose(*SMALL, "data.val_size=50", "seed=7")).data
    assert torch.equal(a.val.read(slice(None)), b.val.read(slice(None)))
    assert torch.equal(a.train.read(slice(None)), b.train.read(slice(None)))


@pytest.mark.parametrize("size", [-1, 200, 1.5])
def test_a_bad_validation_size_is_refused(compose, size):
    with pytest.raises(ConfigError, match="data.val_size"):
        assemble(compose(*SMALL, f"data.val_size={size}"))


@pytest.mark.e2e
def test_best_is_chosen_on_validation_and_resume_chooses_the_same(tmp_path):
    common = [*FAST, "data.val_size=64", "trainer.eval_every=2", "optimizer.lr=3e-3"]
    snnrun(*common, "trainer.max_steps=12", "hydra.run.dir=straight", cwd=tmp_path)
    results = read_results(tmp_path / "straight")
    records = read_metrics(tmp_path / "straight")
    best = max(records, key=lambda r: (r["val_acc"], -r["step"]))  # the first evaluation with the best val_acc
    assert results["best_selected_on"] == "val" and results["best_step"] == best["step"]
    assert results["best_val_acc"] == best["val_acc"] and results["test_acc_at_best_val"] == best["test_acc"]
    assert torch.load(tmp_path / "straight/checkpoints/best.pt", weights_only=True)["progress"]["step"] == best["step"]
    assert records[-1]["best_val_acc"] == best["val_acc"] and records[-1]["test_acc_at_best_val"] == best["test_acc"]
    acc = EventAccumulator(str(tmp_path / "straight"))
    acc.Reload()
    assert {"val/acc", "val/loss", "hparams/best_val_acc", "hparams/test_acc_at_best_val"} <= set(acc.Tags()["scalars"])

    snnrun(*common, "trainer.max_steps=6", "hydra.run.dir=first", cwd=tmp_path)
    snnrun(*common, "trainer.max_steps=12", f"ckpt_path={tmp_path / 'first/checkpoints/last.pt'}",
           "hydra.run.dir=second", cwd=tmp_path)
    resumed = read_results(tmp_path / "second")
    for key in ("best_step", "best_val_acc", "test_acc_at_best_val", "test_acc"):
        assert resumed[key] == results[key], key


@pytest.mark.e2e
def test_without_validation_results_say_test_chose_the_best(tmp_path):
    snnrun(*FAST, "trainer.max_steps=4", "trainer.eval_every=2", "hydra.run.dir=run", cwd=tmp_path)
    results = read_results(tmp_path / "run")
    assert results["best_selected_on"] == "test" and "best_val_acc" not in results
    assert results["best_test_acc"] == max(r["test_acc"] for r in read_metrics(tmp_path / "run"))


@pytest.mark.e2e
def test_each_run_records_when_it_first_reached_each_accuracy(tmp_path):
    """time_to_acc: for 0.98, 0.99 and 0.995, the step and wall seconds of the first evaluation at
    or above it; targets never reached are absent."""
    snnrun(*FAST, "trainer.max_steps=24", "trainer.eval_every=2", "optimizer.lr=3e-3", "hydra.run.dir=run",
           cwd=tmp_path)
    results, records = read_results(tmp_path / "run"), read_metrics(tmp_path / "run")
    reached = results["time_to_acc"]
    assert "0.98" in reached  # synthetic data is easy: the run gets there
    for target in ("0.98", "0.99", "0.995"):
        first = next((r for r in records if r["test_acc"] >= float(target)), None)
        if first is None:
            assert target not in reached
        else:
            assert reached[target]["step"] == first["step"] and 0 < reached[target]["wall_s"] <= results["wall_s"]
            assert reached[target]["wall_s"] == first["wall_s"]  # the clock of the evaluation that reached it
    evaluations = [r for r in records if "time_to_acc" in r]
    for i, record in enumerate(evaluations):  # each record: the targets reached so far, at their first evaluation
        so_far = {t: next(e for e in evaluations[:i + 1] if e["test_acc"] >= float(t)) for t in ("0.98", "0.99", "0.995")
                  if any(e["test_acc"] >= float(t) for e in evaluations[:i + 1])}
        assert {t: v["step"] for t, v in record["time_to_acc"].items()} == {t: e["step"] for t, e in so_far.items()}
        assert {t: v["wall_s"] for t, v in record["time_to_acc"].items()} == {t: e["wall_s"] for t, e in so_far.items()}
    assert len(evaluations) == 12 and evaluations[-1]["time_to_acc"] == reached
    clock = [r["wall_s"] for r in records]  # every evaluation's time since training started: a curve over time
    assert clock == sorted(clock) and 0 < clock[0] and clock[-1] <= results["wall_s"]
