"""Encoders (SPEC section 4): shapes, hand-computed spike trains, statistics, reproducibility."""

import pytest
import torch

from snnrun.core import encoders


def test_direct_repeats_input_without_copy():
    x = torch.rand(3, 1, 4, 4)
    out = encoders.Direct()(x, 7)
    assert out.shape == (7, 3, 1, 4, 4) and torch.equal(out[5], x)
    assert out.data_ptr() == x.data_ptr() and encoders.Direct.static


def test_rate_hand_trace():
    # V <- V + x each step, spike when V > 1 then V = 0.
    # x = 0.5: V = 0.5, 1.0, 1.5* -> spikes at t = 2, 5, 8;  x = 1: V = 1, 2* -> t = 1, 3, 5, 7
    out = encoders.Rate()(torch.tensor([0.0, 0.5, 1.0]), 9)
    assert out[:, 0].sum() == 0
    assert out[:, 1].nonzero().flatten().tolist() == [2, 5, 8]
    assert out[:, 2].nonzero().flatten().tolist() == [1, 3, 5, 7]


def test_rate_count_grows_with_intensity_and_gain():
    x = torch.linspace(0, 1, 21)
    counts = encoders.Rate(gain=2.0)(x, 50).sum(0)
    assert torch.all(counts[1:] >= counts[:-1]) and counts[-1] > counts[5] > 0
    assert (encoders.Rate(gain=4.0)(x, 50).sum(0) >= counts).all()


def test_rate_negative_bias_rectifies():
    out = encoders.Rate(bias=-0.5)(torch.tensor([0.3, 0.8]), 20)
    assert out[:, 0].sum() == 0 and out[:, 1].sum() > 0


def test_poisson_rate_and_reproducibility():
    x = torch.rand(32, 100)
    spikes = encoders.Poisson(gain=0.5, offset=0.1)(x, 500, torch.Generator().manual_seed(1))
    assert set(spikes.unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(spikes.mean(0), (0.5 * x + 0.1).clamp(0, 1), atol=0.1, rtol=0)
    torch.testing.assert_close(spikes.mean(), (0.5 * x + 0.1).mean(), atol=0.01, rtol=0)
    again = encoders.Poisson(gain=0.5, offset=0.1)(x, 500, torch.Generator().manual_seed(1))
    assert torch.equal(spikes, again)


def test_poisson_clamps_probability():
    spikes = encoders.Poisson(gain=3.0)(torch.tensor([0.0, 0.5]), 100, torch.Generator().manual_seed(0))
    assert spikes[:, 0].sum() == 0 and spikes[:, 1].sum() == 100


def test_noise_is_uniform_fraction_of_input():
    x = torch.full((10000,), 0.8)
    out = encoders.Noise()(x, 4, torch.Generator().manual_seed(0))
    assert out.min() >= 0 and out.max() < 0.8
    assert out.mean().item() == pytest.approx(0.4, abs=0.01)
    assert not torch.equal(out[0], out[1])  # fresh noise every step


def test_noise_shift_is_added_before_the_noise():
    x = torch.full((10000,), 0.8)
    out = encoders.Noise(shift=-0.5)(x, 4, torch.Generator().manual_seed(0))
    assert out.min() >= 0 and out.max() < 0.3
    assert out.mean().item() == pytest.approx(0.15, abs=0.005)


def test_latency_spike_times():
    x = torch.tensor([1.0, 0.5, 0.0, 0.005, 0.25])
    out = encoders.Latency()(x, 11)
    assert out.sum(0).tolist() == [1, 1, 0, 0, 1]  # one spike, none below the threshold
    assert out.argmax(0)[[0, 1, 4]].tolist() == [0, 5, 8]  # round(10 * (1 - x)); 7.5 rounds to 8


def test_negative_gain_is_refused():
    with pytest.raises(ValueError, match="gain"):
        encoders.Poisson(gain=-1.0)
    with pytest.raises(ValueError, match="gain"):
        encoders.Rate(gain=-0.1)
