"""Neuron dynamics against hand-computed traces (SPEC section 2)."""

import math

import pytest
import torch

from snnrun.core import neurons, surrogates


def run(neuron, inputs):
    current = torch.tensor(inputs, dtype=torch.float64).view(-1, 1, 1)
    spk, mem = neuron.double()(current)
    return spk.flatten().tolist(), mem.flatten().tolist()


@pytest.mark.parametrize(
    "reset, spikes, mems",
    [
        # beta = 0.5, theta = 1, I = [0.8, 0.8, 0.8, 0.0, 1.5]
        ("subtract", [0, 1, 0, 0, 1], [0.8, 1.2, 0.4, 0.2, 1.6]),  # 0.6 + 0.8 - 1 = 0.4
        ("zero", [0, 1, 0, 0, 1], [0.8, 1.2, 0.8, 0.4, 1.7]),  # 0.5 * 0 * 1.2 + 0.8
        ("none", [0, 1, 1, 0, 1], [0.8, 1.2, 1.4, 0.7, 1.85]),
    ],
)
@pytest.mark.parametrize("fused", [True, False])
def test_lif_trace(reset, spikes, mems, fused):
    lif = neurons.LIF(beta=0.5, threshold=1.0, reset=reset, fused=fused)
    spk, mem = run(lif, [0.8, 0.8, 0.8, 0.0, 1.5])
    assert spk == spikes
    assert mem == pytest.approx(mems)


def test_threshold_is_strict():
    spk, mem = run(neurons.LIF(beta=0.5), [1.0, 0.0])
    assert spk == [0, 0] and mem == pytest.approx([1.0, 0.5])


def test_lif_tau_gives_beta_and_overrides_it():
    assert neurons.LIF(tau=10.0).beta.item() == pytest.approx(math.exp(-0.1))
    assert neurons.LIF(beta=0.5, tau=10.0).beta.item() == pytest.approx(math.exp(-0.1))


def test_lif_threshold_scales_reset():
    # theta = 2: U = [2.5, 0.5*2.5 + 1 - 2 = 0.25]
    spk, mem = run(neurons.LIF(beta=0.5, threshold=2.0), [2.5, 1.0])
    assert spk == [1, 0] and mem == pytest.approx([2.5, 0.25])


@pytest.mark.parametrize(
    "rectify, spikes, mems",
    [
        (True, [0, 0, 0, 1, 0], [0.6, 0.0, 0.7, 1.2, 0.2]),
        (False, [0, 0, 0, 0, 0], [0.6, -0.4, 0.3, 0.8, 1.0]),  # 1.0 does not cross a strict threshold
    ],
)
def test_if_trace(rectify, spikes, mems):
    spk, mem = run(neurons.IF(rectify=rectify), [0.6, -1.0, 0.7, 0.5, 0.2])
    assert spk == spikes
    assert mem == pytest.approx(mems)


def test_if_with_synaptic_current():
    # alpha = exp(-1) (seed 000: dt = tau_cur); J = [1.2, 1.2a], U = [1.2 -> spike, reset to 0 then + J]
    a = math.exp(-1)
    spk, mem = run(neurons.IF(tau_syn=1.0), [1.2, 0.0, 0.0])
    assert spk == [1, 0, 0]
    assert mem == pytest.approx([1.2, 1.2 * a, 1.2 * a + 1.2 * a * a])


def test_synaptic_trace():
    # alpha = beta = 0.5: J = [1.2, 0.6, 0.3, 0.15]; U = [1.2, 0.6 + 0.6 - 1, 0.1 + 0.3, 0.2 + 0.15]
    spk, mem = run(neurons.Synaptic(alpha=0.5, beta=0.5), [1.2, 0.0, 0.0, 0.0])
    assert spk == [1, 0, 0, 0]
    assert mem == pytest.approx([1.2, 0.2, 0.4, 0.35])


def test_graded_trace():
    # d = 0.9, theta = 2, theta_p = 2.5; H = 3 -> O = 1, H <- 3 - 3.5 = -0.5; then -0.45; then 0.595
    spk, mem = run(neurons.Graded(), [3.0, 0.0, 1.0, 0.0])
    assert spk == pytest.approx([0.0, 1.0, 0.0, 0.0])  # delayed by one step
    assert mem == pytest.approx([0.0, -0.5, -0.45, 0.595])  # the state after the over-reset


def test_graded_output_is_differentiable():
    current = torch.full((4, 1, 1), 3.0, requires_grad=True)
    out, _ = neurons.Graded()(current)
    out.sum().backward()
    assert current.grad.abs().sum() > 0


def test_learned_beta_stays_in_range_and_gets_gradient():
    lif = neurons.LIF(beta=0.9, learn_beta=True, per_neuron=True, shape=(3,))
    assert lif.beta.shape == (3,) and torch.allclose(lif.beta, torch.tensor(0.9))
    with torch.no_grad():
        lif.beta_logit.fill_(50.0)  # an optimiser overshooting cannot push beta past 1
    assert torch.all(lif.beta <= 1) and torch.all(lif.beta > 0)
    lif.beta_logit.data.fill_(2.0)
    _, mem = lif(torch.rand(5, 2, 3))
    mem.sum().backward()
    assert lif.beta_logit.grad is not None and torch.all(lif.beta_logit.grad != 0)


def test_learned_threshold_gets_gradient():
    lif = neurons.LIF(beta=0.9, learn_threshold=True, surrogate=surrogates.FastSigmoid())
    spk, _ = lif(torch.rand(10, 4, 8) * 0.6)
    spk.sum().backward()
    assert lif.log_threshold.grad is not None and lif.log_threshold.grad.item() != 0
    assert lif.threshold.item() == pytest.approx(1.0)


