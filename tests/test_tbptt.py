"""Truncated BPTT (``trainer.tbptt=k``): a hand-sized case, what is cut and what is kept, and the option
from the config (the fused ops equal the step-by-step loop under truncation in test_neurons/test_recurrent)."""

import math

import pytest
import torch
from omegaconf import OmegaConf

from conftest import FAST
from snnrun.core import neurons
from snnrun.core.parallel import PSN
from snnrun.core.recurrent import ALIF
from snnrun.run.assembly import assemble
from snnrun.run.logger import RunLogger
from snnrun.run.loop import Trainer
from snnrun.run.rules import ConfigError


@pytest.mark.parametrize("fused", [True, False])
def test_truncated_gradients_by_hand(fused):
    """No spikes (theta high), beta = 0.5, L = U[3], k = 2: U[3] = b*U[2] + I[3] and U[2] = b*U[1] + I[2] with U[1]
    detached. dL/dI = [0, 0, b, 1] (full: [b^3, b^2, b, 1]); dL/db = U[2] + b*U[1] (full adds b^2*U[0])."""
    b, current = 0.5, torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64).reshape(4, 1, 1)
    grads = {}
    for k in (0, 2):
        layer = neurons.LIF(beta=b, threshold=100.0, learn_beta=True, fused=fused).double()
        neurons.truncate(layer, k)
        x = current.clone().requires_grad_()
        _, mem = layer(x)
        mem[3].sum().backward()
        u = [1.0, 2.5, 4.25, 6.125]  # U[t] = b*U[t-1] + I[t]
        assert mem.flatten().tolist() == u  # truncation never changes the forward pass
        dbeta_dlogit = b * (1 - b)  # beta = sigmoid(w)
        grads[k] = x.grad.flatten().tolist(), layer.beta_logit.grad.item() / dbeta_dlogit
    assert grads[0][0] == [b**3, b**2, b, 1.0]
    assert grads[0][1] == pytest.approx(4.25 + b * 2.5 + b**2 * 1.0)
    assert grads[2][0] == [0.0, 0.0, b, 1.0]
    assert grads[2][1] == pytest.approx(4.25 + b * 2.5)


def test_a_truncated_alif_still_learns_its_weights_from_every_step():
    """The recurrent weights' gradient keeps the term of each chunk's first step (S[t-1] detached, W not)."""
    torch.manual_seed(0)
    layer = ALIF(beta=0.9, tau_adapt=8.0, adaptation=0.5, recurrent=True, recurrence="one_to_one", shape=(4,)).double()
    with torch.no_grad():
        layer.recurrent_weight.fill_(0.3)
    current = torch.rand(12, 3, 4, dtype=torch.float64) * 1.5
    grads = {}
    for k in (0, 1, 4):
        neurons.truncate(layer, k)
        layer.zero_grad()
        x = current.clone().requires_grad_()
        spk, mem = layer(x)
        mem.sum().backward()
        grads[k] = x.grad.clone(), layer.recurrent_weight.grad.clone()
    assert not torch.equal(grads[0][0], grads[4][0]) and not torch.equal(grads[4][0], grads[1][0])
    # k = 1 cuts every state path: dL/dI[t] is dL/dU[t] = 1 plus no later term
    torch.testing.assert_close(grads[1][0], torch.ones_like(current))
    # with k = 1 the weights' gradient is sum_t dL/dU[t] * S[t-1] = the spikes of steps 0..T-2
    assert grads[1][1].abs().sum() > 0
    torch.testing.assert_close(grads[1][1], spk[:-1].detach().sum((0, 1)))


def test_truncate_reaches_every_layer_with_a_state():
    layers = torch.nn.Sequential(neurons.LIF(), neurons.Synaptic(), neurons.Graded(), PSN(time_steps=4), neurons.LI())
    assert neurons.truncate(layers, 3) == 4
    assert [getattr(m, "tbptt", None) for m in layers] == [3, 3, 3, None, 3]


def test_the_option_from_the_config_trains(compose, tmp_path):
    cfg = compose(*FAST, "device=cpu", "trainer.curve_points=0", "neuron=alif", "model.arch=FC16-RFC16-FC10",
                  "trainer.tbptt=3", "trainer.max_steps=2")
    a = assemble(cfg)
    assert [m.tbptt for m in a.parts.model.modules() if isinstance(m, neurons.SpikingNeuron)] == [3, 3, 3]
    trainer = Trainer(a.parts, a.data, a.options, run_dir=tmp_path, logger=RunLogger(tmp_path, {}),
                      config=OmegaConf.to_container(cfg, resolve=True))
    results = trainer.fit()
    assert results["steps"] == 2 and math.isfinite(results["test_loss"])


@pytest.mark.parametrize("value", [-1, 2.5, "x"])
def test_bad_values_are_refused(compose, value):
    with pytest.raises(ConfigError, match="trainer.tbptt"):
        assemble(compose(*FAST, "device=cpu", f"trainer.tbptt={value}"))


def test_a_network_without_state_is_refused(compose):
    with pytest.raises(ConfigError, match="nothing to truncate"):
        assemble(compose(*FAST, "device=cpu", "neuron=psn", "trainer.tbptt=4"))
