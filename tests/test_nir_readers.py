"""export.reader profiles: each network exported for a reader, read back from the file by that
reader's own importer, unpatched (the `nir-readers` extra), and run on a real MNIST batch (generated
input where MNIST is absent), against NIR's
definition of the same file (snnrun's simulation of it); refusals; task=check_nir end to end; the
compatibility table in docs/nir.md is the one these tests establish."""

import re
from functools import partial
from pathlib import Path

import pytest
import torch

nir = pytest.importorskip("nir")

from snnrun.interop import nir_check, nir_export, nir_import  # noqa: E402
from snnrun.interop.nir_common import NIRError  # noqa: E402
from snnrun.run.rules import ConfigError, check  # noqa: E402
from snnrun.core.architectures import SpikingNetwork  # noqa: E402
from snnrun.core.neurons import LIF  # noqa: E402
from tests.conftest import HAS_MNIST, SHARED_DATA, read_results, snnrun  # noqa: E402
from tests.test_nir import NETWORKS, all_spikes, build, drive, rebuild  # noqa: E402

DOCS = Path(__file__).resolve().parents[1] / "docs" / "nir.md"
# what each reader computes of each network, as these tests find it: exact, or refused (with why)
OUTCOME = {
    "snntorch": {name: "exact" for name in NETWORKS},
    "norse": {name: "exact" for name in NETWORKS},
    "sinabs": {"dense_lif": "approximate", "csnn_ap_lif": "refused", "rlif_all_to_all_li": "refused",
               "rlif_one_to_one": "refused", "rlif_image": "refused", "synaptic": "refused", "if": "approximate", "if_li": "refused",
               "padded_strided": "refused"},
}
MODULES = {"snntorch": "snntorch", "norse": "norse", "sinabs": "sinabs"}


def exported(name, reader, tmp_path, approximate=False):
    net = build(name)
    graph, approximations = nir_export.export(net, reader=reader, approximate=approximate)
    path = tmp_path / f"{name}.{reader}.nir"
    nir_export.write(graph, path)
    return net, path, approximations


def mnist_batch(shape, samples: int = 6) -> torch.Tensor:
    """A real MNIST test batch as the network's input at each step: [1, 28, 28] images repeated over 20
    steps (direct coding), or for [28] inputs the image's 28 rows, one per step."""
    from torchvision.datasets import MNIST

    images = MNIST(str(SHARED_DATA), train=False, download=False).data[:samples].float() / 255
    if len(shape) == 1:
        return images.transpose(0, 1) * 3.0  # [28 steps, B, 28 pixels]
    return images[:, None].unsqueeze(0).expand(20, samples, 1, 28, 28) * 1.5


def reference(path, net):
    """NIR's definition of the file: the snnrun network it describes, on the drive of ``net``."""
    again = rebuild(nir_import.read(path))
    x = mnist_batch(net.input_shape) if HAS_MNIST else drive(net.input_shape)
    spikes, membrane = all_spikes(again, x)
    names = [n for n in again.layer_names if n in again.spiking_layers]
    fires = again.readout_neuron != "li"
    kept = [s for n, s in zip(again.layer_names, spikes) if n in names]
    if not fires:
        names.append(again.layer_names[-1])
        kept.append(torch.zeros(0))
    return x, nir_check.Trace(kept, membrane), names, fires


@pytest.mark.parametrize("reader", ["snntorch", "norse", "sinabs"])
@pytest.mark.parametrize("name", list(NETWORKS))
def test_each_reader_computes_the_profiled_graph_as_nir_defines_it(name, reader, tmp_path):
    pytest.importorskip(MODULES[reader])
    outcome = OUTCOME[reader][name]
    if outcome == "refused":
        with pytest.raises(NIRError, match=f"export.reader={reader}: L"):
            nir_export.export(build(name), reader=reader, approximate=True)
        return
    if outcome == "approximate":
        with pytest.raises(NIRError, match="no exact graph for this reader"):
            nir_export.export(build(name), reader=reader)
    net, path, approximations = exported(name, reader, tmp_path, approximate=outcome == "approximate")
    assert (approximations != []) == (outcome == "approximate")
    x, ours, names, fires = reference(path, net)
    graph = nir.read(path)  # the reader gets the file, as its users do
    dt = nir_import.read(path).dt
    theirs = nir_check.run_reader(reader, nir_check.import_graph(reader, graph, dt, x.shape[0]), x)
    report = nir_check.compare(ours, names, theirs, fires)
    if outcome == "exact":
        assert report["identical"], report
        assert sum(layer["reference_spikes"] for layer in report["layers"]) > 0
        if fires:
            assert report["output"]["differing"] == 0
        else:
            assert report["output"]["same_class"]
        original, _ = all_spikes(net, x)  # and the graph is the trained network: its spikes, layer by layer
        kept = [s for n, s in zip(net.layer_names, original) if n in net.spiking_layers]
        for layer, spikes in zip(report["layers"], kept):
            assert layer["reference_spikes"] == int(spikes.sum())
    else:
        assert not report["identical"] and report["first_parting"] == names[0]


