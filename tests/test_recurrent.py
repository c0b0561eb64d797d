"""rlif, alif and the li readout: hand-computed traces, the fused op against step-by-step autograd
in float64 (spikes, membranes and every gradient), and the RFC token in networks."""

import math
from functools import partial

import pytest
import torch
from conftest import layer_grads

from snnrun.core import neurons, surrogates
from snnrun.core.architectures import ArchitectureError, SpikingNetwork, parse
from snnrun.core.options import OptionError
from snnrun.core.recurrent import ALIF, RLIF


def test_alif_trace_by_hand():
    """beta = 0.5, rho = 0.5 (tau_adapt = 1/ln 2), b = 1, theta0 = 1, subtract reset, one neuron:
    t  I    a       theta   U
    0  1.5  0       1       1.5                          S=1
    1  0    0.5     1.5     0.5*1.5 + 0 - 1*1 = -0.25    S=0  (the reset subtracts theta[0] = 1)
    2  1.2  0.25    1.25    -0.125 + 1.2 = 1.075         S=0  (below the raised threshold)
    3  1.2  0.125   1.125   0.5375 + 1.2 = 1.7375        S=1
    4  0    0.5625  1.5625  0.86875 - 1.125 = -0.25625   S=0
    """
    layer = ALIF(beta=0.5, tau_adapt=1 / math.log(2), adaptation=1.0, threshold=1.0, shape=(1,))
    current = torch.tensor([1.5, 0.0, 1.2, 1.2, 0.0]).reshape(5, 1, 1)
    for fused in (True, False):
        layer.fused = fused
        spk, mem = layer(current)
        assert spk.flatten().tolist() == [1, 0, 0, 1, 0]
        torch.testing.assert_close(mem.flatten(), torch.tensor([1.5, -0.25, 1.075, 1.7375, -0.25625]))


def test_li_trace_by_hand():
    """beta = 0.5: U = 1, 0.5 + 2 = 2.5, 1.25 + 0 = 1.25, 0.625 - 1 = -0.375; never spikes, never resets."""
    layer = neurons.LI(beta=0.5)
    current = torch.tensor([1.0, 2.0, 0.0, -1.0]).reshape(4, 1, 1) * 100
    for fused in (True, False):
        layer.fused = fused
        spk, mem = layer(current)
        assert spk.sum() == 0
        torch.testing.assert_close(mem.flatten(), torch.tensor([100.0, 250.0, 125.0, -37.5]))


def test_rlif_trace_by_hand():
    """one_to_one, v = -0.5, beta = 0.5, zero reset: the spike at t = 0 inhibits t = 1 through V.
    U = 1.2 (S=1); 0.5*(1-1)*1.2 + 0.8 - 0.5 = 0.3; 0.15 + 0.8 = 0.95; 0.475 + 0.8 = 1.275 (S=1)."""
    layer = RLIF(beta=0.5, reset="zero", recurrence="one_to_one", recurrent=True, shape=(1,))
    with torch.no_grad():
        layer.recurrent_weight.fill_(-0.5)
    current = torch.tensor([1.2, 0.8, 0.8, 0.8]).reshape(4, 1, 1)
    for fused in (True, False):
        layer.fused = fused
        spk, mem = layer(current)
        assert spk.flatten().tolist() == [1, 0, 0, 1]
        torch.testing.assert_close(mem.flatten(), torch.tensor([1.2, 0.3, 0.95, 1.275]))


CASES = [(cls, recurrence, reset) for cls in (RLIF, ALIF) for recurrence in ("all_to_all", "one_to_one", None)
         for reset in ("subtract", "zero", "none") if not (cls is RLIF and recurrence is None)]


