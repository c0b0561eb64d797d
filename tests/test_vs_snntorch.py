"""snnrun against snnTorch itself (the `compare` extra); skipped when snnTorch is absent."""

import pytest
import torch

snn = pytest.importorskip("snntorch")
from snntorch import functional as SF  # noqa: E402
from snntorch import surrogate as snn_surrogate  # noqa: E402

from snnrun import losses, neurons, surrogates  # noqa: E402

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
    torch.testing.assert_close(g1, g2, atol=1e-5, rtol=0)


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
    torch.testing.assert_close(g1, g2, atol=1e-5, rtol=0)


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

    from snnrun import encoders

    x = torch.linspace(0, 1, 11).repeat(64, 1)
    ours = encoders.Poisson(gain=0.8)(x, 400, torch.Generator().manual_seed(0)).mean(0)
    theirs = spikegen.rate(x, num_steps=400, gain=0.8).mean(0)
    torch.testing.assert_close(ours.mean(0), 0.8 * x[0], atol=0.02, rtol=0)
    torch.testing.assert_close(ours.mean(0), theirs.mean(0), atol=0.03, rtol=0)
