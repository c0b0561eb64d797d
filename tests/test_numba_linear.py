"""The gathering linear kernels (snnrun.core.numba_linear) against torch's linear: forward and every gradient,
on spike trains, scaled (dropout) and signed values, a single input and all-zero rows; and the rule that
decides which layers of a network use them."""

from functools import partial

import pytest
import torch
import torch.nn.functional as F

from snnrun.core import neurons
from snnrun.core.architectures import GATHER_BELOW, SpikingNetwork
from snnrun.core.recurrent import ALIF

pytest.importorskip("numba")
from snnrun.core.numba_linear import FEW_OUTPUTS, GatheredLinear, product  # noqa: E402


def inputs(n, k, density, dtype, seed=0, values=(1.0,)):
    """[n, k]: ``density`` of the entries non-zero, drawn from ``values``; rows 0 and 3 all zero."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(n, k, generator=g) < density
    pick = torch.tensor(values, dtype=torch.float64)[torch.randint(len(values), (n, k), generator=g)]
    x = (mask * pick).to(dtype)
    x[[0, 3]] = 0
    return x


def grads(fn, x, layer, upstream):
    layer.zero_grad()
    x = x.clone().requires_grad_()
    y = fn(x)
    (y * upstream).sum().backward()
    return y.detach(), x.grad, layer.weight.grad.clone(), layer.bias.grad.clone()


@pytest.mark.parametrize("k, o, density, values", [
    (40, 24, 0.05, (1.0,)),  # spikes into a hidden layer: dL/dx by a matrix product
    (40, 10, 0.1, (1.0,)),  # spikes into a readout: dL/dx by the gathering kernel
    (40, 10, 0.3, (1.25,)),  # spikes after dropout p = 0.2
    (33, 20, 0.5, (-0.7, 0.4, 2.0)),  # signed graded values
    (1, 24, 1.0, (0.1, 0.5, 0.9)),  # one pixel per step
], ids=["spikes", "readout", "dropout", "graded", "pixel"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gathered_linear_equals_torchs(k, o, density, values, dtype):
    torch.manual_seed(0)
    layer = torch.nn.Linear(k, o).to(dtype)
    x = inputs(301, k, density, dtype, values=values)
    upstream = torch.randn(301, o, dtype=dtype)
    ref = grads(lambda v: F.linear(v, layer.weight, layer.bias), x, layer, upstream)
    got = grads(lambda v: GatheredLinear.apply(v, layer.weight, layer.bias), x, layer, upstream)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    for name, r, g in zip(("y", "dL/dx", "dL/dW", "dL/db"), ref, got):
        assert r.abs().sum() > 0, name
        torch.testing.assert_close(g, r, rtol=tol, atol=tol * r.abs().max().item(), msg=name)
    assert torch.equal(got[0][[0, 3]], layer.bias.detach().expand(2, o))  # an all-zero row is the bias


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_input_gradients_product_equals_torchs(dtype):
    """dL/dx = g W (oneDNN's product in float32 where torch has it, torch.mm otherwise) on a hidden layer's shape."""
    g = torch.Generator().manual_seed(0)
    grad, weight = torch.randn(3000, 48, generator=g, dtype=dtype), torch.randn(48, 40, generator=g, dtype=dtype)
    torch.testing.assert_close(product(grad, weight), grad.mm(weight))


@pytest.mark.parametrize("o", [FEW_OUTPUTS, FEW_OUTPUTS + 1], ids=["gathered", "product"])
def test_gathered_linear_passes_gradcheck(o):
    layer = torch.nn.Linear(12, o).double()
    x = inputs(17, 12, 0.3, torch.float64, values=(1.0, -0.5)).requires_grad_()
    assert torch.autograd.gradcheck(GatheredLinear.apply, (x, layer.weight, layer.bias))


def test_gathered_linear_is_deterministic_and_skips_an_input_without_grad():
    layer = torch.nn.Linear(64, 32)
    x = inputs(2000, 64, 0.05, torch.float32)
    upstream = torch.randn(2000, 32)
    first = grads(lambda v: GatheredLinear.apply(v.detach(), layer.weight, layer.bias), x, layer, upstream)
    second = grads(lambda v: GatheredLinear.apply(v.detach(), layer.weight, layer.bias), x, layer, upstream)
    assert first[1] is None  # x is not differentiated through: no dL/dx is computed
    for a, b in zip(first[2:], second[2:]):
        assert torch.equal(a, b)


def network(backend, arch="FC24-FC24-FC10", make=None, **kwargs):
    torch.manual_seed(0)
    make = make or (lambda **kw: neurons.LIF(beta=0.9, backend=backend, **kw))
    return SpikingNetwork(arch, (1, 4, 4), 10, make, **kwargs)


def test_a_networks_sparse_layers_gather_where_its_neurons_run_numba():
    net = network("numba")
    spikes = torch.zeros(5, 3, 24)
    spikes[:, :, :2] = 1  # density 1/12
    dense = torch.ones(5, 3, 24)
    low, high = torch.tensor(GATHER_BELOW / 2), torch.tensor(min(1.0, GATHER_BELOW * 2))
    hidden = net.blocks[1]
    assert hidden.gathers(spikes, low) and not hidden.gathers(dense, high)
    assert not hidden.gathers(spikes, None)  # density unknown (a first layer): a dense product
    assert not network("torch").blocks[1].gathers(spikes, low)
    assert not network("numba", arch="FC24-FC24-BN-FC10").blocks[1].gathers(spikes, low)  # its current is normalised
    assert not hidden.gathers(spikes.double(), low)  # the layer's weights are float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not hidden.gathers(spikes, low)
    pixel = SpikingNetwork("RFC24-FC10", (1,), 10, partial(ALIF, recurrence="one_to_one"))  # backend auto
    assert pixel.blocks[0].gathers(torch.rand(5, 3, 1), None)  # one input: gathered whatever its density


def test_a_pixel_layer_is_projected_in_its_kernel_where_it_runs_numba():
    """RFC24's linear layer on one input per step runs inside the alif kernel on numba; the network gives the
    same spikes, membranes and parameter gradients as on torch."""
    x = torch.rand(9, 4, 1)
    x[x < 0.4] = 0
    out = []
    for backend in ("torch", "numba"):
        torch.manual_seed(0)
        net = SpikingNetwork("RFC24-FC10", (1,), 10, partial(ALIF, recurrence="one_to_one", beta=0.8, backend=backend,
                                                             adaptation=0.5, learn_beta=True, per_neuron=True))
        first = net.blocks[0]
        assert first.projects(x) == (backend == "numba") and not net.blocks[1].projects(torch.rand(9, 4, 24))
        spk, mem = net(x)
        (mem.sum() + spk.sum()).backward()
        out.append((spk, mem, {n: p.grad for n, p in net.named_parameters()}))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not first.projects(x)
        assert not first.projects(x.double()) and not first.projects(x.clone().requires_grad_())
    bf16 = SpikingNetwork("RFC24-FC10", (1,), 10, partial(ALIF, recurrence="one_to_one"), precision="bf16")
    calls = []
    bf16.blocks[0].project = lambda x: calls.append(x)  # the linear layer runs in bf16 autocast, outside the kernel
    bf16(x)
    assert not calls and bf16.blocks[0].neuron.last_backend == "numba"
    (spk_ref, mem_ref, g_ref), (spk, mem, g) = out
    assert torch.equal(spk, spk_ref)
    torch.testing.assert_close(mem, mem_ref, rtol=1e-5, atol=1e-6)
    for name in g_ref:
        assert g_ref[name].abs().sum() > 0, name
        torch.testing.assert_close(g[name], g_ref[name], rtol=1e-5, atol=1e-5 * g_ref[name].abs().max().item())


def test_a_network_on_numba_equals_it_on_torch(monkeypatch):
    """Same weights, same input: the same spikes, outputs and parameter gradients with gathered layers."""
    from snnrun.core import numba_linear

    calls = []
    monkeypatch.setattr(numba_linear, "linear", lambda x, layer: calls.append(layer) or GatheredLinear.apply(
        x, layer.weight, layer.bias))
    x = inputs(6 * 4, 16, 0.3, torch.float32).reshape(6, 4, 1, 4, 4)
    out = []
    for backend in ("torch", "numba"):
        net = network(backend, arch="FC48-FC48-FC10")
        spk, mem = net(x)
        (mem.sum() + spk.sum()).backward()
        assert net.firing_rates[:2].max() < GATHER_BELOW
        out.append((spk, mem, {n: p.grad for n, p in net.named_parameters()}))
    assert len(calls) == 3  # on numba: the first layer (16 inputs) and both sparse ones
    (spk_ref, mem_ref, g_ref), (spk, mem, g) = out
    assert torch.equal(spk, spk_ref)
    torch.testing.assert_close(mem, mem_ref, rtol=1e-5, atol=1e-6)
    for name in g_ref:
        torch.testing.assert_close(g[name], g_ref[name], rtol=1e-5, atol=1e-5 * g_ref[name].abs().max().item())