@pytest.mark.parametrize("tbptt", [0, 7])
@pytest.mark.parametrize("detach_reset", [True, False])
@pytest.mark.parametrize("cls, recurrence, reset", CASES)
def test_fused_matches_step_by_step_in_float64(cls, recurrence, reset, detach_reset, tbptt):
    """Spikes identical; membranes and the gradients of the input, the learned per-neuron beta and
    threshold and the recurrent weights within 1e-10, with full or truncated BPTT."""
    torch.manual_seed(0)
    n = 6
    extra = {"tau_adapt": 5.0, "adaptation": 0.7} if cls is ALIF else {}
    layer = cls(beta=0.8, reset=reset, recurrence=recurrence or "all_to_all", recurrent=recurrence is not None,
                shape=(n,), learn_beta=True, learn_threshold=True, per_neuron=True, detach_reset=detach_reset,
                **extra).double()
    neurons.truncate(layer, tbptt)
    if recurrence == "one_to_one":
        with torch.no_grad():
            layer.recurrent_weight.uniform_(-1, 1)
    current = torch.randn(20, 3, n, dtype=torch.float64) * 0.8 + 0.3
    weights = torch.randn(2, 20, 3, n, dtype=torch.float64)
    layer.fused = True
    s1, m1, g1, p1 = layer_grads(layer, current, weights)
    layer.fused = False
    s2, m2, g2, p2 = layer_grads(layer, current, weights)
    assert 0 < s1.mean() < 1 and torch.equal(s1, s2)
    torch.testing.assert_close(m1, m2, atol=1e-10, rtol=0)
    torch.testing.assert_close(g1, g2, atol=1e-10, rtol=0)
    names = {"beta_logit", "log_threshold"} | ({"recurrent_weight"} if recurrence else set())
    assert names <= set(p1) and p1.keys() == p2.keys()
    for name in p1:
        assert p1[name].abs().sum() > 0, name
        torch.testing.assert_close(p1[name], p2[name], atol=1e-10, rtol=0)


def test_rectified_alif_fused_matches_step_by_step():
    torch.manual_seed(1)
    layer = ALIF(beta=0.9, tau_adapt=10.0, adaptation=0.5, rectify=True, recurrent=True, shape=(5,), learn_beta=True,
                 learn_threshold=True).double()
    current = torch.randn(15, 2, 5, dtype=torch.float64)
    weights = torch.randn(2, 15, 2, 5, dtype=torch.float64)
    out = [layer_grads(layer, current, weights) for layer.fused in (True, False)]
    assert torch.equal(out[0][0], out[1][0]) and (out[0][1] >= 0).all() and (out[0][1] == 0).any()  # rectified
    for a, b in zip(out[0][1:3], out[1][1:3]):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)
    assert out[0][3].keys() == out[1][3].keys() >= {"beta_logit", "log_threshold", "recurrent_weight"}
    for name, grad in out[0][3].items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(grad, out[1][3][name], atol=1e-10, rtol=0)


def test_li_learns_its_decay_per_neuron():
    layer = neurons.LI(beta=0.9, learn_beta=True, per_neuron=True, shape=(3,)).double()
    current, weights = torch.randn(10, 2, 3, dtype=torch.float64), torch.randn(2, 10, 2, 3, dtype=torch.float64)
    grads = [layer_grads(layer, current, weights)[3]["beta_logit"] for layer.fused in (True, False)]
    assert grads[0].shape == (3,) and (grads[0] != 0).all()
    torch.testing.assert_close(grads[0], grads[1], atol=1e-10, rtol=0)


def test_a_recurrent_layer_takes_an_image_flattened_as_fc_does():
    """4C5-RFC10 or RFC32 on [1, 28, 28] (snnTorch's Flatten -> Linear -> RLeaky): the input is flattened first."""
    for arch, flat in (("4C5-RFC16-FC10", 4 * 24 * 24), ("RFC16-FC10", 28 * 28)):
        net = SpikingNetwork(arch, (1, 28, 28), 10, neuron=partial(RLIF))
        block = next(b for b in net.blocks if getattr(b.neuron, "recurrence", None))
        assert isinstance(block.stateless[0], torch.nn.Flatten) and block.stateless[-1].in_features == flat
        spk, _ = net(torch.rand(5, 2, 1, 28, 28), time_steps=None)
        assert spk.shape == (5, 2, 10)


