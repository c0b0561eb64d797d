"""Each surrogate's backward equals its documented derivative (SPEC section 3)."""

import math

import pytest
import torch

from snnrun.core import surrogates

X = torch.cat([torch.linspace(-2, 2, 80, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)])


def backward_of(surrogate, x=X):
    x = x.clone().requires_grad_()
    spk = surrogate(x)
    spk.backward(torch.ones_like(x))
    return spk.detach(), x.grad


def primitive_grad(f, x=X):
    """Autograd derivative of a smooth primitive f, i.e. what the surrogate stands in for."""
    x = x.clone().requires_grad_()
    f(x).sum().backward()
    return x.grad


@pytest.mark.parametrize("name", ["ATan", "FastSigmoid", "Sigmoid", "Triangular", "MultiGaussian", "StraightThrough",
                                  "Heaviside"])
def test_forward_is_strict_heaviside(name):
    spk, _ = backward_of(getattr(surrogates, name)())
    assert torch.equal(spk, (X > 0).double())
    assert spk[X == 0].item() == 0


@pytest.mark.parametrize(
    "surrogate, primitive",
    [
        (surrogates.ATan(alpha=2.0), lambda x: torch.atan(math.pi / 2 * 2.0 * x) / math.pi),
        (surrogates.ATan(alpha=5.0), lambda x: torch.atan(math.pi / 2 * 5.0 * x) / math.pi),
        (surrogates.FastSigmoid(slope=25), lambda x: x / (1 + 25 * x.abs())),
        (surrogates.FastSigmoid(slope=100), lambda x: x / (1 + 100 * x.abs())),
        (surrogates.Sigmoid(slope=25), lambda x: torch.sigmoid(25 * x)),
        (surrogates.StraightThrough(), lambda x: x),
    ],
    ids=["atan2", "atan5", "fast_sigmoid25", "fast_sigmoid100", "sigmoid25", "straight_through"],
)
def test_backward_is_derivative_of_primitive(surrogate, primitive):
    _, grad = backward_of(surrogate)
    torch.testing.assert_close(grad, primitive_grad(primitive), atol=1e-12, rtol=1e-10)


def test_hand_values():
    at = lambda s, v: backward_of(s, torch.tensor([v], dtype=torch.float64))[1].item()  # noqa: E731
    assert at(surrogates.ATan(alpha=2.0), 0.0) == pytest.approx(1.0)
    assert at(surrogates.ATan(alpha=2.0), 1 / math.pi) == pytest.approx(0.5)
    assert at(surrogates.FastSigmoid(slope=25), 0.04) == pytest.approx(0.25)
    assert at(surrogates.Sigmoid(slope=25), 0.0) == pytest.approx(6.25)
    assert at(surrogates.Triangular(width=1.0), 0.5) == pytest.approx(0.5)
    assert at(surrogates.Triangular(width=0.5), -0.25) == pytest.approx(1.0)
    assert at(surrogates.Triangular(width=1.0), 1.5) == 0.0
    assert at(surrogates.Heaviside(), 0.0) == 0.0


def test_scale_damps_the_backward_and_leaves_the_forward():
    """gamma * dS/dx, written out: atan alpha = 2 at x = 0 gives 1, so gamma = 0.3 gives 0.3; the
    triangle of width 1 at x = 0.5 gives 0.5, so 0.15."""
    at = lambda s, v: backward_of(s, torch.tensor([v], dtype=torch.float64))[1].item()  # noqa: E731
    assert at(surrogates.ATan(alpha=2.0, scale=0.3), 0.0) == pytest.approx(0.3)
    assert at(surrogates.Triangular(width=1.0, scale=0.3), 0.5) == pytest.approx(0.15)
    assert at(surrogates.StraightThrough(scale=0.5), -1.0) == 0.5
    spk, grad = backward_of(surrogates.FastSigmoid(slope=25, scale=0.3))
    torch.testing.assert_close(grad, 0.3 * primitive_grad(lambda x: x / (1 + 25 * x.abs())), atol=1e-12, rtol=1e-10)
    assert torch.equal(spk, (X > 0).double())
    with pytest.raises(ValueError, match="scale"):
        surrogates.ATan(scale=0.0)


