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

from . import backends
from .options import OptionError, in_range, non_negative, one_of, positive
from .sequences import LeakyIntegral, LIFSequence, filter_scan, truncated
from .surrogates import ATan, Surrogate

RESETS = ("subtract", "zero", "none")


def lif_step(current, mem, spk, beta, threshold, surrogate, reset="subtract", detach_reset=True, rectify=False,
             reset_threshold=None):
    """One LIF step; ``spk`` is the previous step's spikes, so R[t] = S[t-1].

    subtract: U[t] = beta*U[t-1] + I[t] - R[t]*theta_r   (theta_r = ``reset_threshold``, default theta)
    zero:     U[t] = beta*(1 - R[t])*U[t-1] + I[t]
    none:     U[t] = beta*U[t-1] + I[t]
    then (optional rectification) U[t] <- max(U[t], 0), and S[t] = H(U[t] - theta).
    The rectifier's gradient is 1 everywhere (straight through): with max's own gradient, 0 below
    zero, a neuron driven below 0 on every input is silent for good and never learns again.
    """
    r = spk.detach() if detach_reset else spk
    if reset == "subtract":
        mem = beta * mem + current - r * (threshold if reset_threshold is None else reset_threshold)
    elif reset == "zero":
        mem = beta * (1 - r) * mem + current
    else:
        mem = beta * mem + current
    if rectify:
        mem = torch.where(mem > 0, mem, mem - mem.detach())  # value max(U, 0), gradient 1 everywhere (straight through)
    return surrogate(mem - threshold), mem


def _decay(name: str, value: float | None, tau: float | None, default: float, tau_name: str = "tau") -> float:
    """A decay factor in (0, 1], given directly or as a time constant exp(-1/tau), which wins if set."""
    if tau is not None:
        return math.exp(-1.0 / positive(tau_name, tau, example=20.0))
    return in_range(name, default if value is None else value, 0, 1, example=0.9)


class SpikingNeuron(nn.Module):
    """Shared options: threshold, reset, detach_reset, rectify, learn_threshold, surrogate.

    ``per_neuron=True`` gives every neuron of ``shape`` its own parameters; otherwise they
    are scalars shared by the layer. Learned parameters are reparameterised so they stay in
    range without clamping: theta = exp(log_theta) and, in subclasses, beta = sigmoid(w).
    ``fused=True`` runs the time loop as one autograd op (hand-written BPTT, see
    ``sequences.LIFSequence``) on ``backend`` (``snnrun.core.backends``); ``fused=False`` runs
    ``lif_step`` under autograd, the reference.
    ``tbptt`` = k > 0 truncates BPTT every k steps (set by ``trainer.tbptt``, see ``truncate``).
    """

    tbptt = 0

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
        fused: bool = True,
        backend: str = "auto",
    ):
        super().__init__()
        one_of("reset", reset, RESETS)
        threshold = positive("threshold", threshold)
        self.reset, self.detach_reset, self.rectify, self.fused = reset, detach_reset, rectify, fused
        self.surrogate = surrogate if surrogate is not None else ATan()
        self.backend = backends.check(backend, self.surrogate)
        self.last_backend: str | None = None  # the backend of the last fused call (reported in results.json)
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
        if self.fused:
            self.last_backend = backends.choose(self.backend, current, self.surrogate)
            return LIFSequence.apply(current, self.beta.to(current), self.threshold.to(current), self.surrogate,
                                     self.reset, self.detach_reset, self.rectify, self.tbptt, self.last_backend)
        kwargs = self._step_kwargs()
        mem = torch.zeros_like(current[0])
        spk = torch.zeros_like(current[0])
        spikes, mems = [], []
        for t, i_t in enumerate(current):
            if truncated(t, self.tbptt):
                mem, spk = mem.detach(), spk.detach()
            spk, mem = lif_step(i_t, mem, spk, **kwargs)
            spikes.append(spk)
            mems.append(mem)
        return torch.stack(spikes), torch.stack(mems)

    def step(self, current: torch.Tensor, state: tuple | None = None) -> tuple[torch.Tensor, torch.Tensor, tuple]:
        """One step for streaming, the state carried between calls: current [B, *] -> (S[t], U[t], state).
        ``state`` None starts from rest; stepping through a sequence gives ``forward``'s S and U."""
        mem, spk = state if state is not None else (torch.zeros_like(current), torch.zeros_like(current))
        spk, mem = lif_step(current, mem, spk, **self._step_kwargs())
        return spk, mem, (mem, spk)

    def extra_repr(self) -> str:
        return f"reset={self.reset}, rectify={self.rectify}, surrogate={self.surrogate}"


