"""Neurons computed over the whole sequence at once: no state carried from step to step by a loop.

Their membrane is a linear function of the input current over time, so all T steps come out of
a few large tensor operations instead of T small ones, and only the spike S = H(U - theta)
(with the configured surrogate) is non-linear. Each class has a step-by-step reference
(``fused=False``) that the parallel path equals, gradients included (tests, in float64).

    filter_lif      U[t] = beta*U[t-1] + I[t] (no reset; beta per neuron, learned by default)
                    = sum_i beta^(t-i) I[i], computed as a blocked scan: within a block of L steps
                    a Toeplitz product, between blocks the carried U (T/L steps of a loop)
    psn             H[t] = sum_i W[t, i] I[i] + b[t], W a learned T x T matrix (Fang et al. 2023)
    psn (window=k)  the masked PSN: W kept on the band 0 <= t - i < k (causal)
    sliding_psn     H[t] = sum_{j<k} w_j I[t-j] + b, k learned taps shared over time: any T
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .neurons import LIF, filter_scan
from .options import OptionError, one_of, positive
from .surrogates import ATan, Surrogate


SCANS = ("auto", "parallel", "loop")


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


class FilterLIF(LIF):
    """LIF without reset, the neuron as a causal filter: U[t] = beta*U[t-1] + I[t], S[t] = H(U[t] - theta).

    Per neuron with a learned decay by default (``per_neuron``, ``learn_beta``; ``tau_std`` spreads the
    time constants). ``scan``: ``parallel`` computes all steps at once, by blocks of ``block`` steps
    (``filter_scan``); ``loop`` runs lif's fused op, one pass over time with a hand-written backward;
    ``auto`` takes ``parallel`` on GPUs, where launching a kernel per step costs most, and ``loop`` on
    CPUs, where a step's state stays in cache (measured: 0.4 s against 0.06 s forward and backward of
    [784, 64, 128] on two cores). ``fused=False`` runs the step-by-step reference.
    """

    def __init__(self, block: int = 32, scan: str = "auto", learn_beta: bool = True, per_neuron: bool = True,
                 **kwargs):
        if kwargs.get("reset", "none") != "none" or kwargs.get("rectify"):
            raise OptionError("reset", kwargs.get("reset"), "none for filter_lif (it never resets nor rectifies)", "none")
        kwargs.update(reset="none", rectify=False)
        super().__init__(learn_beta=learn_beta, per_neuron=per_neuron, **kwargs)
        if not _is_count(block):
            raise OptionError("block", block, "a positive integer (steps per block of the scan)", 32)
        self.block, self.scan = block, one_of("scan", scan, SCANS)
        if scan == "parallel" and self.backend in ("numba", "triton"):
            raise OptionError("scan", scan, f"loop or auto with backend={self.backend} (the parallel scan is torch's "
                              "tensor ops, not a kernel)", "loop")

    def forward(self, current):
        chosen = self.backend in ("numba", "triton")  # an explicit kernel: the loop, on any device
        parallel = self.scan == "parallel" or (self.scan == "auto" and current.is_cuda and not chosen)
        if not (self.fused and parallel):
            return super().forward(current)  # lif's fused op, or with fused=False lif_step step by step
        self.last_backend = "torch"
        mem = filter_scan(current, self.beta.to(current), self.block)
        return self.surrogate(mem - self.threshold.to(current)), mem

    def extra_repr(self) -> str:
        return f"scan={self.scan}, block={self.block}, " + super().extra_repr()


class PSN(nn.Module):
    """Parallel spiking neuron: H[t] = sum_i W[t, i] I[i] + b[t] over the whole sequence, S[t] = H(H[t]).

    W is a learned ``time_steps`` x ``time_steps`` matrix (initialised as PyTorch's Linear) and b a
    learned bias per step, initialised to -1 (it plays the threshold). ``window`` = k keeps W on the
    causal band 0 <= t - i < k (the masked PSN); ``window`` = 0 keeps all of W (non-causal: every
    step hears the whole sequence). No reset, no state: the returned membrane is H.
    """

    threshold = 0.0  # S = H(H[t] - 0): the bias b plays the threshold

    def __init__(self, time_steps: int, window: int = 0, surrogate: Surrogate | None = None, shape: Sequence[int] = (),
                 fused: bool = True):
        super().__init__()
        if not _is_count(time_steps):
            raise OptionError("time_steps", time_steps, "a positive integer (the sequence length, T)", 25)
        if not (isinstance(window, int) and not isinstance(window, bool) and 0 <= window <= time_steps):
            raise OptionError("window", window, f"an integer from 0 (all of W) to T = {time_steps}", min(8, time_steps))
        self.time_steps, self.window, self.fused = time_steps, window, fused
        self.surrogate = surrogate if surrogate is not None else ATan()
        self.weight = nn.Parameter(nn.Linear(time_steps, time_steps, bias=False).weight.detach().clone())
        self.bias = nn.Parameter(torch.full((time_steps,), -1.0))
        lag = torch.arange(time_steps)[:, None] - torch.arange(time_steps)[None, :]
        self.register_buffer("mask", ((lag >= 0) & (lag < window)).float() if window else torch.ones(1, 1),
                             persistent=False)

    def kernel(self) -> torch.Tensor:
        return self.weight * self.mask if self.window else self.weight

    def mixing_macs(self, steps: int) -> int:
        """Multiply-accumulates of W over a sequence, per neuron: T^2, or sum_t min(k, t+1) on the band."""
        return steps * steps if not self.window else sum(min(self.window, t + 1) for t in range(steps))

    def forward(self, current):
        if len(current) != self.time_steps:
            raise ValueError(f"a psn layer built for T = {self.time_steps} steps got {len(current)}")
        w, b = self.kernel().to(current), self.bias.to(current)
        if self.fused:
            flat = current.reshape(self.time_steps, -1)
            mem = (w @ flat).reshape(current.shape) + b.reshape(-1, *[1] * (current.dim() - 1))
        else:
            mem = torch.stack([sum(w[t, i] * current[i] for i in range(self.time_steps)) + b[t]
                               for t in range(self.time_steps)])
        return self.surrogate(mem), mem

    def step(self, current, state=None):
        raise ValueError("a psn layer has no step-by-step form for streaming: each step's H needs its row of the "
                         "T x T weights and the inputs before it; sliding_psn or a neuron with a state streams")

    def extra_repr(self) -> str:
        return f"time_steps={self.time_steps}, window={self.window or 'all'}, surrogate={self.surrogate}"


class SlidingPSN(nn.Module):
    """Sliding PSN: H[t] = sum_{j<k} w_j I[t-j] + b (I before step 0 is 0), S[t] = H(H[t]).

    k = ``taps`` learned weights shared by every step and neuron of the layer, initialised to the
    kernel of a leaky integrator, w_j = exp(-j / tau); b learned, initialised to -``threshold``.
    It runs on sequences of any length.
    """

    threshold = 0.0

    def __init__(self, taps: int = 16, tau: float = 4.0, threshold: float = 1.0, surrogate: Surrogate | None = None,
                 shape: Sequence[int] = (), fused: bool = True):
        super().__init__()
        if not _is_count(taps):
            raise OptionError("taps", taps, "a positive integer (the kernel length k)", 16)
        positive("tau", tau, example=4.0)
        self.taps, self.fused = taps, fused
        self.surrogate = surrogate if surrogate is not None else ATan()
        self.weight = nn.Parameter(torch.exp(-torch.arange(taps, dtype=torch.float32) / tau))
        self.bias = nn.Parameter(torch.tensor(-positive("threshold", threshold)))

    def mixing_macs(self, steps: int) -> int:
        """Multiply-accumulates of the taps over a sequence, per neuron: sum_t min(k, t+1)."""
        return sum(min(self.taps, t + 1) for t in range(steps))

    def forward(self, current):
        w, b = self.weight.to(current), self.bias.to(current)
        if self.fused:
            t_total = len(current)
            x = current.reshape(t_total, -1).T.unsqueeze(1)  # [N, 1, T]: time as the conv's length
            mem = F.conv1d(F.pad(x, (self.taps - 1, 0)), w.flip(0).reshape(1, 1, -1))
            mem = mem.squeeze(1).T.reshape(current.shape) + b
        else:
            mem = torch.stack([sum(w[j] * current[t - j] for j in range(min(self.taps, t + 1))) + b
                               for t in range(len(current))])
        return self.surrogate(mem), mem

    def step(self, current, state=None):
        """One step: H[t] = sum_j w_j I[t-j] + b over the last k inputs, kept as the state [k-1, B, *]."""
        past = state if state is not None else current.new_zeros((self.taps - 1, *current.shape))
        window = torch.cat([current.unsqueeze(0), past])  # I[t], I[t-1], ..., I[t-k+1]
        w = self.weight.to(current).reshape(-1, *[1] * current.dim())
        mem = (w * window).sum(0) + self.bias.to(current)
        return self.surrogate(mem), mem, window[:-1]

    def extra_repr(self) -> str:
        return f"taps={self.taps}, surrogate={self.surrogate}"
