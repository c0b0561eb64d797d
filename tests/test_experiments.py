"""Every experiment= preset composes to its documented setting and trains a few steps."""

from pathlib import Path

import pytest
from torch import nn

from conftest import needs_mnist, read_results, snnrun
from snnrun.run.cli import config_dir
from snnrun.run.assembly import assemble

PRESETS = sorted(p.stem for p in (Path(config_dir()) / "experiment").glob("*.yaml"))
SMALL = ["data=synthetic", "data.num_train=1000", "data.num_test=16"]


TEMPORAL = ["nmnist_csnn", "psmnist_alif", "psmnist_best", "psmnist_fast", "shd_alif", "shd_lif", "smnist_pixels_alif",
            "smnist_pixels_best", "smnist_pixels_fast", "smnist_rows_lif", "smnist_rows_rlif"]  # trained on their own data in test_events / test_temporal


def test_presets_are_named_by_what_they_are():
    assert PRESETS == ["csnn_nir", "graded_fc100", "if_rate_fc500", "mnist_best", "mnist_fast", "nmnist_csnn",
                       "psmnist_alif", "psmnist_best", "psmnist_fast", "shd_alif", "shd_lif", "smnist_pixels_alif",
                       "smnist_pixels_best", "smnist_pixels_fast", "smnist_rows_lif", "smnist_rows_rlif",
                       "tutorial5_dense", "tutorial6_csnn"]


@pytest.mark.parametrize("preset, steps, neuron, readout", [
    ("smnist_rows_rlif", 28, "RLIF", "membrane"), ("shd_alif", 100, "ALIF", "membrane_max"),
    ("smnist_pixels_alif", 784, "ALIF", "membrane"), ("psmnist_alif", 784, "ALIF", "membrane"),
])
def test_recurrent_presets_have_a_recurrent_layer_and_an_li_readout(compose, preset, steps, neuron, readout):
    cfg = compose(f"experiment={preset}")
    assert cfg.time_steps == steps and cfg.neuron._target_.endswith(neuron) and cfg.readout == readout
    assert cfg.model.arch.startswith("RFC") and cfg.model.readout_neuron == "li" and cfg.data.val_size > 0
    if neuron == "ALIF":  # LSNN's and SRNN's adaptation, 180 times the threshold
        assert cfg.neuron.adaptation == 180 * cfg.neuron.threshold


def test_the_permuted_preset_is_the_pixel_preset_on_permuted_pixels(compose):
    pixels, permuted = compose("experiment=smnist_pixels_alif"), compose("experiment=psmnist_alif")
    for group in ("model", "neuron", "surrogate", "loss", "optimizer", "scheduler", "trainer"):
        assert pixels[group] == permuted[group], group
    assert pixels.data.mode == permuted.data.mode == "pixels"
    assert pixels.data.permutation_seed is None and permuted.data.permutation_seed == 0
    assert (permuted.neuron.adaptation, permuted.neuron.tau_adapt, permuted.surrogate.scale) == (180.0, 700.0, 0.3)


def test_the_long_sequence_presets_are_causal_psn_networks_within_their_budget(compose):
    for fast, best in (("smnist_pixels_fast", "smnist_pixels_best"), ("psmnist_fast", "psmnist_best")):
        f, b = compose(f"experiment={fast}"), compose(f"experiment={best}")
        for cfg, budget in ((f, 900), (b, 2700 if fast.startswith("s") else 1800)):
            assert cfg.time_steps == 784 and cfg.data.mode == "pixels" and cfg.data.val_size == 5000
            assert cfg.neuron._target_.endswith("PSN") and cfg.neuron.window == 784  # causal: no step hears the future
            assert cfg.trainer.max_time == budget and cfg.readout == "membrane"
        assert (f.data.permutation_seed, b.data.permutation_seed) == ((0, 0) if fast.startswith("p") else (None, None))
        assert f.model == b.model and f.optimizer == b.optimizer and (f.trainer.max_steps, b.trainer.max_steps) == (1600, None)
        assert b.trainer.epochs == (5 if fast.startswith("s") else 3) and b.trainer.eval_every is None
    pixels, permuted = compose("experiment=smnist_pixels_fast"), compose("experiment=psmnist_fast")
    for group in ("model", "neuron", "surrogate", "loss", "optimizer", "scheduler", "trainer"):
        assert pixels[group] == permuted[group], group


@pytest.mark.parametrize("preset, data, steps", [("smnist_rows_lif", "smnist", 28), ("nmnist_csnn", "nmnist", 20),
                                                 ("shd_lif", "shd", 100)])
def test_temporal_presets_take_t_from_their_data(compose, preset, data, steps):
    cfg = compose(f"experiment={preset}")
    assert cfg.data._target_ == compose(f"data={data}").data._target_ and cfg.time_steps == steps
    assert cfg.data.temporal and cfg.readout == "membrane" and cfg.neuron.learn_beta