def test_triangular_has_unit_area():
    x = torch.linspace(-3, 3, 600001, dtype=torch.float64)
    for width in (0.5, 1.0, 2.0):
        area = torch.trapezoid(surrogates.Triangular(width).derivative(x), x).item()
        assert area == pytest.approx(1.0, abs=1e-6)


def _normal_cdf(x, mean, std):
    return 0.5 * (1 + torch.erf((x - mean) / (std * math.sqrt(2))))


@pytest.mark.parametrize("surrogate, primitive", [
    (surrogates.ATan(alpha=3.0), lambda x: torch.atan(math.pi / 2 * 3.0 * x) / math.pi + 0.5),
    (surrogates.FastSigmoid(slope=10.0), lambda x: x / (1 + 10.0 * x.abs())),
    (surrogates.Sigmoid(slope=5.0), lambda x: torch.sigmoid(5.0 * x)),
    (surrogates.Triangular(width=0.7), lambda x: torch.where(  # the area under the triangle up to x
        x < 0, (x + 0.7).clamp(min=0) ** 2, 2 * 0.7**2 - (0.7 - x).clamp(min=0) ** 2) / (2 * 0.7**2)),
    (surrogates.MultiGaussian(), lambda x: 0.5 * (1.15 * _normal_cdf(x, 0, 0.5) - 0.15 * _normal_cdf(x, 0.5, 3.0)
                                                  - 0.15 * _normal_cdf(x, -0.5, 3.0))),
], ids=["atan", "fast_sigmoid", "sigmoid", "triangular", "multi_gaussian"])
def test_each_backward_is_the_derivative_of_a_smooth_step(surrogate, primitive):
    """The spike's backward pass, through autograd, against autograd's derivative of the smooth step function
    each surrogate stands in for (written here independently of surrogates.py), away from the kinks."""
    x = torch.linspace(-1.5, 1.5, 301, dtype=torch.float64)
    x = x[(x.abs() - 0.7).abs() > 1e-6]  # the triangle's corners
    _, grad = backward_of(surrogate, x)
    torch.testing.assert_close(grad, primitive_grad(primitive, x), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cls, arg", [(surrogates.ATan, "alpha"), (surrogates.FastSigmoid, "slope"),
                                      (surrogates.Sigmoid, "slope"), (surrogates.Triangular, "width")])
def test_non_positive_slope_is_refused(cls, arg):
    with pytest.raises(ValueError, match=arg):
        cls(**{arg: 0})


def test_multi_gaussian_against_hand_values():
    """gamma [(1+h) N(x;0,sigma) - h N(x;sigma,s sigma) - h N(x;-sigma,s sigma)] with SRNN's sigma 0.5,
    s 6, h 0.15, gamma 0.5, worked out by hand: N(0;0,0.5) = 0.797885, N(0;±0.5,3) = 0.131148, so at
    x = 0: 0.5 (1.15 * 0.797885 - 2 * 0.15 * 0.131148) = 0.439112. Beyond 2 sigma the side lobes
    win and the derivative turns negative."""
    x = torch.tensor([0.0, 0.5, -1.0, 2.0], dtype=torch.float64)
    _, grad = backward_of(surrogates.MultiGaussian(), x)
    torch.testing.assert_close(grad, torch.tensor([0.439112, 0.258858, 0.043452, -0.015696], dtype=torch.float64),
                               atol=1e-6, rtol=0)
    _, wide = backward_of(surrogates.MultiGaussian(h=0.0, scale=1.0), torch.zeros(1, dtype=torch.float64))
    assert wide.item() == pytest.approx(1 / (0.5 * math.sqrt(2 * math.pi)))  # h = 0: one Gaussian of sigma 0.5
    with pytest.raises(ValueError, match="sigma"):
        surrogates.MultiGaussian(sigma=0)
