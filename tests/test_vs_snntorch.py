"""snnrun against snnTorch itself (the `compare` extra); skipped when snnTorch is absent."""

import numpy as np
import pytest
import torch

snn = pytest.importorskip("snntorch")
from snntorch import functional as SF  # noqa: E402
from snntorch import surrogate as snn_surrogate  # noqa: E402

from snnrun.core import losses, neurons, surrogates  # noqa: E402

SURROGATES = {
    "atan": (surrogates.ATan(alpha=2.0), lambda: snn_surrogate.atan(alpha=2.0)),
    "fast_sigmoid": (surrogates.FastSigmoid(slope=25.0), lambda: snn_surrogate.fast_sigmoid(slope=25)),
}


def snntorch_run(layer, current, *states):
    out = []
    for i_t in current:
        res = layer(i_t, *states)
        states = res[1:]
        out.append((res[0], res[-1]))
    return torch.stack([s for s, _ in out]), torch.stack([m for _, m in out])


def grads(fn, current, weights):
    x = current.clone().requires_grad_()
    spk, mem = fn(x)
    ((spk * weights[0]).sum() + (mem * weights[1]).sum()).backward()
    return spk.detach(), mem.detach(), x.grad


@pytest.mark.parametrize("surrogate", sorted(SURROGATES))
@pytest.mark.parametrize("reset", ["subtract", "zero", "none"])
@pytest.mark.parametrize("beta", [0.5, 0.95])
def test_lif_matches_leaky(beta, reset, surrogate):
    torch.manual_seed(1)
    current = torch.randn(30, 4, 64) * 0.7 + 0.3
    weights = torch.randn(2, 30, 4, 64)
    ours, theirs_grad = SURROGATES[surrogate]
    lif = neurons.LIF(beta=beta, threshold=1.0, reset=reset, surrogate=ours)
    leaky = snn.Leaky(beta=beta, threshold=1.0, reset_mechanism=reset, spike_grad=theirs_grad())
    mem0 = leaky.reset_mem()

    s1, m1, g1 = grads(lif, current, weights)
    s2, m2, g2 = grads(lambda x: snntorch_run(leaky, x, mem0), current, weights)
    assert s1.sum() > 0 and torch.equal(s1, s2)
    torch.testing.assert_close(m1, m2, atol=1e-6, rtol=0)
    torch.testing.assert_close(g1, g2, atol=1e-5, rtol=1e-6)  # float32 rounding of gradients up to ~30


@pytest.mark.parametrize("reset", ["subtract", "none"])
def test_synaptic_matches_snntorch(reset):
    torch.manual_seed(2)
    current = torch.randn(30, 4, 64) * 0.5 + 0.2
    weights = torch.randn(2, 30, 4, 64)
    ours = neurons.Synaptic(alpha=0.8, beta=0.9, reset=reset, surrogate=surrogates.ATan())
    theirs = snn.Synaptic(alpha=0.8, beta=0.9, reset_mechanism=reset, spike_grad=snn_surrogate.atan())
    syn0, mem0 = theirs.reset_mem()

    s1, m1, g1 = grads(ours, current, weights)
    s2, m2, g2 = grads(lambda x: snntorch_run(theirs, x, syn0, mem0), current, weights)
    assert s1.sum() > 0 and torch.equal(s1, s2)
    torch.testing.assert_close(m1, m2, atol=1e-6, rtol=0)
    torch.testing.assert_close(g1, g2, atol=1e-5, rtol=1e-6)  # float32 rounding of gradients up to ~30


@pytest.fixture
def outputs():
    g = torch.Generator().manual_seed(3)
    spk = (torch.rand(25, 16, 10, generator=g) < 0.3).float().requires_grad_()
    mem = torch.randn(25, 16, 10, generator=g, requires_grad=True)
    target = torch.randint(0, 10, (16,), generator=g)
    return spk, mem, target


def check(ours, theirs, *tensors):
    theirs = theirs.reshape(())  # some snnTorch losses return shape [1]
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-6)
    g1 = torch.autograd.grad(ours, tensors)
    g2 = torch.autograd.grad(theirs, tensors)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_spike_rate_ce_matches_ce_rate_loss(outputs):
    spk, mem, y = outputs
    check(losses.SpikeRateCE()(spk, mem, y), SF.ce_rate_loss()(spk, y), spk)