@pytest.mark.parametrize("preset, expected", [
    ("tutorial5_dense", dict(arch="FC1000-FC10", T=25, lr=5e-4, batch=128, loss="MembraneCE")),
    ("tutorial6_csnn", dict(arch="12C5-MP2-64C5-MP2-FC10", T=50, lr=1e-2, batch=128, loss="SpikeRateCE")),
    ("graded_fc100", dict(arch="FC100-FC10", T=128, lr=0.1, batch=1000, loss="MembraneSumCE")),
    ("if_rate_fc500", dict(arch="FC500-FC500-FC10", T=32, lr=1e-3, batch=500, loss="SpikeCountCE")),
])
def test_preset_settings(compose, preset, expected):
    cfg = compose(f"experiment={preset}", *SMALL)
    assert cfg.model.arch == expected["arch"] and cfg.time_steps == expected["T"]
    assert cfg.optimizer.lr == expected["lr"] and cfg.data.batch_size == expected["batch"]
    assert cfg.loss._target_.endswith(expected["loss"])
    parts = assemble(cfg).parts
    neuron = parts.model.blocks[0].neuron
    if preset == "if_rate_fc500":
        assert neuron.rectify and neuron.reset == "zero" and neuron.alpha == pytest.approx(0.36788, abs=1e-5)
        assert neuron.surrogate.slope == 100 and cfg.loss.normalize
    if preset == "tutorial6_csnn":
        assert neuron.beta.item() == 0.5 and neuron.surrogate.slope == 25
    if preset == "graded_fc100":
        assert (neuron.decay, neuron.threshold, neuron.penalty) == (0.9, 2.0, 2.5) and cfg.optimizer.momentum == 0.5
        assert parts.encoder.shift == -0.5 and cfg.model.init == "xavier_uniform"


@pytest.mark.parametrize("preset, arch, epochs", [("mnist_fast", "16C5-MP2-BN-32C5-MP2-BN-FC10", 3),
                                                  ("mnist_best", "32C5-MP2-BN-64C5-MP2-BN-FC10", 12)])
def test_time_to_accuracy_presets(compose, preset, arch, epochs):
    """Few steps, batch norm over T*B, fp32 (bf16 is emulated, and slow, on CPUs without bf16
    instructions), rasters only at the end."""
    cfg = compose(f"experiment={preset}", *SMALL)
    model = assemble(cfg).parts.model
    assert model.arch == arch and cfg.time_steps == 2 and cfg.trainer.epochs == epochs
    assert model.precision == "fp32" and cfg.trainer.figures == "last" and cfg.readout == "membrane"
    assert cfg.trainer.curve_points == 0  # no quick evaluations in a race against the clock
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 2


@pytest.mark.e2e
@pytest.mark.parametrize("preset", [p for p in PRESETS if p not in TEMPORAL])
def test_preset_trains_on_synthetic_data(tmp_path, preset):
    snnrun(f"experiment={preset}", "data=synthetic", "data.num_train=128", "data.num_test=64", "data.batch_size=32",
           "data.val_size=32", "time_steps=6", "trainer.max_steps=3", "hydra.run.dir=run", cwd=tmp_path)
    results = read_results(tmp_path / "run")
    assert results["steps"] == 3 and results["status"] == "ok"


@pytest.mark.e2e
@pytest.mark.slow
@needs_mnist
def test_tutorial6_csnn_reaches_reported_accuracy_after_150_iterations(tmp_path):
    """The tutorial reports 95.7 % from one run. One seed's figure moves by a few tenths of a point
    with the torch build's numerics (seed 0: 96.14 % on an earlier build, 95.63 % on torch 2.14.1,
    the same code), so the check allows half a point below the tutorial's figure."""
    snnrun("experiment=tutorial6_csnn", "trainer.max_steps=150", "hydra.run.dir=run", cwd=tmp_path, timeout=3600)
    assert read_results(tmp_path / "run")["test_acc"] >= 0.957 - 0.005


@pytest.mark.e2e
@pytest.mark.slow
@needs_mnist
@pytest.mark.parametrize("preset", ["smnist_pixels_fast", "psmnist_fast", "smnist_pixels_best", "psmnist_best"])
def test_the_long_sequence_presets_train_two_steps_on_real_mnist(tmp_path, preset):
    """784 steps of real MNIST pixels through the preset's network, two updates, then a full evaluation."""
    snnrun(f"experiment={preset}", "data.download=false", "data.eval_batch_size=2500", "trainer.max_steps=2",
           "hydra.run.dir=run", cwd=tmp_path, timeout=1200)
    results = read_results(tmp_path / "run")
    assert results["status"] == "ok" and results["steps"] == 2 and results["best_selected_on"] == "val"
    assert set(results["firing_rates"]) == {"L1_FC64", "L2_FC64", "L3_FC10"}


def test_csnn_nir_exports_exactly(compose):
    pytest.importorskip("nir")
    from snnrun.interop import nir_export

    assert compose("experiment=csnn_nir").data.val_size == 5000  # validation-selected best.pt
    cfg = compose("experiment=csnn_nir", *SMALL, "data.val_size=100")
    model = assemble(cfg).parts.model
    assert model.arch == "12C5-AP2-64C5-AP2-FC10"
    graph, approximations = nir_export.export(model, precision=cfg.model.precision)
    assert approximations == [] and len(graph.nodes) == 11  # input, 2 x (conv, pool, neuron), flatten, affine, neuron, output