class LIF(SpikingNeuron):
    """Leaky integrate-and-fire: U[t] = beta*U[t-1] + I[t] - R[t]*theta (``reset`` selects).

    ``beta``, or ``tau`` (beta = exp(-1/tau), overrides beta); ``learn_beta`` trains beta = sigmoid(w).
    ``tau_std`` > 0 (with ``tau`` and ``per_neuron``) draws each neuron's tau from N(tau, tau_std) (SRNN).
    """

    def __init__(self, beta: float | None = None, tau: float | None = None, learn_beta: bool = False,
                 tau_std: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        beta = _decay("beta", beta, tau, default=0.9)
        if learn_beta:
            if beta >= 1:
                raise OptionError("beta", beta, "below 1 with learn_beta=true (beta = sigmoid(w) never reaches 1)", 0.9)
            self._register("beta_logit", math.log(beta / (1 - beta)), True)
        else:
            self._register("beta_value", beta, False)
        if non_negative("tau_std", tau_std, example=0.0):
            self._spread_tau(tau, tau_std)

    @torch.no_grad()
    def _spread_tau(self, tau: float | None, tau_std: float) -> None:
        """Per-neuron time constants tau_i ~ N(tau, tau_std), at least one step: beta_i = exp(-1/tau_i)."""
        if tau is None or self.param_shape == ():
            raise OptionError("tau_std", tau_std, "0 unless tau is set and per_neuron=true (each neuron draws its own "
                              "tau from N(tau, tau_std))", 0.0)
        taus = (tau + tau_std * torch.randn(self.param_shape, dtype=torch.float64)).clamp(min=1.0)
        beta = torch.exp(-1.0 / taus)
        if hasattr(self, "beta_logit"):
            self.beta_logit.copy_(torch.logit(beta))
        else:
            self.beta_value.copy_(beta)

    @property
    def beta(self) -> torch.Tensor:
        if hasattr(self, "beta_logit"):
            return torch.sigmoid(self.beta_logit)
        return self.beta_value


class LI(LIF):
    """Leaky integrator, the non-spiking readout: U[t] = beta*U[t-1] + I[t] (no threshold, no reset).

    Returns (S, U) like every layer, with S all zero. ``LI.like(neuron)`` copies a layer's decay
    (beta, learned or not, per neuron or shared): ``model.readout_neuron=li``. Fused, it runs lif's
    op, one pass over time (a kernel where ``backend`` takes one), except on a GPU without a kernel:
    ``filter_scan``, all steps at once.
    """

    def __init__(self, beta: float | None = None, tau: float | None = None, learn_beta: bool = False,
                 per_neuron: bool = False, shape: Sequence[int] = (), fused: bool = True, backend: str = "auto"):
        super().__init__(beta=beta, tau=tau, learn_beta=learn_beta, threshold=math.inf, reset="none",
                         per_neuron=per_neuron, shape=shape, fused=fused, backend=backend)

    @classmethod
    def like(cls, neuron: nn.Module, shape: Sequence[int]) -> "LI":
        if not isinstance(neuron, LIF):
            raise OptionError("readout_neuron", "li", "same for this neuron (li takes its decay from lif, synaptic, "
                              "if, rlif or alif)", "same")
        return cls(beta=float(neuron.beta.detach().flatten()[0]), learn_beta=hasattr(neuron, "beta_logit"),
                   per_neuron=neuron.param_shape != (), shape=shape, fused=neuron.fused, backend=neuron.backend)

    def forward(self, current):
        if not (self.fused and current.is_cuda) or self.tbptt or backends.choose(
                self.backend, current, self.surrogate) != "torch":
            return super().forward(current)  # one pass over time: torch's loop, or a kernel
        self.last_backend = "torch"
        mem = filter_scan(current, self.beta.to(current), block=32)
        return torch.zeros_like(mem), mem

    def extra_repr(self) -> str:
        return "no spikes"


class Synaptic(LIF):
    """Current-based (CUBA) LIF: J[t] = alpha*J[t-1] + I[t]; U[t] = beta*U[t-1] + J[t] - R[t]*theta.

    ``alpha``, or ``tau_syn`` (alpha = exp(-1/tau_syn), overrides alpha); alpha = 0 means J[t] = I[t].
    """

    def __init__(self, alpha: float | None = None, tau_syn: float | None = None, **kwargs):
        super().__init__(**kwargs)
        if tau_syn is None and alpha == 0:
            self.alpha = 0.0
        else:
            self.alpha = _decay("alpha", alpha, tau_syn, default=0.9, tau_name="tau_syn")

    def forward(self, current):
        if self.alpha == 0:
            return super().forward(current)
        if self.fused:
            backend = backends.choose(self.backend, current, self.surrogate)
            return super().forward(LeakyIntegral.apply(current, self.alpha, self.tbptt, backend))
        syn = torch.zeros_like(current[0])
        filtered = []
        for t, i_t in enumerate(current):
            if truncated(t, self.tbptt):
                syn = syn.detach()
            syn = self.alpha * syn + i_t
            filtered.append(syn)
        return super().forward(torch.stack(filtered))

    def step(self, current, state=None):
        """One step: J[t] = alpha*J[t-1] + I[t], then lif's step on J; state (J, lif's state)."""
        syn, inner = state if state is not None else (torch.zeros_like(current), None)
        if self.alpha != 0:
            syn = self.alpha * syn + current
            current = syn
        spk, mem, inner = super().step(current, inner)
        return spk, mem, (syn, inner)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha:.4g}, " + super().extra_repr()


