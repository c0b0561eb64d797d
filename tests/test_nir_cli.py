"""task=export and nir_path= from the command line: the snnrun console script in a subprocess."""

import json

import numpy as np
import pytest
import torch

from conftest import FAST, read_results, snnrun

pytest.importorskip("nir")
pytestmark = pytest.mark.e2e

DATA = [a for a in FAST if not a.startswith("model.arch")]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A zero-reset network trained for a few steps, and its export next to the checkpoint."""
    cwd = tmp_path_factory.mktemp("cwd")
    snnrun(*FAST, "model.arch=4C5-AP2-FC10", "neuron.reset=zero", "trainer.max_steps=6", "hydra.run.dir=run", cwd=cwd)
    proc = snnrun("task=export", "ckpt_path=run/checkpoints/best.pt", "hydra.run.dir=export", cwd=cwd)
    assert "exact" in proc.stderr + proc.stdout or (cwd / "export" / "snnrun.log").read_text().count("exact")
    return cwd


def test_export_writes_model_nir_next_to_the_checkpoint(exported):
    nir = pytest.importorskip("nir")
    results = read_results(exported / "export")
    assert results["status"] == "ok" and results["approximations"] == []
    assert results["path"].endswith("run/checkpoints/model.nir")
    graph = nir.read(exported / "run" / "checkpoints" / "model.nir")
    info = json.loads(str(graph.metadata["snnrun"]))
    assert info["dt"] == 1e-4 and info["config"]["model"]["arch"] == "4C5-AP2-FC10" and info["time_steps"] == 8


def test_eval_from_the_graph_equals_eval_from_the_checkpoint(exported):
    snnrun(*DATA, "task=eval", "ckpt_path=run/checkpoints/best.pt", "model.arch=4C5-AP2-FC10", "neuron.reset=zero",
           "hydra.run.dir=eval_ckpt", cwd=exported)
    snnrun(*DATA, "task=eval", "nir_path=run/checkpoints/model.nir", "hydra.run.dir=eval_nir", cwd=exported)
    a, b = read_results(exported / "eval_ckpt"), read_results(exported / "eval_nir")
    assert "at dt=0.0001 s (the graph's own, from its snnrun metadata)" in (exported / "eval_nir" / "snnrun.log").read_text()
    assert b["nir_path"] == "run/checkpoints/model.nir"
    assert (a["test_acc"], a["test_loss"], a["firing_rates"]) == (b["test_acc"], b["test_loss"], b["firing_rates"])


def test_training_starts_from_a_graph_and_exports_again(exported):
    snnrun(*DATA, "nir_path=run/checkpoints/model.nir", "trainer.max_steps=2", "hydra.run.dir=tuned", cwd=exported)
    results = read_results(exported / "tuned")
    assert results["status"] == "ok" and results["steps"] == 2
    snnrun("task=export", "ckpt_path=tuned/checkpoints/last.pt", "export.path=again.nir", "hydra.run.dir=export2",
           cwd=exported)
    nir = pytest.importorskip("nir")
    again, first = nir.read(exported / "again.nir"), nir.read(exported / "run" / "checkpoints" / "model.nir")
    assert set(again.nodes) == set(first.nodes)
    tuned = torch.load(exported / "tuned" / "checkpoints" / "last.pt", weights_only=True)["model"]
    (fc,) = [w for k, w in tuned.items() if k.endswith("weight") and w.dim() == 2]  # FC10's, after the tuning
    assert np.array_equal(again.nodes["L2_FC10.affine"].weight, fc.numpy())
    assert not np.array_equal(first.nodes["L2_FC10.affine"].weight, fc.numpy())  # the graph it started from


@pytest.mark.parametrize("args, message", [
    (["task=export", "ckpt_path=run/checkpoints/best.pt", "export.dt=0"], "export.dt=0 is not allowed"),
    (["task=eval", "nir_path=notes.txt"], "not a readable NIR file"),
    (["task=eval", "nir_path=run/checkpoints/model.nir", "data.image_size=12"], "a graph for this dataset's [1, 12, 12] inputs"),
    (["task=eval", "nir_path=run/checkpoints/model.nir", "data.num_classes=5"], "one output per class of this dataset (5"),
    (["task=export"], "a checkpoint file when task=export"),
])
def test_bad_input_is_refused_before_work(exported, args, message):
    (exported / "notes.txt").write_text("not a graph")
    proc = snnrun(*DATA, *args, "hydra.run.dir=refused", cwd=exported, check=False)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert not (exported / "refused").exists()


def test_an_inexact_network_is_refused_then_exported_approximately(exported):
    snnrun(*FAST, "trainer.max_steps=1", "hydra.run.dir=subtract", cwd=exported)  # reset=subtract, the default
    proc = snnrun("task=export", "ckpt_path=subtract/checkpoints/last.pt", "hydra.run.dir=refused2", cwd=exported,
                  check=False)
    assert proc.returncode == 2 and "neuron.reset=zero" in proc.stderr and "export.approximate=true" in proc.stderr
    assert not (exported / "refused2").exists() and not (exported / "subtract" / "checkpoints" / "model.nir").exists()
    snnrun("task=export", "ckpt_path=subtract/checkpoints/last.pt", "export.approximate=true", "hydra.run.dir=approx",
           cwd=exported)
    results = read_results(exported / "approx")
    assert len(results["approximations"]) == 2 and "reset=subtract" in results["approximations"][0]