def test_detach_reset_changes_only_gradients():
    torch.manual_seed(0)
    x = torch.rand(20, 3, 5) * 0.8
    results = []
    for detach in (True, False):
        xi = x.clone().requires_grad_()
        spk, mem = neurons.LIF(beta=0.9, detach_reset=detach)(xi)
        mem.sum().backward()
        results.append((spk, mem, xi.grad))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])
    assert not torch.allclose(results[0][2], results[1][2])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(beta=1.5), "beta"),
        (dict(beta=0.0), "beta"),
        (dict(threshold=0.0), "threshold"),
        (dict(reset="soft"), "reset"),
        (dict(tau=-1.0), "tau"),
        (dict(beta=1.0, learn_beta=True), "learn_beta"),
    ],
)
def test_bad_parameters_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        neurons.LIF(**kwargs)


def _forward_backward(cls, fused, current, weights, tbptt=0, **kwargs):
    torch.manual_seed(0)
    neuron = cls(fused=fused, **kwargs).double()
    neurons.truncate(neuron, tbptt)
    x = current.clone().requires_grad_()
    spk, mem = neuron(x)
    ((spk * weights[0]).sum() + (mem * weights[1]).sum()).backward()
    return spk, mem, x.grad, {n: p.grad for n, p in neuron.named_parameters()}


@pytest.mark.parametrize("cls", [neurons.LIF, neurons.Synaptic])
@pytest.mark.parametrize("reset", ["subtract", "zero", "none"])
@pytest.mark.parametrize("detach_reset", [True, False])
@pytest.mark.parametrize("rectify", [False, True])
@pytest.mark.parametrize("per_neuron", [False, True])
@pytest.mark.parametrize("tbptt", [0, 5])
def test_fused_time_loop_matches_step_by_step_autograd(cls, reset, detach_reset, rectify, per_neuron, tbptt):
    """The fused op's hand-written BPTT gives autograd's gradients for every option, truncated or not."""
    torch.manual_seed(3)
    current = torch.randn(24, 4, 3, 5, dtype=torch.float64) * 0.8
    current[5] = 0  # exact zeros: U = 0 exactly at the rectifier
    weights = torch.randn(2, 24, 4, 3, 5, dtype=torch.float64)
    kwargs = dict(beta=0.8, threshold=0.7, reset=reset, detach_reset=detach_reset, rectify=rectify,
                  learn_beta=True, learn_threshold=True, per_neuron=per_neuron, shape=(3, 5),
                  surrogate=surrogates.FastSigmoid(5.0))
    ref = _forward_backward(cls, False, current, weights, tbptt=tbptt, **kwargs)
    fused = _forward_backward(cls, True, current, weights, tbptt=tbptt, **kwargs)
    assert ref[0].sum() > 0 and torch.equal(ref[0], fused[0])
    torch.testing.assert_close(fused[1], ref[1], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fused[2], ref[2], rtol=1e-10, atol=1e-10)
    assert fused[3].keys() == ref[3].keys() == {"beta_logit", "log_threshold"}
    for name in ref[3]:
        torch.testing.assert_close(fused[3][name], ref[3][name], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("surrogate", [surrogates.ATan(), surrogates.Sigmoid(), surrogates.Triangular(0.5),
                                       surrogates.StraightThrough(), surrogates.Heaviside()])
def test_fused_uses_any_surrogate(surrogate):
    current = torch.randn(10, 3, 7, dtype=torch.float64)
    weights = torch.randn(2, 10, 3, 7, dtype=torch.float64)
    ref = _forward_backward(neurons.LIF, False, current, weights, surrogate=surrogate, learn_beta=True,
                            learn_threshold=True)
    fused = _forward_backward(neurons.LIF, True, current, weights, surrogate=surrogate, learn_beta=True,
                              learn_threshold=True)
    assert torch.equal(fused[0], ref[0])
    torch.testing.assert_close(fused[2], ref[2], rtol=1e-10, atol=1e-10)
    assert fused[3].keys() == ref[3].keys() == {"beta_logit", "log_threshold"}
    for name in ref[3]:
        torch.testing.assert_close(fused[3][name], ref[3][name], rtol=1e-10, atol=1e-10)


def test_fused_with_only_spikes_or_only_membrane_used():
    current = torch.randn(10, 3, 7, dtype=torch.float64)
    for used in (0, 1):
        grads = []
        for fused in (False, True):
            x = current.clone().requires_grad_()
            neurons.LIF(fused=fused).double()(x)[used].sum().backward()
            grads.append(x.grad)
        torch.testing.assert_close(grads[1], grads[0], rtol=1e-10, atol=1e-10)


def test_rectifier_passes_gradient_straight_through():
    """max(U, 0) forward, gradient 1 backward in both paths, also where U was clamped: a neuron
    held at 0 still learns (with max's own gradient a silent output neuron never recovers)."""
    for fused in (True, False):
        layer = neurons.LIF(beta=0.5, rectify=True, reset="zero", fused=fused)
        current = torch.tensor([0.0, 0.5, -2.0, 0.25]).reshape(4, 1, 1).requires_grad_()
        spk, mem = layer(current)
        mem.sum().backward()
        assert mem.flatten().tolist() == [0.0, 0.5, 0.0, 0.25]
        # no spikes, so dL/dI[t] = sum over k >= 0 of beta^k for the steps t..3, clamped or not
        assert current.grad.flatten().tolist() == [1.875, 1.75, 1.5, 1.0]
