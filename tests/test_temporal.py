"""Temporal data: sequential and permuted MNIST from the MNIST files, run without an encoder,
with T taken from the data, through training, evaluation, resume, rasters and torchrun."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import read_metrics, read_results, snnrun, write_idx_dataset
from snnrun.run.assembly import assemble
from snnrun.run.rules import ConfigError
from snnrun.data.datasets import permutation, sequential_mnist, torchvision_dataset
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory):
    return write_idx_dataset(tmp_path_factory.mktemp("mnist"), n_train=64, n_test=20)


def test_rows_and_pixels_are_the_image_read_in_order(mnist_root):
    images = torchvision_dataset("MNIST", str(mnist_root), download=False)
    rows = sequential_mnist(str(mnist_root), download=False, mode="rows")
    pixels = sequential_mnist(str(mnist_root), download=False, mode="pixels")
    assert rows.train.inputs.shape == (64, 28, 28) and pixels.test.inputs.shape == (20, 784, 1)
    assert torch.equal(rows.train.inputs, images.train.inputs[:, 0])  # step t is row t
    assert torch.equal(pixels.test.inputs[:, :, 0], images.test.inputs.flatten(1))  # step t is pixel t
    assert torch.equal(rows.train.labels, images.train.labels) and rows.meta == {}


def test_permuted_pixels_follow_one_fixed_permutation(mnist_root):
    images = torchvision_dataset("MNIST", str(mnist_root), download=False)
    a = sequential_mnist(str(mnist_root), download=False, mode="pixels", permutation_seed=3)
    b = sequential_mnist(str(mnist_root), download=False, mode="pixels", permutation_seed=3)
    order = a.meta["permutation"]
    assert sorted(order.tolist()) == list(range(784)) and not torch.equal(order, torch.arange(784))
    assert torch.equal(order, b.meta["permutation"]) and torch.equal(order, permutation(3))
    for split, image in ((a.train, images.train), (a.test, images.test)):  # the same shuffle for every image
        assert torch.equal(split.inputs[:, :, 0], image.inputs.flatten(1)[:, order])
    assert not torch.equal(permutation(4), order)


def test_time_steps_follow_the_data_and_a_conflict_is_refused(compose, mnist_root):
    base = [f"data.root={mnist_root}", "data.download=false", "data.batch_size=16", "model.arch=FC32-FC10"]
    assembly = assemble(compose("data=smnist", *base))
    assert assembly.options.time_steps == 28 and assembly.parts.encoder is None and assembly.spec.temporal
    assert assemble(compose("data=psmnist", *base)).options.time_steps == 784
    with pytest.raises(ConfigError, match="time_steps=30 is not allowed.*28 steps of every sample.*snnrun time_steps=28"):
        assemble(compose("data=smnist", *base, "time_steps=30"))
    with pytest.raises(ConfigError, match="trainer.augment_shift"):
        assemble(compose("data=smnist", *base, "trainer.augment_shift=2"))
    with pytest.raises(ConfigError, match="data.mode"):
        assemble(compose("data=smnist", *base, "data.mode=columns", "+data.modes.columns.input_shape=[28]",
                         "+data.modes.columns.time_steps=28"))


@pytest.mark.slow
@pytest.mark.e2e
def test_smnist_trains_resumes_evaluates_and_draws(mnist_root, tmp_path):
    common = ["data=smnist", f"data.root={mnist_root}", "data.download=false", "data.batch_size=16",
              "data.eval_batch_size=8", "model.arch=FC32-FC10", "readout=membrane", "trainer.eval_every=2"]
    snnrun(*common, "trainer.max_steps=4", "trainer.raster_samples=2", "hydra.run.dir=run", cwd=tmp_path)
    results = read_results(tmp_path / "run")
    assert results["status"] == "ok" and results["steps"] == 4 and set(results["firing_rates"]) == {"L1_FC32", "L2_FC10"}
    acc = EventAccumulator(str(tmp_path / "run"), size_guidance={"images": 0})
    acc.Reload()
    assert {"raster/L1_FC32", "membrane/output"} <= set(acc.Tags()["images"])
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    snnrun(*common, "trainer.max_steps=6", f"ckpt_path={last}", "hydra.run.dir=resumed", cwd=tmp_path)
    assert [r["step"] for r in read_metrics(tmp_path / "resumed")] == [6]
    snnrun(*common, "task=eval", f"ckpt_path={last}", "hydra.run.dir=ev", cwd=tmp_path)
    assert read_results(tmp_path / "ev")["test_acc"] == results["test_acc"]


@pytest.mark.slow
@pytest.mark.e2e
def test_a_psmnist_checkpoint_keeps_its_permutation(mnist_root, tmp_path):
    common = ["data=psmnist", f"data.root={mnist_root}", "data.download=false", "data.batch_size=16",
              "model.arch=FC16-FC10", "readout=membrane"]
    snnrun(*common, "trainer.max_steps=2", "hydra.run.dir=run", cwd=tmp_path)
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    assert torch.equal(torch.load(last, weights_only=True)["data"]["permutation"], permutation(0))
    snnrun(*common, "task=eval", f"ckpt_path={last}", "hydra.run.dir=same", cwd=tmp_path)
    proc = snnrun(*common, "task=eval", f"ckpt_path={last}", "data.permutation_seed=1", "hydra.run.dir=other",
                  cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "data.permutation_seed=0" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "other").exists()


@pytest.mark.e2e
def test_temporal_torchrun_equals_one_process(mnist_root, tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    args = ["data=smnist", f"data.root={mnist_root}", "data.download=false", "data.batch_size=16", "device=cpu",
            "model.arch=FC16-FC10", "trainer.max_steps=3", "trainer.raster_samples=0"]
    env = {k: v for k, v in os.environ.items() if k != "SNNRUN_DEBUG"}
    proc = subprocess.run([torchrun, "--standalone", "--nproc-per-node=2", "-m", "snnrun", *args, "hydra.run.dir=ddp"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    snnrun(*args, "hydra.run.dir=single", cwd=tmp_path)
    one, two = read_results(tmp_path / "single"), read_results(tmp_path / "ddp")
    assert two["processes"] == 2 and one["test_acc"] == two["test_acc"]
    assert abs(one["test_loss"] - two["test_loss"]) < 1e-4


@pytest.mark.e2e
@pytest.mark.parametrize("preset", ["smnist_rows_lif", "smnist_rows_rlif", "smnist_pixels_alif", "psmnist_alif",
                                    "smnist_pixels_fast", "psmnist_fast", "smnist_pixels_best", "psmnist_best"])
def test_the_smnist_presets_train(preset, mnist_root, tmp_path):
    snnrun(f"experiment={preset}", f"data.root={mnist_root}", "data.download=false", "data.batch_size=16",
           "data.val_size=8", "trainer.max_steps=2", "hydra.run.dir=run", cwd=tmp_path)
    results = read_results(tmp_path / "run")
    assert results["steps"] == 2 and "best_val_acc" in results


@pytest.mark.e2e
def test_a_sweep_over_temporal_data(mnist_root, tmp_path):
    snnrun("-m", "data=smnist", "data.mode=rows,pixels", f"data.root={mnist_root}", "data.download=false",
           "data.batch_size=32", "model.arch=FC16-FC10", "trainer.max_steps=2", "hydra.sweep.dir=sweep", cwd=tmp_path)
    summary = (tmp_path / "sweep" / "summary.md").read_text()
    assert "data.mode=rows" in summary and "data.mode=pixels" in summary and summary.count("| ok |") == 2
    assert read_results(tmp_path / "sweep" / "0")["steps"] == 2


@pytest.mark.e2e
def test_an_li_readout_gets_no_firing_rate_and_no_raster(mnist_root, tmp_path):
    snnrun("data=smnist", f"data.root={mnist_root}", "data.download=false", "data.batch_size=16", "neuron=rlif",
           "model.arch=RFC16-FC10", "model.readout_neuron=li", "loss=membrane_sum_ce", "readout=membrane",
           "trainer.max_steps=2", "trainer.raster_samples=2", "hydra.run.dir=run", cwd=tmp_path)
    assert set(read_results(tmp_path / "run")["firing_rates"]) == {"L1_RFC16"}
    acc = EventAccumulator(str(tmp_path / "run"), size_guidance={"images": 0})
    acc.Reload()
    images, scalars = set(acc.Tags()["images"]), set(acc.Tags()["scalars"])
    assert {"raster/L1_RFC16", "membrane/output"} <= images and "raster/L2_FC10" not in images
    assert "firing_rate/L1_RFC16" in scalars and "firing_rate/L2_FC10" not in scalars
