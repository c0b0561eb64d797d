"""NIR export and import: snnrun -> NIR -> snnrun bit for bit, the file against NIR's own rules,
refusals and approximations, and round trips with snnTorch (the `compare` extra)."""

import json
from functools import partial

import numpy as np
import pytest
import torch

nir = pytest.importorskip("nir")

from snnrun.interop import nir_export, nir_import  # noqa: E402
from snnrun.core.architectures import SpikingNetwork  # noqa: E402
from snnrun.core.neurons import IF, LIF, Graded, Synaptic  # noqa: E402
from snnrun.core.recurrent import ALIF, RLIF  # noqa: E402

NETWORKS = {
    "dense_lif": ("FC64-FC10", (1, 28, 28), partial(LIF, beta=0.9, reset="zero"), "same"),
    "csnn_ap_lif": ("6C5-AP2-8C5-AP2-FC10", (1, 28, 28), partial(LIF, beta=0.8, reset="zero", per_neuron=True), "same"),
    "rlif_all_to_all_li": ("FC32-RFC24-FC10", (28,), partial(RLIF, beta=0.8, reset="zero"), "li"),
    "rlif_one_to_one": ("FC32-RFC24-FC10", (28,), partial(RLIF, beta=0.8, reset="zero", recurrence="one_to_one"), "same"),
    "rlif_image": ("FC32-RFC24-FC10", (1, 28, 28), partial(RLIF, beta=0.8, reset="zero"), "same"),  # a Flatten first
    "synaptic": ("FC64-FC10", (28,), partial(Synaptic, alpha=0.7, beta=0.8, reset="zero"), "same"),
    "if": ("FC64-FC10", (28,), partial(IF), "same"),
    "if_li": ("FC64-FC10", (28,), partial(IF), "li"),  # an li readout of if neurons: beta = 1, NIR's integrator I
    "padded_strided": ("6C3p1s2-AP2-8C3p1-FC10", (1, 28, 28), partial(LIF, beta=0.8, reset="zero"), "same"),
}


def build(name, seed=0):
    arch, shape, neuron, readout = NETWORKS[name]
    torch.manual_seed(seed)
    net = SpikingNetwork(arch, shape, 10, neuron=neuron, readout_neuron=readout)
    for block in net.blocks:
        if getattr(block.neuron, "recurrence", None) == "one_to_one":
            with torch.no_grad():
                block.neuron.recurrent_weight.uniform_(-0.5, 0.5)
    return net


def rebuild(imported):
    """The snnrun network a graph describes, as ``snnrun nir_path=`` builds it."""
    options = {k: v for k, v in imported.neuron.items() if not k.startswith("_")}
    module, cls = imported.neuron["_target_"].rsplit(".", 1)
    neuron = partial(getattr(__import__(module, fromlist=[cls]), cls), **options)
    classes = imported.layers[-1].weight.shape[0]
    net = SpikingNetwork(imported.arch, imported.input_shape, classes, neuron=neuron, readout_neuron=imported.readout_neuron)
    imported.load_into(net)
    return net


def all_spikes(net, x):
    net.record = True
    with torch.no_grad():
        spk, mem = net(x)
    net.record = False
    return net.recorded, mem


