"""Neurons computed over the whole sequence at once equal their step-by-step references, in float64,
spikes, membranes and every gradient; hand-sized cases pin the equations themselves."""

from functools import partial

import pytest
import torch

from snnrun.core import surrogates
from snnrun.core.architectures import SpikingNetwork
from snnrun.core.options import OptionError
from snnrun.core.parallel import PSN, FilterLIF, SlidingPSN, filter_scan


def run(neuron, current):
    """(spikes, membrane, gradients of a loss on both w.r.t. the input and every parameter)."""
    current = current.clone().requires_grad_()
    spk, mem = neuron(current)
    weights = torch.linspace(-1, 1, mem.numel(), dtype=mem.dtype).reshape(mem.shape)
    ((spk * weights).sum() + (mem * weights.flip(0)).sum()).backward()
    grads = [current.grad] + [p.grad.clone() for p in neuron.parameters()]
    for p in neuron.parameters():
        p.grad = None
    return spk.detach(), mem.detach(), grads


def assert_parallel_equals_steps(neuron, current):
    fused = run(neuron, current)
    neuron.fused = False
    steps = run(neuron, current)
    neuron.fused = True
    assert torch.equal(fused[0], steps[0])  # spikes identical
    torch.testing.assert_close(fused[1], steps[1], rtol=1e-10, atol=1e-10)
    for a, b in zip(fused[2], steps[2]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def current(t=37, shape=(3, 5), seed=0):
    return torch.randn(t, *shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 0.8 + 0.3


@pytest.mark.parametrize("block, t", [(8, 37), (32, 37), (64, 20), (1, 9)])
def test_filter_lif_scan_equals_the_step_by_step_lif_without_reset(block, t):
    torch.manual_seed(0)
    neuron = FilterLIF(tau=5.0, tau_std=2.0, block=block, scan="parallel", shape=(5,), surrogate=surrogates.ATan()).double()
    assert neuron.beta.shape == (5,) and neuron.beta_logit.requires_grad  # learned per neuron by default
    assert_parallel_equals_steps(neuron, current(t))


def test_filter_lif_by_hand():
    """beta = 0.5, I = [1, 2, 0, 4]: U = [1, 2.5, 1.25, 4.625]; threshold 1 (strict): S = [0, 1, 1, 1]."""
    mem = filter_scan(torch.tensor([1.0, 2, 0, 4]).reshape(4, 1, 1), torch.tensor(0.5), block=3)
    assert mem.flatten().tolist() == [1.0, 2.5, 1.25, 4.625]
    for scan in ("parallel", "loop"):
        neuron = FilterLIF(beta=0.5, learn_beta=False, per_neuron=False, block=3, scan=scan)
        spk, mem = neuron(torch.tensor([1.0, 2, 0, 4]).reshape(4, 1, 1))
        assert spk.flatten().tolist() == [0.0, 1.0, 1.0, 1.0] and mem.flatten().tolist() == [1.0, 2.5, 1.25, 4.625]


def test_the_parallel_scan_names_its_backend_and_refuses_a_kernel():
    """The scan is torch's tensor ops: results.json names torch for it, and an explicit kernel is refused with it."""
    from snnrun.core import backends
    from snnrun.core.options import OptionError

    neuron = FilterLIF(beta=0.5, block=3, scan="parallel", shape=(2,))
    neuron(torch.rand(4, 1, 2))
    assert backends.used(torch.nn.Sequential(neuron)) == ["torch"]
    pytest.importorskip("numba")
    with pytest.raises(OptionError, match="scan"):
        FilterLIF(beta=0.5, scan="parallel", backend="numba")


def test_filter_lif_loop_equals_the_parallel_scan():
    torch.manual_seed(0)
    loop = FilterLIF(tau=5.0, tau_std=2.0, scan="loop", shape=(5,)).double()
    parallel = FilterLIF(tau=5.0, scan="parallel", block=8, shape=(5,)).double()
    parallel.load_state_dict(loop.state_dict())
    a, b = run(loop, current(37)), run(parallel, current(37))
    assert torch.equal(a[0], b[0])
    for x, y in zip([a[1], *a[2]], [b[1], *b[2]]):
        torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("window", [0, 1, 6])
def test_psn_matrix_product_equals_the_sum_over_steps(window):
    torch.manual_seed(1)
    neuron = PSN(time_steps=12, window=window, shape=(3, 5)).double()
    assert_parallel_equals_steps(neuron, current(12))
    if window:
        _, _, grads = run(neuron, current(12))
        lag = torch.arange(12)[:, None] - torch.arange(12)[None, :]
        assert (grads[1][(lag < 0) | (lag >= window)] == 0).all()  # outside the band W gets no gradient


def test_psn_by_hand():
    """W = [[1, 0], [2, 1]], b = -1: H = [x0 - 1, 2 x0 + x1 - 1]; x = [0.8, -0.1]: H = [-0.2, 0.5], S = [0, 1]."""
    neuron = PSN(time_steps=2)
    with torch.no_grad():
        neuron.weight.copy_(torch.tensor([[1.0, 0.0], [2.0, 1.0]]))
    spk, mem = neuron(torch.tensor([0.8, -0.1]).reshape(2, 1))
    torch.testing.assert_close(mem.flatten(), torch.tensor([-0.2, 0.5]))
    assert spk.flatten().tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match="built for T = 2"):
        neuron(torch.zeros(3, 1))


@pytest.mark.parametrize("taps, t", [(1, 10), (4, 10), (16, 10), (5, 33)])
def test_sliding_psn_convolution_equals_the_sum_over_taps(taps, t):
    torch.manual_seed(2)
    neuron = SlidingPSN(taps=taps, shape=(3, 5)).double()
    with torch.no_grad():
        neuron.weight.add_(0.1 * torch.randn_like(neuron.weight))
    assert_parallel_equals_steps(neuron, current(t))


def test_sliding_psn_by_hand():
    """taps w = [1, 0.5], b = -1: H[t] = I[t] + 0.5 I[t-1] - 1; I = [1, 2, 0]: H = [0, 1.5, 0], S = [0, 1, 0]."""
    neuron = SlidingPSN(taps=2)
    with torch.no_grad():
        neuron.weight.copy_(torch.tensor([1.0, 0.5]))
    spk, mem = neuron(torch.tensor([1.0, 2.0, 0.0]).reshape(3, 1))
    assert mem.flatten().tolist() == [0.0, 1.5, 0.0] and spk.flatten().tolist() == [0.0, 1.0, 0.0]


def test_parallel_neurons_build_networks_and_refuse_what_they_cannot_be():
    torch.manual_seed(0)
    for neuron in (partial(FilterLIF, tau=10.0), partial(PSN, time_steps=6), partial(SlidingPSN, taps=3)):
        net = SpikingNetwork("FC16-FC10", (8,), 10, neuron=neuron)
        spk, mem = net(torch.rand(6, 4, 8))
        assert spk.shape == mem.shape == (6, 4, 10)
    li = SpikingNetwork("FC16-FC10", (8,), 10, neuron=partial(FilterLIF, tau=10.0), readout_neuron="li")
    assert li.blocks[-1].neuron.beta.shape == (10,)  # the readout takes the layer's decay
    with pytest.raises(OptionError, match="reset"):
        FilterLIF(reset="subtract")
    with pytest.raises(OptionError, match="scan"):
        FilterLIF(scan="cumsum")
    with pytest.raises(OptionError, match="window"):
        PSN(time_steps=4, window=5)
    with pytest.raises(OptionError, match="taps"):
        SlidingPSN(taps=0)
