"""Hydra composition: every option of every group composes and builds its part."""

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from snnrun.cli import config_dir
from snnrun.config import ConfigError, build, check

CONF = Path(config_dir())
GROUPS = ["neuron", "surrogate", "encoder", "model", "loss", "data", "optimizer", "scheduler"]
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONF / g).glob("*.yaml"))]


def composed(*overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return compose(config_name="config", overrides=list(overrides))


def test_defaults_reproduce_seed_001():
    cfg = composed()
    assert cfg.model.arch == "FC1000-FC10" and cfg.neuron.beta == 0.95 and cfg.time_steps == 25
    assert cfg.surrogate._target_.endswith("ATan") and cfg.encoder._target_.endswith("Direct")
    assert cfg.loss._target_.endswith("MembraneCE") and cfg.optimizer.lr == 5e-4
    assert cfg.data.batch_size == 128 and cfg.trainer.epochs == 1 and cfg.seed == 0
    assert cfg.device == "auto" and cfg.task == "train" and cfg.ckpt_path is None
    for key in ("max_steps", "eval_every"):
        assert key in cfg.trainer


def test_every_group_has_the_documented_options():
    names = {g: {o for gg, o in OPTIONS if gg == g} for g in GROUPS}
    assert names["neuron"] == {"lif", "if", "synaptic", "graded"}
    assert names["surrogate"] == {"atan", "fast_sigmoid", "sigmoid", "triangular", "straight_through", "heaviside"}
    assert names["encoder"] == {"direct", "rate", "poisson", "noise", "latency"}
    assert names["model"] == {"dense", "csnn"}
    assert names["loss"] == {"membrane_ce", "spike_count_ce", "spike_rate_ce", "mse_count", "membrane_sum_ce"}
    assert names["data"] == {"mnist", "fashion_mnist", "synthetic"}
    assert names["optimizer"] == {"adam", "adamw", "sgd"}
    assert names["scheduler"] == {"none", "cosine", "onecycle"}


@pytest.mark.parametrize("group, option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_option_builds_and_runs(group, option):
    cfg = composed(f"{group}={option}", "model.arch=4C5-MP2-FC10" if group != "model" else "time_steps=4", "time_steps=4")
    parts = build(cfg, torch.device("cpu"))
    x = torch.rand(2, 1, 28, 28)
    seq = parts["encoder"](x, 4, torch.Generator().manual_seed(0))
    spk, mem = parts["model"](seq)
    loss = parts["loss"](spk, mem, torch.tensor([1, 2]))
    loss.backward()
    assert spk.shape == (4, 2, 10) and torch.isfinite(loss)
    if parts["scheduler"] is not None:
        scheduler = parts["scheduler"](parts["optimizer"], total_steps=10)
        parts["optimizer"].step()
        scheduler.step()


def test_arch_override():
    parts = build(composed("model.arch=32C3-MP2-FC128-FC10"), torch.device("cpu"))
    assert parts["model"].layer_names == ["L1_32C3_MP2", "L2_FC128", "L3_FC10"]


@pytest.mark.parametrize("override, key", [
    ("time_steps=0", "time_steps"), ("neuron.beta=1.5", "neuron.beta"), ("neuron.threshold=0", "neuron.threshold"),
    ("optimizer.lr=-1", "optimizer.lr"), ("data.batch_size=0", "data.batch_size"), ("trainer.epochs=-1", "trainer.epochs"),
    ("trainer.max_steps=-5", "trainer.max_steps"), ("surrogate.alpha=0", "surrogate.alpha"),
    ("encoder=poisson", None), ("task=eval", "ckpt_path"), ("ckpt_path=/no/such.pt", "ckpt_path"),
    ("model.arch=12X5-FC10", "model.arch"), ("model.arch=64C30-FC10", "model.arch"), ("readout=max", "readout"),
    ("model.precision=fp16", "model.precision"),
])
def test_bad_values_refused_before_work(override, key):
    extra = ["encoder.gain=-1"] if override == "encoder=poisson" else []
    key = key or "encoder.gain"
    with pytest.raises(ConfigError) as err:
        cfg = composed(override, *extra)
        check(cfg)
        build(cfg, torch.device("cpu"))
    assert err.value.key == key and "snnrun " in str(err.value)
