"""Surrogate gradients for the spike non-linearity S = H(x), x = U - threshold.

The forward pass is always the strict Heaviside step H(x) = 1 if x > 0 else 0.
The backward pass replaces the ill-defined dS/dx (a Dirac delta) with a smooth
stand-in, the surrogate derivative. Each surrogate below is a small object whose
``derivative`` gives that function; calling it on ``x`` spikes with that backward.
"""

from __future__ import annotations

import math

import torch

from .options import non_negative, positive


class _SpikeFunction(torch.autograd.Function):
    """H(x) forward, ``surrogate.derivative(x)`` backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, surrogate: "Surrogate") -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.surrogate = surrogate
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (x,) = ctx.saved_tensors
        return grad_output * ctx.surrogate.derivative(x), None


class Surrogate:
    """Base class: a Heaviside spike whose backward pass is ``derivative`` = scale * ``shape``.

    ``scale`` (gamma, default 1) damps every surrogate alike: LSNN's dampening factor (0.3)
    keeps backpropagation through hundreds of recurrent steps from exploding.
    """

    def __init__(self, scale: float = 1.0):
        self.scale = positive("scale", scale, example=0.3)

    def shape(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        d = self.shape(x)
        return d if self.scale == 1 else self.scale * d

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return _SpikeFunction.apply(x, self)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class ATan(Surrogate):
    """Arc-tangent: dS/dx = (alpha/2) / (1 + (pi/2 * alpha * x)^2)."""

    def __init__(self, alpha: float = 2.0, scale: float = 1.0):
        super().__init__(scale)
        self.alpha = positive("alpha", alpha, example=2.0)

    def shape(self, x):
        return (self.alpha / 2) / (1 + (math.pi / 2 * self.alpha * x) ** 2)


class FastSigmoid(Surrogate):
    """Fast sigmoid (SuperSpike): dS/dx = 1 / (slope * |x| + 1)^2."""

    def __init__(self, slope: float = 25.0, scale: float = 1.0):
        super().__init__(scale)
        self.slope = positive("slope", slope, example=25)

    def shape(self, x):
        return 1 / (self.slope * x.abs() + 1) ** 2


class Sigmoid(Surrogate):
    """Logistic: dS/dx = slope * sigma(slope*x) * (1 - sigma(slope*x))."""

    def __init__(self, slope: float = 25.0, scale: float = 1.0):
        super().__init__(scale)
        self.slope = positive("slope", slope, example=25)

    def shape(self, x):
        s = torch.sigmoid(self.slope * x)
        return self.slope * s * (1 - s)


class Triangular(Surrogate):
    """Triangle of half-width w and unit area: dS/dx = max(0, 1 - |x|/w) / w."""

    def __init__(self, width: float = 1.0, scale: float = 1.0):
        super().__init__(scale)
        self.width = positive("width", width, example=1.0)

    def shape(self, x):
        return (1 - x.abs() / self.width).clamp(min=0) / self.width


class MultiGaussian(Surrogate):
    """Multi-Gaussian (SRNN, Yin et al. 2021): a Gaussian with negative side lobes,
    dS/dx = (1+h)*N(x; 0, sigma) - h*N(x; sigma, s*sigma) - h*N(x; -sigma, s*sigma), N the normal density.

    SRNN's values are the defaults: sigma = 0.5, s = 6, h = 0.15, and scale gamma = 0.5."""

    def __init__(self, sigma: float = 0.5, s: float = 6.0, h: float = 0.15, scale: float = 0.5):
        super().__init__(scale)
        self.sigma = positive("sigma", sigma, example=0.5)
        self.s = positive("s", s, example=6.0)
        self.h = non_negative("h", h, example=0.15)

    def shape(self, x):
        def normal(mean, std):
            return torch.exp(-((x - mean) ** 2) / (2 * std**2)) / (std * math.sqrt(2 * math.pi))

        wide = self.s * self.sigma
        return (1 + self.h) * normal(0.0, self.sigma) - self.h * (normal(self.sigma, wide) + normal(-self.sigma, wide))


class StraightThrough(Surrogate):
    """Straight-through estimator: dS/dx = 1."""

    def shape(self, x):
        return torch.ones_like(x)


class Heaviside(Surrogate):
    """No surrogate: dS/dx = 0 almost everywhere, so no gradient reaches the weights."""

    def shape(self, x):
        return torch.zeros_like(x)
