"""Synaptic operations and energy: fan-outs and counts written out by hand, against a brute-force
count through the layers themselves."""

from functools import partial

import pytest
import torch
from torch import nn

from snnrun.core import neurons, synops
from snnrun.core.architectures import SpikingNetwork


def test_fc_fan_out_is_out_features():
    assert torch.equal(synops.fan_out(nn.Linear(3, 4), (3,)), torch.full((3,), 4.0))
    assert synops.dense_macs(nn.Linear(3, 4), (3,)) == 12


def test_conv_fan_out_counts_the_borders():
    """4x4 input, 3x3 kernel, 2 output channels: the 2x2 output positions whose window covers each
    pixel are 1, 2, 2, 1 along each axis, so the fan-out is their product times 2."""
    conv = nn.Conv2d(1, 2, 3)
    per_axis = torch.tensor([1.0, 2.0, 2.0, 1.0])
    expected = (per_axis[:, None] * per_axis[None, :] * 2).reshape(1, 4, 4)
    assert expected[0, 0, 0] == 2 and expected[0, 1, 1] == 8 and expected[0, 0, 2] == 4
    assert torch.equal(synops.fan_out(conv, (1, 4, 4)), expected)
    assert synops.dense_macs(conv, (1, 4, 4)) == 2 * 2 * 2 * 1 * 9


@pytest.mark.parametrize("size, k, channels, padding, stride",
                         [(6, 3, 2, 0, 1), (7, 5, 3, 0, 1), (5, 1, 1, 0, 1), (6, 3, 2, 1, 1), (7, 3, 1, 1, 2),
                          (8, 5, 2, 2, 3), (6, 4, 1, 0, 2)])
def test_conv_fan_out_equals_a_brute_force_count(size, k, channels, padding, stride):
    """Each pixel's fan-out = the number of (output position, channel) pairs its spike reaches:
    a conv with all-one weights on a one-spike image sums exactly those, at every pixel."""
    conv = nn.Conv2d(channels, 4, k, stride=stride, padding=padding, bias=False)
    ones = nn.Conv2d(channels, 4, k, stride=stride, padding=padding, bias=False)
    nn.init.ones_(ones.weight)
    fan = synops.fan_out(conv, (channels, size, size))
    images = torch.eye(channels * size * size).reshape(-1, channels, size, size)
    assert torch.equal(fan.reshape(-1), ones(images).sum((1, 2, 3)).detach())
    out = (size + 2 * padding - k) // stride + 1
    assert synops.dense_macs(conv, (channels, size, size)) == 4 * out * out * channels * k * k


def test_padded_and_strided_conv_fan_out_by_hand():
    """5x5 input, 3x3 kernel, padding 1, stride 2: three windows per axis, over rows -1..1, 1..3
    and 3..5. Rows 1 and 3 lie under two windows, rows 0, 2 and 4 under one: 1, 2, 1, 2, 1."""
    conv = nn.Conv2d(1, 3, 3, stride=2, padding=1)
    per_axis = torch.tensor([1.0, 2.0, 1.0, 2.0, 1.0])
    assert torch.equal(synops.fan_out(conv, (1, 5, 5)), (per_axis[:, None] * per_axis[None, :] * 3).reshape(1, 5, 5))


def network(arch="FC6-FC3", shape=(4,)):
    torch.manual_seed(0)
    return SpikingNetwork(arch, shape, 3, neuron=partial(neurons.LIF, beta=0.9, threshold=0.5))


def count(net, x, time_steps=None):
    net.counter = counter = synops.OpCounter(net)
    with torch.no_grad():
        net(x, time_steps=time_steps)
    net.counter = None
    return counter


def test_spikes_are_counted_as_accumulates_per_target():
    """Input spikes [T=2, B=1, 4]: 3 spikes into FC6 -> 18 ACs; L2's ACs are L1's spikes x 3."""
    net = network()
    x = torch.tensor([[[1.0, 0, 1, 0]], [[0, 0, 1, 0]]])
    counter = count(net, x)
    net.record = True
    with torch.no_grad():
        net(x)
    hidden_spikes = net.recorded[0].sum().item()
    assert counter.acs == [18.0, hidden_spikes * 3] and counter.macs == [0.0, 0.0]
    report = counter.report(counter.totals(), samples=1)
    assert report["synops"]["L1_FC6"] == {"ac": 18.0, "mac": 0.0}
    assert report["energy_pj"] == pytest.approx((18 + hidden_spikes * 3) * 0.9)
    assert report["ann_macs"] == 4 * 6 + 6 * 3 and report["ann_energy_pj"] == pytest.approx(42 * 4.6)