def test_rfc_token_parses_and_builds_a_recurrent_layer():
    assert parse("FC64-RFC32-FC10") == [("FC64", "fc", (64,)), ("RFC32", "rfc", (32,)), ("FC10", "fc", (10,))]
    net = SpikingNetwork("RFC32-FC10", (28,), 10, neuron=partial(ALIF), readout_neuron="li")
    hidden, readout = (b.neuron for b in net.blocks)
    assert isinstance(hidden, ALIF) and hidden.recurrence == "all_to_all" and hidden.recurrent_weight.shape == (32, 32)
    assert isinstance(readout, neurons.LI) and readout.beta == hidden.beta
    spk, mem = net(torch.rand(12, 4, 28) * 3)
    assert spk.shape == mem.shape == (12, 4, 10) and spk.sum() == 0  # li does not spike
    assert net.firing_rates[0] > 0


@pytest.mark.parametrize("arch, neuron, reason", [
    ("RFC32-FC10", neurons.LIF, "needs neuron=rlif or neuron=alif"),
    ("FC32-FC10", RLIF, "has none"),
    ("RFCx-FC10", RLIF, "expected"),
])
def test_rfc_refusals(arch, neuron, reason):
    shape = (1, 8, 8) if "C5" in arch else (28,)
    with pytest.raises(ArchitectureError, match=reason):
        SpikingNetwork(arch, shape, 10, neuron=partial(neuron))


def test_surrogate_gradient_reaches_the_recurrent_weights_through_time():
    """Only the recurrent path links S[t-1] to U[t] here: a loss on the last step alone must
    reach V through the earlier steps' spikes."""
    torch.manual_seed(3)
    layer = RLIF(beta=0.5, recurrent=True, shape=(8,), surrogate=surrogates.FastSigmoid())
    spk, mem = layer(torch.rand(6, 4, 8) * 2)
    mem[-1].sum().backward()
    assert layer.recurrent_weight.grad.abs().sum() > 0 and layer.recurrent_bias.grad.abs().sum() > 0


def test_recurrent_weights_start_as_configured():
    """model.recurrent_init: zeros (SRNN), orthogonal with a gain; default keeps Linear's (and one-to-one 0)."""
    from snnrun.core.recurrent import RLIF

    def net(init, recurrence="all_to_all", gain=1.0):
        torch.manual_seed(0)
        return SpikingNetwork("RFC16-FC4", (8,), 4, neuron=partial(RLIF, recurrence=recurrence),
                              recurrent_init=init, recurrent_gain=gain).blocks[0].neuron

    assert net("zeros").recurrent_weight.abs().sum() == 0 and net("zeros").recurrent_bias.abs().sum() == 0
    w = net("orthogonal", gain=2.0).recurrent_weight.detach()
    torch.testing.assert_close(w @ w.T, 4 * torch.eye(16), atol=1e-5, rtol=0)
    v = net("orthogonal", "one_to_one", gain=0.5).recurrent_weight.detach()
    assert set(v.tolist()) <= {0.5, -0.5} and len(set(v.tolist())) == 2
    assert net("default", "one_to_one").recurrent_weight.abs().sum() == 0  # default one-to-one: V = 0
    with pytest.raises(OptionError, match="recurrent_init must be default or zeros or orthogonal"):
        SpikingNetwork("RFC16-FC4", (8,), 4, neuron=RLIF, recurrent_init="identity")


def test_time_constants_spread_per_neuron_as_configured():
    """tau_std: each neuron's tau ~ N(tau, tau_std) (at least 1 step), beta = exp(-1/tau); learned too."""
    from snnrun.core.neurons import LIF

    torch.manual_seed(0)
    lif = LIF(tau=20.0, tau_std=5.0, per_neuron=True, shape=(4000,), learn_beta=True)
    taus = -1 / torch.log(lif.beta.detach().double())
    assert abs(taus.mean().item() - 20.0) < 0.3 and abs(taus.std().item() - 5.0) < 0.3 and taus.min() >= 1 - 1e-9
    for bad in (dict(beta=0.9, tau_std=5.0, per_neuron=True, shape=(4,)), dict(tau=20.0, tau_std=5.0)):
        with pytest.raises(OptionError, match="tau_std"):
            LIF(**bad)
