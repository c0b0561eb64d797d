"""Every experiment= preset composes to its seed's setting and trains a few steps."""

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from conftest import needs_mnist, read_results, snnrun
from snnrun.cli import config_dir
from snnrun.config import build

PRESETS = sorted(p.stem for p in (Path(config_dir()) / "experiment").glob("*.yaml"))


def composed(*overrides):
    with initialize_config_dir(config_dir=config_dir(), version_base=None):
        return compose(config_name="config", overrides=list(overrides))


def test_every_seed_has_a_preset_and_there_is_a_csnn_recipe():
    assert [p[:7] for p in PRESETS if p.startswith("seed")] == ["seed000", "seed001", "seed002", "seed003"]
    assert "csnn_best" in PRESETS


@pytest.mark.parametrize("preset, expected", [
    ("seed001_dense_tutorial5", dict(arch="FC1000-FC10", T=25, lr=5e-4, batch=128, loss="MembraneCE")),
    ("seed003_csnn_tutorial6", dict(arch="12C5-MP2-64C5-MP2-FC10", T=50, lr=1e-2, batch=128, loss="SpikeRateCE")),
    ("seed002_graded_fc100", dict(arch="FC100-FC10", T=128, lr=0.1, batch=1000, loss="MembraneSumCE")),
    ("seed000_if_synaptic_rate", dict(arch="FC500-FC500-FC10", T=32, lr=1e-3, batch=500, loss="SpikeCountCE")),
])
def test_preset_settings(preset, expected):
    cfg = composed(f"experiment={preset}")
    assert cfg.model.arch == expected["arch"] and cfg.time_steps == expected["T"]
    assert cfg.optimizer.lr == expected["lr"] and cfg.data.batch_size == expected["batch"]
    assert cfg.loss._target_.endswith(expected["loss"])
    parts = build(cfg, torch.device("cpu"))
    neuron = parts["model"].blocks[0].neuron
    if preset.startswith("seed000"):
        assert neuron.rectify and neuron.reset == "zero" and neuron.alpha == pytest.approx(0.36788, abs=1e-5)
        assert parts["model"].blocks[0].neuron.surrogate.slope == 100 and cfg.loss.normalize
    if preset.startswith("seed003"):
        assert neuron.beta.item() == 0.5 and neuron.surrogate.slope == 25
    if preset.startswith("seed002"):
        assert (neuron.decay, neuron.threshold, neuron.penalty) == (0.9, 2.0, 2.5) and cfg.optimizer.momentum == 0.5
        assert parts["encoder"].shift == -0.5 and cfg.model.init == "xavier_uniform"


def test_csnn_best_settings():
    cfg = composed("experiment=csnn_best")
    parts = build(cfg, torch.device("cpu"))
    assert parts["model"].arch == "12C5-MP2-64C5-MP2-FC10" and parts["model"].precision == "bf16"
    assert hasattr(parts["model"].blocks[0].neuron, "beta_logit")  # learned beta
    assert cfg.trainer.augment_shift == 2 and cfg.readout == "membrane" and cfg.trainer.epochs == 15


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_trains_on_synthetic_data(tmp_path, preset):
    snnrun(f"experiment={preset}", "data=synthetic", "data.num_train=128", "data.num_test=64", "data.batch_size=32",
           "time_steps=6", "trainer.max_steps=3", "hydra.run.dir=run", cwd=tmp_path)
    results = read_results(tmp_path / "run")
    assert results["steps"] == 3 and results["status"] == "ok"


@pytest.mark.slow
@needs_mnist
def test_seed003_reaches_reported_accuracy_after_150_iterations(tmp_path):
    snnrun("experiment=seed003_csnn_tutorial6", "trainer.max_steps=150", "hydra.run.dir=run", cwd=tmp_path, timeout=3600)
    assert read_results(tmp_path / "run")["test_acc"] >= 0.957