class IF(Synaptic):
    """Integrate-and-fire (beta = 1), reset to zero by default: U[t] = (1 - R[t])*U[t-1] + J[t].

    ``rectify=True`` clamps the voltage at 0 (the if_rate_fc500 preset); ``alpha``/``tau_syn`` adds a decaying
    synaptic current J[t] = alpha*J[t-1] + I[t] (default alpha = 0: J = I).
    """

    def __init__(self, alpha: float = 0.0, tau_syn: float | None = None, reset: str = "zero", **kwargs):
        super().__init__(alpha=alpha, tau_syn=tau_syn, beta=1.0, reset=reset, **kwargs)


class Graded(nn.Module):
    """A real-valued neuron with an over-reset, output delayed one step.

    H[t] = d*H[t-1] + I[t];  O[t] = relu(H[t] - theta);  H[t] <- H[t] - (theta_p + O[t])*[O[t] > 0].
    Returns (O[t-1], H[t-1] after its reset), zero at t = 0. The state after the reset never
    exceeds theta, which is what makes it usable as logits (summed over time, the graded_fc100 preset). O is
    differentiable through the relu, so no surrogate is used; ``surrogate`` and ``shape`` are
    accepted for a uniform API.
    """

    def __init__(self, decay: float = 0.9, threshold: float = 2.0, penalty: float = 2.5,
                 surrogate: Surrogate | None = None, shape: Sequence[int] = ()):
        super().__init__()
        self.decay = in_range("decay", decay, 0, 1, example=0.9)
        self.threshold = positive("threshold", threshold, example=2.0)
        self.penalty = non_negative("penalty", penalty, example=2.5)

    tbptt = 0  # truncated BPTT: H is detached where a chunk of this many steps starts (``truncate``)

    def forward(self, current):
        h = torch.zeros_like(current[0])
        outs, mems = [torch.zeros_like(h)], [torch.zeros_like(h)]
        for t, i_t in enumerate(current[:-1]):
            if truncated(t, self.tbptt):
                h = h.detach()
            h = self.decay * h + i_t
            o = F.relu(h - self.threshold)
            h = h - (self.penalty + o) * (o > 0).to(h.dtype)
            mems.append(h)
            outs.append(o)
        return torch.stack(outs), torch.stack(mems)

    def step(self, current, state=None):
        """One step: emits (O[t-1], H[t-1]) and takes I[t] in; state (H after its reset, O)."""
        h, out = state if state is not None else (torch.zeros_like(current), torch.zeros_like(current))
        emitted = (out, h)
        h = self.decay * h + current
        o = F.relu(h - self.threshold)
        h = h - (self.penalty + o) * (o > 0).to(h.dtype)
        return *emitted, (h, o)

    def extra_repr(self) -> str:
        return f"decay={self.decay}, threshold={self.threshold}, penalty={self.penalty}"


def truncate(model: nn.Module, tbptt: int) -> int:
    """Truncated BPTT every ``tbptt`` steps in every layer that carries a state over time; returns how many."""
    layers = [m for m in model.modules() if hasattr(type(m), "tbptt")]
    for layer in layers:
        layer.tbptt = tbptt
    return len(layers)