def drive(shape, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(20, 6, *shape, generator=g) * (3.0 if len(shape) == 1 else 1.5)


@pytest.mark.parametrize("name", NETWORKS)
def test_snnrun_nir_snnrun_is_bit_identical(name, tmp_path):
    net = build(name)
    graph, approximations = nir_export.export(net)
    assert approximations == []
    nir_export.write(graph, tmp_path / "model.nir")
    imported = nir_import.read(tmp_path / "model.nir")
    assert imported.arch == net.arch and imported.readout_neuron == net.readout_neuron
    again = rebuild(imported)
    x = drive(net.input_shape)
    (s1, m1), (s2, m2) = all_spikes(net, x), all_spikes(again, x)
    assert s1[0].sum() > 0
    for a, b in zip(s1, s2):
        assert torch.equal(a, b)
    assert torch.equal(m1, m2)
    for (k1, v1), (k2, v2) in zip(net.state_dict().items(), again.state_dict().items()):
        assert k1 == k2 and torch.equal(v1.broadcast_to(v2.shape), v2), k1  # shared values come back per neuron


def test_the_file_follows_nirs_rules(tmp_path):
    net = build("csnn_ap_lif")
    nir_export.write(nir_export.export(net, dt=1e-3)[0], tmp_path / "model.nir")
    graph = nir.read(tmp_path / "model.nir")  # nir's own reader and type check
    nodes = graph.nodes
    conv = nodes["L1_6C5_AP2.conv2d"]
    assert conv.weight.shape == (6, 1, 5, 5) and tuple(conv.input_shape) == (28, 28)
    pool = nodes["L1_6C5_AP2.avgpool2d"]
    assert list(pool.kernel_size) == [2, 2] and list(pool.stride) == [2, 2]
    lif = nodes["L1_6C5_AP2.neuron"]
    assert isinstance(lif, nir.LIF)
    for value in (lif.tau, lif.r, lif.v_leak, lif.v_threshold, lif.v_reset):
        assert value.shape == (6, 12, 12)  # one value per neuron, the layer's shape, no batch dimension
    beta = float(net.blocks[0].neuron.beta.flatten()[0])
    np.testing.assert_allclose(lif.tau, 1e-3 / (1 - beta))  # tau = dt/(1 - beta)
    np.testing.assert_allclose(lif.r * 1e-3 / lif.tau, 1.0)  # r = tau/dt: one step adds I[t] exactly
    assert isinstance(nodes["L3_FC10.flatten"], nir.Flatten) and list(nodes["L3_FC10.flatten"].output_type["output"]) == [128]
    assert nodes["L3_FC10.affine"].weight.shape == (10, 128)
    info = json.loads(str(graph.metadata["snnrun"]))
    assert info["dt"] == 1e-3 and info["approximations"] == [] and "Euler" in info["discretisation"]


def test_padding_and_stride_are_written_as_nir_conv_fields():
    conv = nir_export.export(build("padded_strided"))[0].nodes["L1_6C3p1s2_AP2.conv2d"]
    assert list(conv.stride) == [2, 2] and list(conv.padding) == [1, 1]


def test_batch_norm_is_folded_into_the_weights_with_its_running_statistics(tmp_path):
    """At inference BN is an affine map per channel: the exported graph (no BN node) drives the
    same spikes as the network with BN, its currents equal up to float rounding."""
    torch.manual_seed(0)
    net = SpikingNetwork("6C3p1-BN-AP2-FC32-BN-FC10", (1, 12, 12), 10, neuron=partial(LIF, beta=0.8, reset="zero"))
    for module in net.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            torch.nn.init.uniform_(module.weight, 0.5, 1.5)
            torch.nn.init.uniform_(module.bias, -0.2, 0.2)
    with torch.no_grad():
        for _ in range(5):  # running statistics that are not the initial 0 and 1
            net(torch.rand(16, 1, 12, 12) * 2, time_steps=4)
    net.eval()
    graph, _ = nir_export.export(net)
    assert json.loads(str(graph.metadata["snnrun"]))["batch_norm_folded"] == ["L1_6C3p1_BN_AP2", "L2_FC32_BN"]
    nir_export.write(graph, tmp_path / "bn.nir")
    imported = nir_import.read(tmp_path / "bn.nir")
    assert imported.arch == "6C3p1-AP2-FC32-FC10"
    folded = rebuild(imported).eval()
    x = torch.rand(8, 1, 12, 12) * 2
    with torch.no_grad():
        torch.testing.assert_close(folded.blocks[0].apply_stateless(x), net.blocks[0].apply_stateless(x),
                                   rtol=1e-5, atol=1e-5)
    (s1, m1), (s2, m2) = all_spikes(net, x.expand(10, *x.shape)), all_spikes(folded, x.expand(10, *x.shape))
    assert s1[0].sum() > 0 and all(torch.equal(a, b) for a, b in zip(s1, s2))
    torch.testing.assert_close(m1, m2, rtol=1e-5, atol=1e-5)


def test_a_recurrent_layer_is_a_subgraph_with_a_cycle():
    graph, _ = nir_export.export(build("rlif_all_to_all_li"))
    rnn = graph.nodes["L2_RFC24.rnn"]
    assert isinstance(rnn, nir.NIRGraph) and ("w_rec", "lif") in rnn.edges and ("lif", "w_rec") in rnn.edges
    assert isinstance(rnn.nodes["w_rec"], nir.Affine) and rnn.nodes["w_rec"].weight.shape == (24, 24)
    assert isinstance(graph.nodes["L3_FC10.neuron"], nir.LI)


@pytest.mark.parametrize("arch, neuron, option, message", [
    ("6C5-MP2-FC10", partial(LIF, reset="zero"), {}, "L1_6C5_MP2: max pooling has no NIR node; exported as average "
                                                     "pooling (train with AP2 instead of MP2)"),
    ("FC32-FC10", partial(LIF, reset="subtract"), {}, "L1_FC32: reset=subtract has no NIR form"),
    ("FC32-FC10", partial(LIF, reset="none"), {}, "L1_FC32: reset=none has no NIR form"),
    ("FC32-FC10", partial(IF, rectify=True), {}, "L1_FC32: rectify"),
    ("FC32-FC10", partial(ALIF, reset="zero"), {}, "L1_FC32: alif's adaptive threshold"),
    ("FC32-FC10", partial(LIF, reset="zero"), {"precision": "bf16"}, "train with model.precision=fp32"),
])
def test_inexact_networks_are_refused_unless_approximate(arch, neuron, option, message):
    net = SpikingNetwork(arch, (1, 28, 28), 10, neuron=neuron, **option)
    with pytest.raises(nir_import.NIRError, match="export.approximate=true") as err:
        nir_export.export(net, **option)
    assert message in str(err.value)
    graph, approximations = nir_export.export(net, approximate=True, **option)
    assert approximations and any(message in a for a in approximations)
    assert json.loads(str(graph.metadata["snnrun"]))["approximations"] == approximations


def test_graded_neurons_are_refused_even_approximately():
    net = SpikingNetwork("FC32-FC10", (28,), 10, neuron=partial(Graded))
    for approximate in (False, True):
        with pytest.raises(nir_import.NIRError, match="graded neurons have no NIR node"):
            nir_export.export(net, approximate=approximate)


def test_an_approximate_export_keeps_the_rest_exact(tmp_path):
    """Max pooling exported as average pooling: everything else maps as in an exact export."""
    net = SpikingNetwork("6C5-MP2-FC10", (1, 28, 28), 10, neuron=partial(LIF, reset="zero"))
    graph, _ = nir_export.export(net, approximate=True)
    nir_export.write(graph, tmp_path / "m.nir")
    imported = nir_import.read(tmp_path / "m.nir")
    assert imported.arch == "6C5-AP2-FC10"
    assert torch.equal(rebuild(imported).blocks[0].stateless[0].weight, net.blocks[0].stateless[0].weight)


@pytest.mark.parametrize("graph, message", [
    (lambda: nir.NIRGraph.from_list(nir.Affine(np.ones((3, 4)), np.zeros(3)), nir.Threshold(np.ones(3))),
     "unsupported node: Threshold node"),
    (lambda: nir.NIRGraph.from_list(nir.Affine(np.ones((3, 4)), np.zeros(3)), nir.Affine(np.ones((2, 3)), np.zeros(2)),
                                    nir.LIF(*(np.ones(2),) * 4)), "without a neuron between them"),
    (lambda: nir.NIRGraph.from_list(nir.Affine(np.ones((3, 4)), np.zeros(3)),
                                    nir.LIF(np.ones(3), np.ones(3), np.ones(3), np.ones(3))), "v_leak != 0"),
    (lambda: nir.NIRGraph.from_list(nir.Affine(np.ones((3, 4)), np.zeros(3)),
                                    nir.LIF(np.ones(3), np.ones(3), np.zeros(3), np.ones(3), np.full(3, -1.0))),
     "v_reset != 0"),
    (lambda: nir.NIRGraph.from_list(nir.Conv2d((8, 8), np.ones((2, 1, 3, 3)), 1, 0, 2, 1, np.zeros(2)),
                                    nir.LIF(*(np.ones((2, 4, 4)),) * 2, np.zeros((2, 4, 4)), np.ones((2, 4, 4)))),
     "no dilation or groups"),
    (lambda: nir.NIRGraph.from_list(nir.Conv2d((8, 8), np.ones((2, 1, 3, 3)), (1, 2), 0, 1, 1, np.zeros(2)),
                                    nir.LIF(*(np.ones((2, 6, 3)),) * 2, np.zeros((2, 6, 3)), np.ones((2, 6, 3)))),
     "same stride and padding"),
    (lambda: nir.NIRGraph.from_list(nir.Affine(np.ones((3, 4)), np.zeros(3)),  # tau below dt: beta = 1 - dt/tau < 0
                                    nir.LIF(np.full(3, 5e-5), np.ones(3), np.zeros(3), np.ones(3))),
     r"tau 5e-05 s <= dt 0.0001 s"),
    (lambda: nir.NIRGraph.from_list(nir.Affine(np.ones((3, 4)), np.zeros(3)),  # fires at rest under NIR
                                    nir.LIF(np.ones(3), np.ones(3), np.zeros(3), np.full(3, -0.5))),
     r"v_threshold -0.5 <= 0"),
    (lambda: _looped([("lif", "lif")]), "node 'lif' feeds itself"),
    (lambda: _looped([("lif", "affine")]), "an edge from 'lif' back to 'affine' makes a cycle that is not a recurrent"),
])
def test_graphs_snnrun_cannot_hold_are_refused(graph, message, tmp_path):
    nir.write(tmp_path / "g.nir", graph())
    with pytest.raises(nir_import.NIRError, match=message):
        nir_import.read(tmp_path / "g.nir")


def _looped(extra: list) -> "nir.NIRGraph":
    """Input -> a square Affine -> LIF -> output, with ``extra`` edges (a self-loop, a back edge)."""
    nodes = {"input": nir.Input(input_type=np.array([3])), "affine": nir.Affine(np.eye(3), np.zeros(3)),
             "lif": nir.LIF(np.ones(3), np.ones(3), np.zeros(3), np.ones(3)), "output": nir.Output(output_type=np.array([3]))}
    return nir.NIRGraph(nodes=nodes, edges=[("input", "affine"), ("affine", "lif"), *extra, ("lif", "output")])


def test_files_that_are_not_nir_are_refused(tmp_path):
    (tmp_path / "notes.nir").write_text("not a graph")
    with pytest.raises(nir_import.NIRError, match="not a readable NIR file"):
        nir_import.read(tmp_path / "notes.nir")
    with pytest.raises(nir_import.NIRError, match="no such file"):
        nir_import.read(tmp_path / "missing.nir")


def test_a_foreign_graph_with_a_gain_is_folded_into_the_weights(tmp_path):
    """A LIF with r = 1 (Norse-style) scales its input by dt/tau each step: the same spikes as an
    snnrun layer whose weights carry that factor."""
    dt, tau, n = 1e-3, np.full(3, 5e-3), 3
    w = np.random.default_rng(0).normal(size=(n, 4)).astype(np.float32)
    graph = nir.NIRGraph.from_list(nir.Affine(w, np.zeros(n, np.float32)),
                                   nir.LIF(tau=tau, r=np.ones(n), v_leak=np.zeros(n), v_threshold=np.full(n, 0.1)))
    nir.write(tmp_path / "g.nir", graph)
    imported = nir_import.read(tmp_path / "g.nir", dt=dt)
    assert imported.layers[0].gain == pytest.approx(dt / 5e-3)
    net = rebuild(imported)
    np.testing.assert_allclose(net.blocks[0].stateless[-1].weight.detach().numpy(), w * 0.2, rtol=1e-6)
    assert torch.allclose(net.blocks[0].neuron.beta, torch.tensor(1 - 0.2))


def test_a_gain_per_neuron_is_folded_into_each_row(tmp_path):
    """Norse's convention (r = 1) with a time constant per neuron: each neuron's input gain dt/tau_i scales its row
    of the weights (and of a recurrent weight); a gain that differs within a conv channel is refused."""
    dt, n = 1e-3, 3
    tau = np.array([5e-3, 1e-2, 2e-2])
    w = np.random.default_rng(0).normal(size=(n, 4)).astype(np.float32)
    graph = nir.NIRGraph.from_list(nir.Affine(w, np.ones(n, np.float32)),
                                   nir.LIF(tau=tau, r=np.ones(n), v_leak=np.zeros(n), v_threshold=np.full(n, 0.1)))
    nir.write(tmp_path / "g.nir", graph)
    net = rebuild(nir_import.read(tmp_path / "g.nir", dt=dt))
    gain = dt / tau
    np.testing.assert_allclose(net.blocks[0].stateless[-1].weight.detach().numpy(), w * gain[:, None], rtol=1e-6)
    np.testing.assert_allclose(net.blocks[0].stateless[-1].bias.detach().numpy(), gain, rtol=1e-6)
    np.testing.assert_allclose(net.blocks[0].neuron.beta.detach().numpy().ravel(), 1 - gain, rtol=1e-6)
    uneven = np.ones((2, 4, 4))
    uneven[0, 0, 0] = 2.0  # one pixel of channel 0 with another tau
    conv = nir.NIRGraph.from_list(nir.Conv2d((6, 6), np.ones((2, 1, 3, 3)), 1, 0, 1, 1, np.zeros(2)),
                                  nir.LIF(uneven * 1e-2, np.ones((2, 4, 4)), np.zeros((2, 4, 4)), np.ones((2, 4, 4))))
    nir.write(tmp_path / "c.nir", conv)
    with pytest.raises(nir_import.NIRError, match="differs within one output unit"):
        nir_import.read(tmp_path / "c.nir", dt=dt)


def snntorch_run(net, x):
    """Step an fx GraphModule from snnTorch's import_nir (state passed back each step) or an
    nn.Sequential of snnTorch layers with init_hidden=True; output spikes [T, B, C]."""
    import snntorch.utils

    snntorch.utils.reset(net)
    state, out = None, []
    with torch.no_grad():
        for x_t in x:
            if isinstance(net, torch.nn.Sequential):
                spk = net(x_t)[0]
            else:
                spk, state = net(x_t, state)
            out.append(spk)
    return torch.stack(out)


@pytest.mark.parametrize("name", ["dense_lif", "csnn_ap_lif"])
def test_snnrun_to_snntorch_gives_the_same_output_spikes(name):
    pytest.importorskip("snntorch")
    pytest.importorskip("nirtorch")
    from snntorch.import_nir import import_from_nir

    net = build(name)
    with torch.no_grad():
        net.blocks[-1].stateless[-1].weight.mul_(4)  # an output layer that fires, so the comparison says something
    theirs = import_from_nir(nir_export.export(net)[0])
    for module in theirs.modules():
        # snnTorch 1.0 builds torch.nn.Flatten(start_dim=0) from NIR's Flatten(start_dim=0). NIR's shapes have
        # no batch axis, so NIR's 0 is the first axis after the batch: torch's start_dim=1. snnTorch's importer
        # flattens the batch into the features there (docs/nir.md); we correct that one field and test the rest.
        if isinstance(module, torch.nn.Flatten) and module.start_dim == 0:
            module.start_dim = 1
    x = drive(net.input_shape)
    with torch.no_grad():
        ours = net(x)[0]
    assert ours.sum() > 0
    assert torch.equal(snntorch_run(theirs, x), ours)


def snntorch_leaky(shape, beta, threshold, output=False):
    import snntorch as snn

    return snn.Leaky(beta=torch.full(shape, beta), threshold=torch.full(shape, threshold), reset_mechanism="zero",
                     init_hidden=True, output=output)


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_snntorch_to_snnrun_gives_the_same_output_spikes(kind, tmp_path):
    pytest.importorskip("snntorch")
    pytest.importorskip("nirtorch")
    from snntorch.export_nir import export_to_nir

    torch.manual_seed(5)
    if kind == "dense":
        shape = (28,)
        theirs = torch.nn.Sequential(torch.nn.Linear(28, 32), snntorch_leaky((32,), 0.9, 1.0),
                                     torch.nn.Linear(32, 10), snntorch_leaky((10,), 0.8, 0.5, output=True))
    else:
        shape = (1, 16, 16)
        theirs = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 5), torch.nn.AvgPool2d(2), snntorch_leaky((4, 6, 6), 0.9, 1.0),
                                     torch.nn.Flatten(), torch.nn.Linear(144, 10), snntorch_leaky((10,), 0.8, 0.5, output=True))
    with torch.no_grad():
        theirs[-2].weight.mul_(3)
    nir.write(tmp_path / "theirs.nir", export_to_nir(theirs, torch.rand(1, *shape), ignore_dims=[0]))
    imported = nir_import.read(tmp_path / "theirs.nir")  # no snnrun metadata: dt = 1e-4, snnTorch's
    assert imported.arch == ("FC32-FC10" if kind == "dense" else "4C5-AP2-FC10")
    ours = rebuild(imported)
    x = drive(shape, seed=2) * (1 if kind == "dense" else 2)
    expected = snntorch_run(theirs, x)
    assert expected.sum() > 0
    with torch.no_grad():
        assert torch.equal(ours(x)[0], expected)