def test_spike_count_ce_matches_ce_count_loss(outputs):
    spk, mem, y = outputs
    check(losses.SpikeCountCE()(spk, mem, y), SF.ce_count_loss()(spk, y), spk)


@pytest.mark.parametrize("correct, incorrect", [(1.0, 0.0), (0.8, 0.2)])
def test_mse_count_matches_mse_count_loss(outputs, correct, incorrect):
    spk, mem, y = outputs  # T = 25: 25 * 0.8 and 25 * 0.2 are whole, so snnTorch's int() is exact
    theirs = SF.mse_count_loss(correct_rate=correct, incorrect_rate=incorrect)(spk, y)
    check(losses.MSECount(correct, incorrect)(spk, mem, y), theirs, spk)


def test_membrane_ce_matches_seed_001_loop(outputs):
    spk, mem, y = outputs
    ce = torch.nn.CrossEntropyLoss()
    theirs = torch.zeros(())
    for step in range(mem.shape[0]):
        theirs = theirs + ce(mem[step], y)
    check(losses.MembraneCE()(spk, mem, y), theirs, mem)


def test_poisson_statistics_match_spikegen_rate():
    from snntorch import spikegen

    from snnrun.core import encoders

    x = torch.linspace(0, 1, 11).repeat(64, 1)
    ours = encoders.Poisson(gain=0.8)(x, 400, torch.Generator().manual_seed(0)).mean(0)
    theirs = spikegen.rate(x, num_steps=400, gain=0.8).mean(0)
    torch.testing.assert_close(ours.mean(0), 0.8 * x[0], atol=0.02, rtol=0)
    torch.testing.assert_close(ours.mean(0), theirs.mean(0), atol=0.03, rtol=0)


def rleaky_pair(n, all_to_all, reset):
    """Our rlif and snnTorch's RLeaky with the same recurrent weights."""
    from snnrun.core.recurrent import RLIF

    ours = RLIF(beta=0.9, reset=reset, recurrence="all_to_all" if all_to_all else "one_to_one", recurrent=True,
                shape=(n,), surrogate=surrogates.ATan())
    if all_to_all:
        theirs = snn.RLeaky(beta=0.9, linear_features=n, all_to_all=True, reset_mechanism=reset,
                            spike_grad=snn_surrogate.atan())
        with torch.no_grad():
            theirs.recurrent.weight.copy_(ours.recurrent_weight)
            theirs.recurrent.bias.copy_(ours.recurrent_bias)
    else:
        v = torch.rand(n) - 0.5
        with torch.no_grad():
            ours.recurrent_weight.copy_(v)
        theirs = snn.RLeaky(beta=0.9, all_to_all=False, V=v.clone(), reset_mechanism=reset,
                            spike_grad=snn_surrogate.atan())
    return ours, theirs


def rleaky_run(layer, current):
    spk, mem = layer.reset_mem()
    out = []
    for i_t in current:
        spk, mem = layer(i_t, spk, mem)
        out.append((spk, mem))
    return torch.stack([s for s, _ in out]), torch.stack([m for _, m in out])


@pytest.mark.parametrize("reset", ["subtract", "none"])
@pytest.mark.parametrize("all_to_all", [True, False], ids=["all_to_all", "one_to_one"])
def test_rlif_matches_rleaky(all_to_all, reset):
    """Same spikes, membranes within 1e-6; gradients of the input and of V within 1e-5 of the
    largest gradient (float32 sums over 30 recurrent steps reach tens to hundreds)."""
    torch.manual_seed(3)
    current = torch.randn(30, 4, 32) * 0.7 + 0.3
    weights = torch.randn(2, 30, 4, 32)
    ours, theirs = rleaky_pair(32, all_to_all, reset)
    results = []
    for layer, fn in ((ours, ours), (theirs, lambda x: rleaky_run(theirs, x))):
        x = current.clone().requires_grad_()
        spk, mem = fn(x)
        ((spk * weights[0]).sum() + (mem * weights[1]).sum()).backward()
        results.append((spk.detach(), mem.detach(), [x.grad] + [p.grad for p in layer.parameters() if p.grad is not None]))
    (s1, m1, g1), (s2, m2, g2) = results
    assert 0 < s1.mean() < 1 and torch.equal(s1, s2)
    torch.testing.assert_close(m1, m2, atol=1e-6, rtol=0)
    assert len(g1) == len(g2) == (3 if all_to_all else 2)  # input, then W and c, or v
    for a, b in zip(g1, g2):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, atol=1e-5 * b.abs().max().item(), rtol=0)


