"""Losses by hand (SPEC section 6) and readouts."""

import math

import pytest
import torch

from snnrun.core import losses


def test_spike_count_ce_normalized_by_hand():
    spk = torch.zeros(4, 1, 2)
    spk[:, 0, 0] = 1  # class 0 fires every step -> rates (1, 0)
    y = torch.tensor([0])
    expected = -math.log(math.e / (math.e + 1))
    assert losses.SpikeCountCE(normalize=True)(spk, None, y).item() == pytest.approx(expected)
    assert losses.SpikeCountCE()(spk, None, y).item() == pytest.approx(-math.log(math.e**4 / (math.e**4 + 1)), rel=1e-5)


def test_membrane_sum_ce_by_hand():
    mem = torch.tensor([[[1.0, 0.0]], [[1.0, 0.0]]])  # summed logits (2, 0)
    expected = -math.log(math.e**2 / (math.e**2 + 1))
    assert losses.MembraneSumCE()(None, mem, torch.tensor([0])).item() == pytest.approx(expected)


def test_membrane_ce_reductions():
    mem = torch.randn(5, 3, 4)
    y = torch.tensor([0, 1, 2])
    per_step = [torch.nn.functional.cross_entropy(m, y) for m in mem]
    assert losses.MembraneCE()(None, mem, y).item() == pytest.approx(sum(per_step).item(), rel=1e-6)
    assert losses.MembraneCE("mean")(None, mem, y).item() == pytest.approx(sum(per_step).item() / 5, rel=1e-6)


def test_mse_count_by_hand():
    spk = torch.zeros(10, 1, 2)
    spk[:8, 0, 0] = 1  # counts (8, 0); targets (10*0.8, 10*0.2) = (8, 2)
    loss = losses.MSECount(correct_rate=0.8, incorrect_rate=0.2)(spk, None, torch.tensor([0]))
    assert loss.item() == pytest.approx((0 + 4) / 2 / 10)


def test_readouts_and_ties():
    spk = torch.zeros(3, 2, 4)
    spk[:, 0, 1] = 1
    spk[:, 0, 3] = 1  # tie between 1 and 3 -> lowest index
    spk[:2, 1, 2] = 1
    assert losses.spike_count(spk, None).tolist() == [1, 2]
    assert losses.spike_count(torch.zeros(3, 1, 4), None).tolist() == [0]
    mem = torch.zeros(3, 1, 4)
    mem[:, 0, 2] = 1.0
    assert losses.membrane(None, mem).tolist() == [2]


def test_membrane_max_ce_and_readout_by_hand():
    mem = torch.tensor([[[0.1, 2.0, -1.0]], [[1.5, 0.2, 0.3]], [[0.4, -0.5, 0.9]]])  # [T=3, B=1, C=3]
    # maxima over time: class 0 -> 1.5, class 1 -> 2.0, class 2 -> 0.9
    expected = -math.log(math.exp(1.5) / (math.exp(1.5) + math.exp(2.0) + math.exp(0.9)))
    assert losses.MembraneMaxCE()(None, mem, torch.tensor([0])).item() == pytest.approx(expected)
    assert losses.membrane_max(None, mem).tolist() == [1]
    assert losses.membrane(None, mem).tolist() == [0]  # the sum over time would pick class 0 (2.0 vs 1.7 vs 0.2)
    mem.requires_grad_(True)
    losses.MembraneMaxCE()(None, mem, torch.tensor([0])).backward()
    assert mem.grad[1, 0, 0] < 0 and mem.grad[0, 0, 0] == 0  # only the step of each maximum gets a gradient
