"""Streaming inference one step at a time, the state carried between calls: stepping through a sequence
gives the whole-sequence forward's spikes and membranes, for every neuron with a step-by-step form."""

from functools import partial

import pytest
import torch

from snnrun.core import neurons, surrogates
from snnrun.core.architectures import SpikingNetwork
from snnrun.core.parallel import PSN, FilterLIF, SlidingPSN
from snnrun.core.recurrent import ALIF, RLIF


def stream(layer, current):
    state, spikes, mems = None, [], []
    for x_t in current:
        spk, mem, state = layer.step(x_t, state)
        spikes.append(spk)
        mems.append(mem)
    return torch.stack(spikes), torch.stack(mems)


@pytest.mark.parametrize("make", [
    lambda: neurons.LIF(beta=0.8, threshold=0.6, reset="zero"),
    lambda: neurons.IF(rectify=True, alpha=0.5),
    lambda: neurons.Synaptic(alpha=0.7, beta=0.85),
    lambda: neurons.LI(beta=0.9),
    lambda: neurons.Graded(decay=0.8, threshold=0.5, penalty=0.5),
    lambda: FilterLIF(tau=5.0, shape=(6,)),
    lambda: SlidingPSN(taps=4, tau=2.0, threshold=0.5),
    lambda: SlidingPSN(taps=1),
    lambda: RLIF(recurrent=True, shape=(6,), beta=0.8),
    lambda: ALIF(recurrent=True, recurrence="one_to_one", shape=(6,), tau_adapt=4.0, adaptation=0.5),
    lambda: ALIF(shape=(6,), tau_adapt=4.0, adaptation=0.5, reset="zero"),
], ids=["lif", "if", "synaptic", "li", "graded", "filter_lif", "sliding_psn", "sliding_psn-1", "rlif", "alif-rfc",
        "alif"])
def test_stepping_a_layer_gives_its_sequence_output(make):
    torch.manual_seed(0)
    layer = make().double()
    if isinstance(layer, RLIF) and layer.recurrence == "one_to_one":
        with torch.no_grad():
            layer.recurrent_weight.uniform_(-1, 1)
    current = torch.randn(17, 3, 6, dtype=torch.float64) * 0.8 + 0.3
    with torch.no_grad():
        spk, mem = layer(current)
        s2, m2 = stream(layer, current)
    assert torch.equal(spk, s2)
    torch.testing.assert_close(m2, mem, rtol=1e-12, atol=1e-12)


def test_psn_refuses_to_stream():
    with pytest.raises(ValueError, match="no step-by-step form"):
        PSN(time_steps=4).step(torch.zeros(2, 3))


@pytest.mark.parametrize("arch, neuron, readout", [
    ("8C3-MP2-FC16-FC10", partial(neurons.LIF, beta=0.9), "same"),
    ("FC16-RFC16-FC10", partial(ALIF, recurrence="one_to_one", tau_adapt=5.0, adaptation=0.3), "li"),
])
def test_a_network_streams_one_step_at_a_time(arch, neuron, readout):
    torch.manual_seed(1)
    shape = (1, 10, 10) if "C" in arch else (12,)
    net = SpikingNetwork(arch, shape, 10, neuron=neuron, surrogate=surrogates.ATan(), readout_neuron=readout).eval()
    recurrent = [m.recurrent_weight for m in net.modules() if hasattr(m, "recurrent_weight")]
    with torch.no_grad():
        for weight in recurrent:  # one-to-one weights start at 0: the state would carry no spikes back
            weight.uniform_(-0.8, 0.8)
    x = torch.rand(9, 4, *shape) * 2
    net.record = True
    with torch.no_grad():
        spk, mem = net(x)
    net.record = False
    assert all(s.sum() > 0 for s in net.recorded[:-1])  # every hidden layer fires, the recurrent one included
    assert len(recurrent) == ("RFC" in arch)
    with torch.no_grad():
        state, steps = None, []
        for x_t in x:
            s, m, state = net.step(x_t, state)
            steps.append((s, m))
    assert torch.equal(spk, torch.stack([s for s, _ in steps]))
    torch.testing.assert_close(torch.stack([m for _, m in steps]), mem, rtol=1e-5, atol=1e-5)