def test_a_real_valued_input_is_counted_as_macs_once_when_static_and_t_times_otherwise():
    net = network()
    static = count(net, torch.rand(5, 4) + 0.1, time_steps=7)  # direct coding: the current is computed once
    assert static.macs[0] == 5 * 4 * 6 and static.acs[0] == 0
    sequence = count(net, torch.rand(7, 5, 4) + 0.1)  # a temporal input of real values: every step
    assert sequence.macs[0] == 7 * 5 * 4 * 6
    report = sequence.report(sequence.totals(), samples=5, e_ac=1.0, e_mac=2.0)
    assert report["macs"] == 7 * 24 and report["energy_pj"] == pytest.approx(report["acs"] * 1.0 + 7 * 24 * 2.0)


def test_a_conv_network_counts_each_layer_on_its_input_after_pooling():
    net = network("2C3-AP2-FC3", (1, 6, 6))
    x = (torch.rand(4, 2, 1, 6, 6) > 0.5).float()
    counter = count(net, x)
    fan = synops.fan_out(net.blocks[0].stateless[0], (1, 6, 6))
    assert counter.acs[0] == pytest.approx(float((x.sum((0, 1)) * fan).sum()))
    net.record = True
    with torch.no_grad():
        net(x)
    assert counter.acs[1] == net.recorded[0].sum().item() * 3  # [2, 2, 2] pooled spikes, each into FC3


def test_a_recurrent_layer_counts_its_own_spikes_into_v_and_the_ann_runs_every_step():
    from snnrun.core.recurrent import RLIF

    torch.manual_seed(1)
    # the ANN's recurrent weights per step: 5 x 5 = 25 all-to-all, 5 one-to-one (a diagonal of 5 weights)
    for recurrence, per_spike, ann_recurrent in (("all_to_all", 5, 25), ("one_to_one", 1, 5)):
        net = SpikingNetwork("RFC5-FC3", (4,), 3, neuron=partial(RLIF, beta=0.9, threshold=0.5, recurrence=recurrence))
        x = (torch.rand(6, 2, 4) > 0.4).float()
        net.counter = counter = synops.OpCounter(net, ann_steps=6)
        net.record = True
        with torch.no_grad():
            net(x)
        own = net.recorded[0][:-1].sum().item()  # the spikes of steps 0..T-2 reach V at the next step
        assert own > 0
        assert counter.acs[0] == x.sum().item() * 5 + own * per_spike
        report = counter.report(counter.totals(), samples=2)
        assert report["ann_macs"] == 6 * (4 * 5 + ann_recurrent + 5 * 3)  # 360 all-to-all, 240 one-to-one


def test_psn_weights_over_time_are_counted_as_macs_per_sample():
    """psn window 3 over T = 5: each neuron takes 1 + 2 + 3 + 3 + 3 = 12 MACs of W per sequence, so the
    4 hidden neurons 48 and the 3 outputs 36; sliding taps 2: 1 + 2 + 2 + 2 + 2 = 9 per neuron."""
    from snnrun.core.parallel import PSN, SlidingPSN

    torch.manual_seed(0)
    x = (torch.rand(5, 2, 6) > 0.5).float()  # binary input: its weights are ACs, not MACs
    for neuron, per_neuron in ((partial(PSN, time_steps=5, window=3), 12), (partial(SlidingPSN, taps=2), 9)):
        net = SpikingNetwork("FC4-FC3", (6,), 3, neuron=neuron)
        counter = count(net, x)
        assert counter.macs == [2 * 4 * per_neuron, 2 * 3 * per_neuron]  # two samples
        report = counter.report(counter.totals(), samples=2)
        assert report["macs"] == 7 * per_neuron
        assert report["ann_macs"] == (6 * 4 + 4 * 3) + 7 * per_neuron  # one step of input (ann_steps=1) + mixing
