"""Input encoders: an image batch x in [0, 1], shape [B, *], becomes T steps [T, B, *].

Random encoders draw from the ``generator`` they are given, so a seeded generator makes
runs reproducible. ``Direct`` is static (the same current every step); the network uses
``static = True`` to compute its first layer once instead of T times.
"""

from __future__ import annotations

import torch

from .options import non_negative, number, positive


class Encoder:
    static = False

    def __call__(self, x: torch.Tensor, time_steps: int, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class Direct(Encoder):
    """Direct (current) coding: x[t] = x at every step (a broadcast view, no copy)."""

    static = True

    def __call__(self, x, time_steps, generator=None):
        return x.unsqueeze(0).expand(time_steps, *x.shape)


class Rate(Encoder):
    """Deterministic rate code by integrate-and-fire encoder neurons (the if_rate_fc500 preset).

    V <- max(V + gain*x + bias, 0); spike and reset V to 0 when V > threshold.
    The spike count grows with the intensity.
    """

    def __init__(self, gain: float = 1.0, bias: float = 0.0, threshold: float = 1.0):
        self.gain = non_negative("gain", gain)
        self.bias = number("bias", bias)
        self.threshold = positive("threshold", threshold)

    def __call__(self, x, time_steps, generator=None):
        v = torch.zeros_like(x)
        drive = self.gain * x + self.bias
        spikes = []
        for _ in range(time_steps):
            v = (v + drive).clamp(min=0)
            s = v > self.threshold
            v = v.masked_fill(s, 0.0)
            spikes.append(s.to(x.dtype))
        return torch.stack(spikes)


class Poisson(Encoder):
    """Poisson (Bernoulli) rate code: S[t] ~ Bernoulli(clamp(gain*x + offset, 0, 1))."""

    def __init__(self, gain: float = 1.0, offset: float = 0.0):
        self.gain = non_negative("gain", gain)
        self.offset = number("offset", offset)

    def __call__(self, x, time_steps, generator=None):
        p = (self.gain * x + self.offset).clamp(0, 1)
        u = torch.rand((time_steps, *x.shape), generator=generator, device=x.device, dtype=x.dtype)
        return (u < p).to(x.dtype)


class Noise(Encoder):
    """Multiplicative uniform noise: x[t] = (x + shift) * u, u ~ U[0, 1) fresh each step.

    The graded_fc100 preset normalises its images to x - 0.5 first (``shift=-0.5``)."""

    def __init__(self, shift: float = 0.0):
        self.shift = number("shift", shift)

    def __call__(self, x, time_steps, generator=None):
        u = torch.rand((time_steps, *x.shape), generator=generator, device=x.device, dtype=x.dtype)
        return (x + self.shift) * u


class Latency(Encoder):
    """Time-to-first-spike: one spike at t = round((T - 1)(1 - x)); none where x < threshold."""

    def __init__(self, threshold: float = 0.01):
        self.threshold = non_negative("threshold", threshold, example=0.01)

    def __call__(self, x, time_steps, generator=None):
        t_spike = torch.round((time_steps - 1) * (1 - x.clamp(0, 1))).long()
        steps = torch.arange(time_steps, device=x.device).view(-1, *([1] * x.dim()))
        return ((steps == t_spike) & (x >= self.threshold)).to(x.dtype)