def test_an_li_readout_without_leak_is_exported_as_an_integrator_not_an_infinite_tau():
    import nir

    graph, _ = nir_export.export(build("if_li"), dt=1e-3)
    readout = graph.nodes["L2_FC10.neuron"]
    assert isinstance(readout, nir.I) and np.allclose(readout.r, 1e3)  # v += dt * r * I = I per step
    assert all(np.isfinite(np.asarray(getattr(n, "tau", 1.0))).all() for n in graph.nodes.values())


def test_parallel_neurons_export_or_are_refused_with_what_nir_lacks():
    from snnrun.core.parallel import PSN, FilterLIF, SlidingPSN

    for neuron in (partial(PSN, time_steps=5), partial(SlidingPSN, taps=3)):
        net = SpikingNetwork("FC16-FC10", (8,), 10, neuron=neuron)
        for approximate in (False, True):
            with pytest.raises(nir_import.NIRError, match="NIR has no node for such a filter"):
                nir_export.export(net, approximate=approximate)
    net = SpikingNetwork("FC16-FC10", (8,), 10, neuron=partial(FilterLIF, tau=10.0))
    with pytest.raises(nir_import.NIRError, match="reset=none has no NIR form"):
        nir_export.export(net)
    graph, approximations = nir_export.export(net, approximate=True)  # the nearest graph: LIF nodes resetting to 0
    assert len(approximations) == 2 and type(graph.nodes["L1_FC16.neuron"]).__name__ == "LIF"