def test_refusals_name_the_reader_the_layer_and_why():
    net = SpikingNetwork("FC64-FC10", (28,), 10, neuron=partial(LIF, beta=0.9, reset="zero", per_neuron=True))
    with torch.no_grad():
        net.blocks[0].neuron.log_threshold.copy_(torch.linspace(-0.1, 0.1, 64))
    with pytest.raises(NIRError, match=r"export.reader=snntorch: L1_FC64: per-neuron thresholds.*\(snnTorch 1.0\)"):
        nir_export.export(net, reader="snntorch")
    assert nir_export.export(net, reader="norse")[1] == []  # Norse takes them
    with pytest.raises(NIRError, match=r"export.reader=sinabs: L2_RFC24: a recurrent layer"):
        nir_export.export(build("rlif_one_to_one"), reader="sinabs", approximate=True)
    with pytest.raises(NIRError, match=r"export.reader=sinabs: L1_6C5_AP2: spiking neurons after a convolution"):
        nir_export.export(build("csnn_ap_lif"), reader="sinabs", approximate=True)
    with pytest.raises(NIRError, match=r"export.reader=sinabs: L1_FC64: a CubaLIF"):
        nir_export.export(build("synaptic"), reader="sinabs", approximate=True)
    with pytest.raises(NIRError, match="export.reader='loihi': one of nir, snntorch, norse, sinabs"):
        nir_export.export(build("dense_lif"), reader="loihi")


def test_profiles_record_the_reader_and_the_dt_to_run_them_at(tmp_path):
    import json

    for reader, dt in (("nir", 1e-3), ("snntorch", 1e-4), ("norse", 1e-3), ("sinabs", 1.0)):
        graph, _ = nir_export.export(build("dense_lif"), dt=1e-3, reader=reader, approximate=True)
        info = json.loads(graph.metadata["snnrun"])
        assert info["reader"] == reader and info["dt"] == dt and info["read_with"]
    graph = nir_export.export(build("padded_strided"), reader="norse")[0]
    chain, node = [], "input"
    while node != "output":
        node = next(b for a, b in graph.edges if a == node)
        chain.append(node)
    assert chain[:3] == ["L01_6C3p1s2_AP2.0_conv2d", "L01_6C3p1s2_AP2.1_avgpool2d", "L01_6C3p1s2_AP2.neuron"]
    assert chain[:-1] == sorted(chain[:-1])  # alphabetical order, in which readers list a file's nodes, is the chain's


def test_the_compatibility_table_in_the_docs_is_the_tested_one():
    text = DOCS.read_text()
    table = text[text.index("| node | tested on | snnTorch 1.0 | Norse 1.1 | Sinabs 3.x |"):].split("\n\n")[0]
    covered = set()
    for line in table.splitlines()[2:]:
        node, tested, *cells = [c.strip() for c in line.strip("|").split("|")]
        networks = re.findall(r"`(\w+)`", tested)
        assert networks and all(n in NETWORKS for n in networks), line
        for reader, cell in zip(("snntorch", "norse", "sinabs"), cells):
            assert {OUTCOME[reader][n] for n in networks} == {cell.split()[0]}, (node, reader)
        covered |= set(networks)
    assert covered == set(NETWORKS)


SMALL = ["data=synthetic", "data.num_train=128", "data.num_test=64", "data.batch_size=32", "time_steps=6",
         "model.arch=FC32-FC10", "neuron.reset=zero", "trainer.raster_samples=0", "trainer.curve_points=0"]


@pytest.mark.e2e
def test_check_nir_from_the_command_line(tmp_path):
    pytest.importorskip("snntorch")
    pytest.importorskip("norse")
    snnrun(*SMALL, "hydra.run.dir=run", cwd=tmp_path)
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    snnrun("task=export", f"ckpt_path={ckpt}", "export.reader=snntorch", "export.path=net.nir", "hydra.run.dir=exp",
           cwd=tmp_path)
    assert read_results(tmp_path / "exp")["reader"] == "snntorch"
    ok = snnrun("task=check_nir", "nir_path=net.nir", "export.reader=snntorch", *SMALL[:5], "hydra.run.dir=chk",
                cwd=tmp_path)
    result = read_results(tmp_path / "chk")
    assert ok.returncode == 0 and result["status"] == "ok" and result["identical"] and result["written_for"] == "snntorch"
    assert result["output"] == {"compared": "output spike counts", "differing": 0, "of": 640}
    assert [layer["layer"] for layer in result["layers"]] == ["L1_FC32", "L2_FC10"] and "L1_FC32" in ok.stdout
    snnrun("task=export", f"ckpt_path={ckpt}", "export.path=strict.nir", "hydra.run.dir=exp2", cwd=tmp_path)
    bad = snnrun("task=check_nir", "nir_path=strict.nir", "export.reader=norse", *SMALL[:5], "hydra.run.dir=chk2",
                 cwd=tmp_path, check=False)
    assert bad.returncode == 1 and "Norse 1.1 does not compute strict.nir as NIR defines it" in bad.stderr
    assert read_results(tmp_path / "chk2")["status"] in ("not_imported", "not_run")
    refused = snnrun("task=check_nir", "nir_path=net.nir", "export.reader=nir", *SMALL[:5], "hydra.run.dir=refused",
                     cwd=tmp_path, check=False)
    assert refused.returncode == 2 and not (tmp_path / "refused").exists()
    assert "export.reader must be the reader to run the graph through" in refused.stderr


@pytest.mark.parametrize("args, message", [
    (["nir_path=net.nir", "export.reader=loihi"], "export.reader must be nir or snntorch or norse or sinabs"),
    (["export.reader=snntorch"], "nir_path must be a NIR graph when task=check_nir"),
    (["nir_path=net.nir", "export.reader=norse", "export.check_samples=0"], "export.check_samples must be a positive"),
])
def test_check_nir_options_are_refused_by_name(compose, args, message):
    with pytest.raises(ConfigError, match=message):
        check(compose("task=check_nir", *args))
