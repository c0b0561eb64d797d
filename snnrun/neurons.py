"""Spiking neuron layers, multi-step and time-first: current [T, B, *] -> (spikes, membrane).

Notation (SPEC section 1): input current I[t], synaptic current J[t], membrane U[t],
spike S[t] = H(U[t] - theta), reset R[t] = S[t-1] (detached unless ``detach_reset=False``).
The returned membrane is U[t] before its reset, which happens at step t+1 (snnTorch's
convention), so ``lif`` reproduces ``snntorch.Leaky`` step for step.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .surrogates import ATan, Surrogate

RESETS = ("subtract", "zero", "none")


def lif_step(current, mem, spk, beta, threshold, surrogate, reset="subtract", detach_reset=True, rectify=False):
    """One LIF step; ``spk`` is the previous step's spikes, so R[t] = S[t-1].

    subtract: U[t] = beta*U[t-1] + I[t] - R[t]*theta
    zero:     U[t] = beta*(1 - R[t])*U[t-1] + I[t]
    none:     U[t] = beta*U[t-1] + I[t]
    then (optional rectification) U[t] <- max(U[t], 0), and S[t] = H(U[t] - theta).
    """
    r = spk.detach() if detach_reset else spk
    if reset == "subtract":
        mem = beta * mem + current - r * threshold
    elif reset == "zero":
        mem = beta * (1 - r) * mem + current
    else:
        mem = beta * mem + current
    if rectify:
        mem = mem.clamp(min=0)
    return surrogate(mem - threshold), mem


def _decay(name: str, value: float | None, tau: float | None, default: float) -> float:
    """A decay factor in (0, 1], given directly or as a time constant exp(-1/tau), which wins if set."""
    if tau is not None:
        if not tau > 0:
            raise ValueError(f"time constant for {name} must be > 0, got {tau}")
        return math.exp(-1.0 / tau)
    value = default if value is None else value
    if not 0 < value <= 1:
        raise ValueError(f"{name} must be in (0, 1], got {value}")
    return float(value)


class SpikingNeuron(nn.Module):
    """Shared options: threshold, reset, detach_reset, rectify, learn_threshold, surrogate.

    ``per_neuron=True`` gives every neuron of ``shape`` its own parameters; otherwise they
    are scalars shared by the layer. Learned parameters are reparameterised so they stay in
    range without clamping: theta = exp(log_theta) and, in subclasses, beta = sigmoid(w).
    """

    def __init__(
        self,
        threshold: float = 1.0,
        reset: str = "subtract",
        detach_reset: bool = True,
        rectify: bool = False,
        learn_threshold: bool = False,
        surrogate: Surrogate | None = None,
        per_neuron: bool = False,
        shape: Sequence[int] = (),
    ):
        super().__init__()
        if reset not in RESETS:
            raise ValueError(f"reset must be one of {RESETS}, got {reset!r}")
        if not threshold > 0:
            raise ValueError(f"threshold must be > 0, got {threshold}")
        self.reset, self.detach_reset, self.rectify = reset, detach_reset, rectify
        self.surrogate = surrogate if surrogate is not None else ATan()
        self.param_shape = tuple(shape) if per_neuron else ()
        self._register("log_threshold", math.log(threshold), learn_threshold)

    def _register(self, name: str, value: float, learn: bool) -> None:
        tensor = torch.full(self.param_shape, value)
        if learn:
            self.register_parameter(name, nn.Parameter(tensor))
        else:
            self.register_buffer(name, tensor)

    @property
    def threshold(self) -> torch.Tensor:
        return self.log_threshold.exp()

    @property
    def beta(self) -> torch.Tensor:
        return torch.ones(())

    def _step_kwargs(self) -> dict:
        return dict(
            beta=self.beta, threshold=self.threshold, surrogate=self.surrogate,
            reset=self.reset, detach_reset=self.detach_reset, rectify=self.rectify,
        )

    def forward(self, current: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kwargs = self._step_kwargs()
        mem = torch.zeros_like(current[0])
        spk = torch.zeros_like(current[0])
        spikes, mems = [], []
        for i_t in current:
            spk, mem = lif_step(i_t, mem, spk, **kwargs)
            spikes.append(spk)
            mems.append(mem)
        return torch.stack(spikes), torch.stack(mems)

    def extra_repr(self) -> str:
        return f"reset={self.reset}, rectify={self.rectify}, surrogate={self.surrogate}"


class LIF(SpikingNeuron):
    """Leaky integrate-and-fire: U[t] = beta*U[t-1] + I[t] - R[t]*theta (``reset`` selects).

    ``beta``, or ``tau`` (beta = exp(-1/tau), overrides beta); ``learn_beta`` trains beta = sigmoid(w).
    """

    def __init__(self, beta: float | None = None, tau: float | None = None, learn_beta: bool = False, **kwargs):
        super().__init__(**kwargs)
        beta = _decay("beta", beta, tau, default=0.9)
        if learn_beta:
            if beta >= 1:
                raise ValueError("learn_beta needs beta < 1 (beta = sigmoid(w) never reaches 1)")
            self._register("beta_logit", math.log(beta / (1 - beta)), True)
        else:
            self._register("beta_value", beta, False)

    @property
    def beta(self) -> torch.Tensor:
        if hasattr(self, "beta_logit"):
            return torch.sigmoid(self.beta_logit)
        return self.beta_value


class Synaptic(LIF):
    """Current-based (CUBA) LIF: J[t] = alpha*J[t-1] + I[t]; U[t] = beta*U[t-1] + J[t] - R[t]*theta.

    ``alpha``, or ``tau_syn`` (alpha = exp(-1/tau_syn), overrides alpha); alpha = 0 means J[t] = I[t].
    """

    def __init__(self, alpha: float | None = None, tau_syn: float | None = None, **kwargs):
        super().__init__(**kwargs)
        if tau_syn is None and alpha == 0:
            self.alpha = 0.0
        else:
            self.alpha = _decay("alpha", alpha, tau_syn, default=0.9)

    def forward(self, current):
        syn = torch.zeros_like(current[0])
        filtered = []
        for i_t in current:
            syn = self.alpha * syn + i_t
            filtered.append(syn)
        return super().forward(torch.stack(filtered))

    def extra_repr(self) -> str:
        return f"alpha={self.alpha:.4g}, " + super().extra_repr()


class IF(Synaptic):
    """Integrate-and-fire (beta = 1), reset to zero by default: U[t] = (1 - R[t])*U[t-1] + J[t].

    ``rectify=True`` clamps the voltage at 0 (seed 000); ``alpha``/``tau_syn`` adds a decaying
    synaptic current J[t] = alpha*J[t-1] + I[t] (default alpha = 0: J = I).
    """

    def __init__(self, alpha: float = 0.0, tau_syn: float | None = None, reset: str = "zero", **kwargs):
        super().__init__(alpha=alpha, tau_syn=tau_syn, beta=1.0, reset=reset, **kwargs)


class Graded(nn.Module):
    """Seed 002's real-valued neuron with an over-reset, output delayed one step.

    H[t] = d*H[t-1] + I[t];  O[t] = relu(H[t] - theta);  H[t] <- H[t] - (theta_p + O[t])*[O[t] > 0].
    Returns (O[t-1], H[t-1] after its reset), zero at t = 0. The state after the reset never
    exceeds theta, which is what makes it usable as seed 002's logits (summed over time). O is
    differentiable through the relu, so no surrogate is used; ``surrogate`` and ``shape`` are
    accepted for a uniform API.
    """

    def __init__(self, decay: float = 0.9, threshold: float = 2.0, penalty: float = 2.5,
                 surrogate: Surrogate | None = None, shape: Sequence[int] = ()):
        super().__init__()
        if not 0 < decay <= 1:
            raise ValueError(f"decay must be in (0, 1], got {decay}")
        if not threshold > 0:
            raise ValueError(f"threshold must be > 0, got {threshold}")
        self.decay, self.threshold, self.penalty = float(decay), float(threshold), float(penalty)

    def forward(self, current):
        h = torch.zeros_like(current[0])
        outs, mems = [torch.zeros_like(h)], [torch.zeros_like(h)]
        for i_t in current[:-1]:
            h = self.decay * h + i_t
            o = F.relu(h - self.threshold)
            h = h - (self.penalty + o) * (o > 0).to(h.dtype)
            mems.append(h)
            outs.append(o)
        return torch.stack(outs), torch.stack(mems)

    def extra_repr(self) -> str:
        return f"decay={self.decay}, threshold={self.threshold}, penalty={self.penalty}"
