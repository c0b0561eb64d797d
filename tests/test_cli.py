"""End-to-end: the real ``snnrun`` console script in a subprocess, its run folder read back."""

import json

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import FAST, needs_mnist, read_metrics, read_results, snnrun

pytestmark = pytest.mark.e2e  # every test here runs the snnrun command in a subprocess


def events(run_dir):
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0, "histograms": 0, "tensors": 0})
    acc.Reload()
    return acc


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One short synthetic run shared by the tests that inspect its folder."""
    cwd = tmp_path_factory.mktemp("cwd")
    snnrun(*FAST, "model.arch=4C5-MP2-FC10", "trainer.max_steps=8", "trainer.eval_every=4",
           "trainer.log_every=2", "trainer.raster_samples=2", "hydra.run.dir=run", cwd=cwd)
    return cwd / "run"


def test_run_folder_contents(trained):
    results = read_results(trained)
    assert results["status"] == "ok" and results["steps"] == 8
    for key in ("test_acc", "test_loss", "best_test_acc", "epochs", "train_samples_per_s", "wall_s"):
        assert isinstance(results[key], float), key
    assert 0 <= results["test_acc"] <= 1 and results["best_test_acc"] >= results["test_acc"]
    # auto: the FC layer on numba (Triton where device=auto finds a GPU), the conv layer's channels-last current on torch
    kernels = "triton" if torch.cuda.is_available() else "numba"
    assert results["backend"] == sorted([kernels, "torch"])
    assert f"neuron backend: {', '.join(sorted([kernels, 'torch']))}" in (trained / "snnrun.log").read_text()
    assert set(results["firing_rates"]) == {"L1_4C5_MP2", "L2_FC10"}
    assert set(results["synops"]) == {"L1_4C5_MP2", "L2_FC10"}  # direct input: MACs into L1, spikes: ACs into L2
    assert results["synops"]["L1_4C5_MP2"]["mac"] == 4 * 24 * 24 * 25 and results["synops"]["L2_FC10"]["mac"] == 0
    # by hand: L1 (4 maps of 12x12 after pooling = 576 neurons) fires at its measured rate for T = 8 steps,
    # and each spike reaches the 10 units of FC10: 0.9 pJ per AC; the static image costs 57,600 MACs once
    rate = results["firing_rates"]["L1_4C5_MP2"]
    assert results["acs"] == pytest.approx(rate * 576 * 8 * 10, rel=1e-6)
    assert results["energy_pj"] == pytest.approx(rate * 576 * 8 * 10 * 0.9 + 57_600 * 4.6, rel=1e-6)
    assert results["ann_macs"] == 57_600 + 576 * 10 and results["ann_energy_pj"] == pytest.approx(63_360 * 4.6)
    records = read_metrics(trained)
    assert [r["step"] for r in records] == [4, 8]
    for r in records:
        assert {"epoch", "train_loss", "test_loss", "test_acc", "firing_rates", "train_samples_per_s"} <= set(r)
        assert r["train_samples_per_s"] > 0
    assert (trained / ".hydra" / "config.yaml").is_file() and (trained / "snnrun.log").is_file()
    assert "test_acc" in (trained / "snnrun.log").read_text()
    for name in ("last", "best"):
        ckpt = torch.load(trained / "checkpoints" / f"{name}.pt", weights_only=True)
        assert ckpt["arch"] == "4C5-MP2-FC10" and {"model", "optimizer", "rng", "config"} <= set(ckpt)
    assert torch.load(trained / "checkpoints" / "last.pt", weights_only=True)["progress"]["step"] == 8


def test_tensorboard_events(trained):
    acc = events(trained)
    tags = acc.Tags()
    for tag in ("train/loss", "train/acc", "lr", "test/loss", "test/acc", "throughput/train_samples_per_s",
                "firing_rate/L1_4C5_MP2", "firing_rate/L2_FC10", "hparams/test_acc", "synops/L2_FC10/ac",
                "energy/energy_pj", "energy/ann_energy_pj"):
        assert tag in tags["scalars"], tag
    assert [e.step for e in acc.Scalars("test/acc")] == [4, 8]
    assert len(acc.Scalars("train/loss")) == 4
    assert any(t.startswith("weights/") for t in tags["histograms"])
    assert {"raster/L1_4C5_MP2", "raster/L2_FC10", "membrane/output"} <= set(tags["images"])
    for tag in ("raster/L2_FC10", "membrane/output"):  # matplotlib figures, rendered as PNG
        image = acc.Images(tag)[-1]
        assert image.encoded_image_string.startswith(b"\x89PNG") and image.width > 300 and image.height > 200
    hp = acc.PluginTagToContent("hparams")
    assert "_hparams_/experiment" in hp and "_hparams_/session_start_info" in hp
    assert b"neuron.beta" in hp["_hparams_/session_start_info"]
    assert b"hparams/best_test_acc" in hp["_hparams_/experiment"]
    assert session_status(hp) == "STATUS_SUCCESS"
    assert not any(p.is_dir() and p.name[0].isdigit() for p in trained.iterdir())  # no extra hparams run folder


def session_status(hparams_content: dict) -> str:
    from tensorboard.plugins.hparams.api_pb2 import Status
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    data = HParamsPluginData.FromString(hparams_content["_hparams_/session_end_info"])
    return Status.Name(data.session_end_info.status)


@pytest.mark.parametrize("status, expected", [("failed", "STATUS_FAILURE"), ("interrupted", "STATUS_UNKNOWN")])
def test_the_hparams_dashboard_shows_how_a_run_ended(tmp_path, status, expected):
    """A failed or interrupted run is not listed as a success; a run still going has no end yet."""
    from snnrun.run.logger import RunLogger

    logger = RunLogger(tmp_path, {"neuron.beta": 0.9})
    logger.writer.flush()
    assert "_hparams_/session_end_info" not in events(tmp_path).PluginTagToContent("hparams")  # running
    logger.finish({"status": status, "steps": 3})
    assert session_status(events(tmp_path).PluginTagToContent("hparams")) == expected


def test_figures_last_draws_the_rasters_only_at_the_last_evaluation(tmp_path):
    snnrun(*FAST, "trainer.max_steps=6", "trainer.eval_every=2", "trainer.raster_samples=2", "trainer.figures=last",
           "hydra.run.dir=run", cwd=tmp_path)
    acc = events(tmp_path / "run")
    assert [e.step for e in acc.Scalars("test/acc")] == [2, 4, 6]
    assert [image.step for image in acc.Images("membrane/output")] == [6]


def test_resume_continues_from_checkpoint(trained, tmp_path):
    """8 steps, then a resume to 12: the same network and figures as 12 steps in one go."""
    common = [*FAST, "model.arch=4C5-MP2-FC10", "trainer.max_steps=12", "trainer.eval_every=4", "trainer.log_every=2",
              "trainer.raster_samples=2"]
    snnrun(*common, f"ckpt_path={trained / 'checkpoints' / 'last.pt'}", "hydra.run.dir=resumed", cwd=tmp_path)
    snnrun(*common, "hydra.run.dir=straight", cwd=tmp_path)
    assert [r["step"] for r in read_metrics(tmp_path / "resumed")] == [12]
    resumed, straight = read_results(tmp_path / "resumed"), read_results(tmp_path / "straight")
    assert resumed["steps"] == 12
    for key in ("test_acc", "test_loss", "best_test_acc", "firing_rates", "acs", "energy_pj"):
        assert resumed[key] == straight[key], key
    a, b = (torch.load(d / "checkpoints" / "last.pt", weights_only=True)["model"] for d in (tmp_path / "resumed",
                                                                                           tmp_path / "straight"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_eval_task_reproduces_final_accuracy(trained, tmp_path):
    snnrun(*FAST, "model.arch=4C5-MP2-FC10", "task=eval", f"ckpt_path={trained / 'checkpoints' / 'last.pt'}",
           "hydra.run.dir=ev", cwd=tmp_path)
    results = read_results(tmp_path / "ev")
    assert results["task"] == "eval" and results["steps"] == 8
    assert results["test_acc"] == read_results(trained)["test_acc"]
    assert results["test_loss"] == pytest.approx(read_results(trained)["test_loss"], rel=1e-6)


def test_default_output_folder_layout(tmp_path):
    snnrun(*FAST, "trainer.max_steps=2", cwd=tmp_path)
    (day,) = (tmp_path / "outputs").iterdir()
    (run,) = day.iterdir()
    assert len(day.name) == 10 and (run / "results.json").is_file()


def test_synthetic_training_learns(tmp_path):
    snnrun(*FAST, "trainer.epochs=3", "optimizer.lr=2e-3", "hydra.run.dir=run", cwd=tmp_path)
    assert read_results(tmp_path / "run")["test_acc"] > 0.5  # chance is 0.1


def test_bf16_trains(tmp_path):
    snnrun(*FAST, "model.arch=4C5-MP2-FC10", "trainer.epochs=2", "optimizer.lr=2e-3", "model.precision=bf16",
           "hydra.run.dir=run", cwd=tmp_path)
    results = read_results(tmp_path / "run")
    assert results["status"] == "ok" and results["test_acc"] > 0.3  # chance is 0.1
    warned = "bfloat16 instructions" in (tmp_path / "run" / "snnrun.log").read_text()
    assert warned == (not torch.ops.mkldnn._is_mkldnn_bf16_supported())  # emulated bf16 is said, not hidden


def test_the_step_by_step_neuron_trains_the_same_network_as_the_fused_op(tmp_path):
    """neuron.fused=false runs lif_step T times under autograd; the fused op computes the same
    forward and backward, so both runs agree up to float32 summation order."""
    for fused in ("true", "false"):
        snnrun(*FAST, "model.arch=4C5-MP2-FC10", "trainer.max_steps=6", "trainer.eval_every=3", "optimizer.lr=2e-3",
               f"neuron.fused={fused}", f"hydra.run.dir=fused_{fused}", cwd=tmp_path)
    fused, stepwise = read_metrics(tmp_path / "fused_true"), read_metrics(tmp_path / "fused_false")
    assert [r["step"] for r in fused] == [r["step"] for r in stepwise] == [3, 6]
    for a, b in zip(fused, stepwise):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["test_loss"] == pytest.approx(b["test_loss"], rel=1e-4) and abs(a["test_acc"] - b["test_acc"]) <= 1 / 128
    a, b = (torch.load(tmp_path / d / "checkpoints" / "last.pt", weights_only=True)["model"]
            for d in ("fused_true", "fused_false"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-5)


@pytest.mark.slow
@needs_mnist
def test_csnn_on_real_mnist(tmp_path):
    snnrun("model=csnn", "surrogate=fast_sigmoid", "trainer.max_steps=30", "optimizer.lr=2e-3",
           "hydra.run.dir=run", cwd=tmp_path, timeout=900)
    results = read_results(tmp_path / "run")
    assert results["steps"] == 30 and results["test_acc"] > 0.5
    assert set(results["firing_rates"]) == {"L1_12C5_MP2", "L2_64C5_MP2", "L3_FC10"}
    assert json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 30
