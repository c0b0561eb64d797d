"""Curves, not dots: quick evaluations on a fixed subset fill in between sparse full evaluations."""

import pytest
import torch

from conftest import FAST, read_metrics, read_results, scalars, snnrun
from snnrun.data.datasets import fixed_subset, synthetic


def test_the_subset_is_fixed_sorted_and_never_larger_than_the_split():
    split = synthetic(num_train=10, num_test=300).test
    a, b = fixed_subset(split, 50), fixed_subset(split, 50)
    assert len(a) == 50 and torch.equal(a.read(slice(None)), b.read(slice(None))) and torch.equal(a.labels, b.labels)
    rows = [tuple(x.flatten().tolist()) for x in split.inputs]
    positions = [rows.index(tuple(x.flatten().tolist())) for x in a.read(slice(None))]
    assert positions == sorted(positions) and len(set(positions)) == 50  # kept in the split's order, no repeats
    assert fixed_subset(split, 300) is split and fixed_subset(split, 1000) is split


@pytest.mark.e2e
def test_a_one_epoch_run_draws_a_curve_and_trains_exactly_as_without_it(tmp_path):
    """256 training samples in batches of 32: one epoch is 8 steps and one full evaluation, so
    with curve_points=4 quick evaluations of 50 test samples come at steps 2, 4 and 6."""
    common = [*FAST, "trainer.epochs=1", "optimizer.lr=3e-3"]
    snnrun(*common, "trainer.curve_points=4", "trainer.curve_samples=50", "hydra.run.dir=curve", cwd=tmp_path)
    snnrun(*common, "trainer.curve_points=0", "hydra.run.dir=dots", cwd=tmp_path)
    curve, dots = scalars(tmp_path / "curve"), scalars(tmp_path / "dots")
    assert [step for step, _ in curve["curve/test_acc"]] == [2, 4, 6]
    assert [step for step, _ in curve["curve/test_loss"]] == [2, 4, 6]
    assert all(v * 50 == pytest.approx(round(v * 50), abs=1e-4) for _, v in curve["curve/test_acc"])  # k of 50
    assert not any(tag.startswith("curve/") for tag in dots)
    assert [r["step"] for r in read_metrics(tmp_path / "curve")] == [8]  # the full evaluations are unchanged
    assert read_results(tmp_path / "curve")["test_acc"] == read_results(tmp_path / "dots")["test_acc"]
    weights = [torch.load(tmp_path / run / "checkpoints/last.pt", weights_only=True)["model"] for run in ("curve", "dots")]
    for name, value in weights[0].items():
        assert torch.equal(value, weights[1][name]), name  # a quick evaluation draws nothing from training's RNG


@pytest.mark.e2e
def test_with_a_validation_split_the_curve_follows_validation_and_frequent_evaluations_need_none(tmp_path):
    snnrun(*FAST, "data.val_size=64", "trainer.max_steps=6", "trainer.curve_points=3", "hydra.run.dir=val",
           cwd=tmp_path)
    tags = scalars(tmp_path / "val")
    assert [step for step, _ in tags["curve/val_acc"]] == [2, 4] and "curve/test_acc" not in tags
    snnrun(*FAST, "trainer.max_steps=6", "trainer.eval_every=2", "trainer.curve_points=3", "hydra.run.dir=dense",
           cwd=tmp_path)  # three full evaluations already make three points
    assert not any(tag.startswith("curve/") for tag in scalars(tmp_path / "dense"))