def first_resets(spikes):
    """(t, b, n) of each neuron's first spike, for neurons whose first spike leaves a next step (the reset)."""
    first = spikes.argmax(0)
    return [(t, b, n) for (b, n), t in ((idx, first[idx].item()) for idx in np.ndindex(*first.shape))
            if spikes[t, b, n] and t < spikes.shape[0] - 1]


def test_rlif_zero_reset_keeps_the_step_input_rleaky_drops_it():
    """rlif's reset=zero is lif's (and snnTorch Leaky's): U[t] = beta*(1 - R)*U[t-1] + I[t] + V(S[t-1]).
    RLeaky's zeroes the whole update, input included: U[t] = (1 - R)*(beta*U[t-1] + I[t] + V(S[t-1])).
    The two agree until a neuron's first reset; at that step RLeaky's membrane is 0 and ours is
    the step's input."""
    torch.manual_seed(4)
    current = torch.randn(30, 4, 16) * 0.7 + 0.3
    ours, theirs = rleaky_pair(16, False, "zero")  # one_to_one: each neuron on its own
    with torch.no_grad():
        s1, m1 = ours(current)
        s2, m2 = rleaky_run(theirs, current)
    resets = first_resets(s1)
    for t, b, j in resets:
        torch.testing.assert_close(m1[: t + 1, b, j], m2[: t + 1, b, j], atol=1e-6, rtol=0)
        rec = ours.recurrent_input(s1[t, b])[j]
        assert m2[t + 1, b, j] == 0
        torch.testing.assert_close(m1[t + 1, b, j], current[t + 1, b, j] + rec, atol=1e-6, rtol=0)
    assert len(resets) > 32


def test_synaptic_zero_reset_keeps_the_step_current_snntorch_drops_it():
    """Ours: U[t] = beta*(1 - R)*U[t-1] + J[t]. snnTorch's Synaptic (reset_delay=True, its default):
    U[t] = (1 - R)*(beta*U[t-1] + J[t]); in both J[t] = alpha*J[t-1] + I[t] is never reset. The
    two agree up to each neuron's first spike; at the next step snnTorch's membrane is 0 and ours
    is J of that step."""
    torch.manual_seed(6)
    current = torch.randn(30, 4, 16) * 0.5 + 0.2
    ours = neurons.Synaptic(alpha=0.8, beta=0.9, reset="zero", surrogate=surrogates.ATan())
    theirs = snn.Synaptic(alpha=0.8, beta=0.9, reset_mechanism="zero", spike_grad=snn_surrogate.atan())
    syn, mem = theirs.reset_mem()
    m2, syns = [], []
    with torch.no_grad():
        s1, m1 = ours(current)
        for i_t in current:
            _, syn, mem = theirs(i_t, syn, mem)
            m2.append(mem)
            syns.append(syn)
    m2, syns = torch.stack(m2), torch.stack(syns)
    j = torch.zeros_like(current[0])
    currents = []
    for i_t in current:
        j = 0.8 * j + i_t
        currents.append(j)
    currents = torch.stack(currents)
    torch.testing.assert_close(syns, currents, atol=1e-6, rtol=0)  # snnTorch keeps J through its resets
    resets = first_resets(s1)
    for t, b, n in resets:
        torch.testing.assert_close(m1[: t + 1, b, n], m2[: t + 1, b, n], atol=1e-6, rtol=0)
        assert m2[t + 1, b, n] == 0
        torch.testing.assert_close(m1[t + 1, b, n], currents[t + 1, b, n], atol=1e-6, rtol=0)
    assert len(resets) > 32
