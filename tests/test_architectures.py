"""Spec-string architectures (SPEC section 5)."""

import copy
import functools

import pytest
import torch
from torch import nn

from snnrun.core import architectures, neurons, surrogates
from snnrun.core.architectures import ArchitectureError, SpikingNetwork

LIF = functools.partial(neurons.LIF, beta=0.5)


def layers(net):
    return [m for b in net.blocks for m in b.stateless if not isinstance(m, nn.Flatten)]


def test_csnn_layers_on_mnist():
    net = SpikingNetwork("12C5-MP2-64C5-MP2-FC10", (1, 28, 28), 10, LIF, surrogates.FastSigmoid())
    conv1, pool1, conv2, pool2, fc = layers(net)
    assert (conv1.in_channels, conv1.out_channels, conv1.kernel_size) == (1, 12, (5, 5))
    assert isinstance(pool1, nn.MaxPool2d) and pool1.kernel_size == 2
    assert (conv2.in_channels, conv2.out_channels, conv2.kernel_size) == (12, 64, (5, 5))
    assert isinstance(pool2, nn.MaxPool2d)
    assert (fc.in_features, fc.out_features) == (1024, 10)
    assert [type(b.neuron) for b in net.blocks] == [neurons.LIF] * 3
    assert net.layer_names == ["L1_12C5_MP2", "L2_64C5_MP2", "L3_FC10"]
    assert net.blocks[0].neuron.surrogate.slope == 25


def test_dense_and_mixed_specs():
    net = SpikingNetwork("FC1000-FC10", (1, 28, 28), 10, LIF)
    fc1, fc2 = layers(net)
    assert (fc1.in_features, fc1.out_features, fc2.in_features) == (784, 1000, 1000)
    net = SpikingNetwork("32C3-AP2-FC128-FC10", (1, 28, 28), 10, LIF)
    conv, pool, fc1, fc2 = layers(net)
    assert isinstance(pool, nn.AvgPool2d) and fc1.in_features == 32 * 13 * 13


def test_forward_shapes_rates_and_recording():
    torch.manual_seed(0)
    net = SpikingNetwork("8C5-MP2-FC10", (1, 12, 12), 10, LIF)
    net.record = True
    spk, mem = net(torch.rand(6, 3, 1, 12, 12) * 3)
    assert spk.shape == mem.shape == (6, 3, 10)
    assert net.firing_rates.shape == (2,)
    assert [r.shape for r in net.recorded] == [(6, 3, 8, 4, 4), (6, 3, 10)]
    assert net.firing_rates[0].item() == pytest.approx(net.recorded[0].mean().item())


def test_static_input_equals_repeated_input():
    torch.manual_seed(0)
    net = SpikingNetwork("6C3-MP2-FC10", (1, 10, 10), 10, LIF)
    x = torch.rand(4, 1, 10, 10) * 2
    spk1, mem1 = net(x.unsqueeze(0).expand(9, *x.shape))
    spk2, mem2 = net(x, time_steps=9)
    assert torch.equal(spk1, spk2)
    torch.testing.assert_close(mem1, mem2)


def test_per_neuron_parameters_get_layer_shape():
    net = SpikingNetwork("4C3-FC10", (1, 8, 8), 10,
                         functools.partial(neurons.LIF, beta=0.9, learn_beta=True, per_neuron=True))
    assert net.blocks[0].neuron.beta.shape == (4, 6, 6) and net.blocks[1].neuron.beta.shape == (10,)


@pytest.mark.parametrize(
    "arch, token, reason",
    [
        ("12X5-FC10", "12X5", "expected"),
        ("FC-FC10", "FC", "expected"),
        ("64C30-FC10", "64C30", "does not fit"),
        ("12C5-MP2-64C5-MP2-64C5-FC10", "64C5", "does not fit"),
        ("MP2-FC10", "MP2", "must follow a conv"),
        ("FC100-MP2-FC10", "MP2", "spatial"),
        ("FC100-12C5-FC10", "12C5", "conv layer needs"),
        ("FC1000-FC5", "FC5", "FC10"),
        ("FC0-FC10", "FC0", "positive"),
        ("", "", "empty"),
        ("32C3p3-FC10", "32C3p3", "smaller than the kernel"),
        ("32C3s0-FC10", "32C3s0", "positive"),
        ("32C3p1s-FC10", "32C3p1s", "expected"),
        ("32C3s2p1-FC10", "32C3s2p1", "expected"),
        ("8C31p1-FC10", "8C31p1", "padded by 1"),
        ("BN-FC10", "BN", "right after"),
        ("32C3-BN-MP2-BN-FC10", "BN", "one BN per layer"),
        ("FC100-BN-BN-FC10", "BN", "one BN per layer"),
        ("bn-FC10", "bn", "expected"),
        ("DO0.2-FC10", "DO0.2", "after a layer"),
        ("FC100-DO1.5-FC10", "DO1.5", "between 0 and 1"),
        ("FC100-DO0-FC10", "DO0", "between 0 and 1"),
        ("FC100-FC10-DO0.2", "DO0.2", "output layer"),
        ("FC100-DO0.2-DO0.2-FC10", "DO0.2", "after a layer"),
        ("FC100-DO-FC10", "DO", "expected"),
    ],
)
def test_bad_specs_name_the_token(arch, token, reason):
    with pytest.raises(ArchitectureError, match=reason) as err:
        SpikingNetwork(arch, (1, 28, 28), 10, LIF)
    assert err.value.token == token and repr(token) in str(err.value)


def test_parse():
    assert architectures.parse("12C5-MP2-FC10") == [("12C5", "conv", (12, 5, 0, 1)), ("MP2", "MP", (2,)),
                                                    ("FC10", "fc", (10,))]
    assert architectures.parse("32C3p1-BN-AP2-64C3p1s2-DO0.25-RFC8-BN-FC10") == [
        ("32C3p1", "conv", (32, 3, 1, 1)), ("BN", "BN", ()), ("AP2", "AP", (2,)), ("64C3p1s2", "conv", (64, 3, 1, 2)),
        ("DO0.25", "DO", (0.25,)), ("RFC8", "rfc", (8,)), ("BN", "BN", ()), ("FC10", "fc", (10,))]


def test_padding_stride_batch_norm_and_dropout_layers_and_shapes():
    net = SpikingNetwork("16C3p1-BN-MP2-32C3p1s2-BN-DO0.2-FC64-BN-DO0.5-FC10", (1, 28, 28), 10, LIF)
    conv1, bn1, pool, conv2, bn2, fc1, bn3, fc2 = layers(net)
    assert (conv1.padding, conv1.stride, conv2.padding, conv2.stride) == ((1, 1), (1, 1), (1, 1), (2, 2))
    assert isinstance(bn1, nn.BatchNorm2d) and bn1.num_features == 16 and bn2.num_features == 32
    assert isinstance(bn3, nn.BatchNorm1d) and bn3.num_features == 64
    assert [b.out_shape for b in net.blocks] == [(16, 14, 14), (32, 7, 7), (64,), (10,)]
    assert fc1.in_features == 32 * 7 * 7
    assert [b.dropout for b in net.blocks] == [0.0, 0.2, 0.5, 0.0]
    assert net.layer_names == ["L1_16C3p1_BN_MP2", "L2_32C3p1s2_BN", "L3_FC64_BN", "L4_FC10"]
    spk, mem = net(torch.rand(3, 1, 28, 28), time_steps=4)
    assert spk.shape == mem.shape == (4, 3, 10)


def test_batch_norm_after_pooling_normalises_the_pooled_current():
    net = SpikingNetwork("8C3p1-MP2-BN-FC10", (1, 28, 28), 10, LIF)
    conv, pool, bn, fc = layers(net)
    assert isinstance(pool, nn.MaxPool2d) and isinstance(bn, nn.BatchNorm2d) and bn.num_features == 8
    assert net.layer_names == ["L1_8C3p1_MP2_BN", "L2_FC10"] and fc.in_features == 8 * 14 * 14
    block = net.blocks[0].train()
    current = block.current(torch.rand(3, 4, 1, 28, 28))
    torch.testing.assert_close(current.mean((0, 1, 3, 4)), torch.zeros(8), atol=1e-5, rtol=0)  # its own statistics


def test_batch_norm_uses_statistics_over_all_time_steps_and_samples():
    """tdBN: the current of channel c is normalised with the mean and (biased) variance over every
    t, b, y, x; written out here from the conv's output."""
    torch.manual_seed(0)
    net = SpikingNetwork("6C3p1-BN-FC10", (2, 5, 5), 10, LIF).train()
    block = net.blocks[0]
    conv, bn = block.stateless[0], block.stateless[1]
    nn.init.uniform_(bn.weight, 0.5, 2.0)
    nn.init.uniform_(bn.bias, -1.0, 1.0)
    x = torch.rand(7, 3, 2, 5, 5) * torch.arange(1.0, 8.0)[:, None, None, None, None]  # steps differ in scale
    raw = conv(x.reshape(21, 2, 5, 5)).reshape(7, 3, 6, 5, 5)
    mean = raw.mean((0, 1, 3, 4), keepdim=True)
    var = raw.var((0, 1, 3, 4), unbiased=False, keepdim=True)
    expected = (raw - mean) / torch.sqrt(var + bn.eps) * bn.weight[:, None, None] + bn.bias[:, None, None]
    torch.testing.assert_close(block.current(x), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bn.running_mean, 0.1 * mean.flatten(), rtol=1e-5, atol=1e-6)
    per_step = torch.stack([bn(conv(x[t])) for t in range(7)])  # per-step BN (not tdBN) differs
    assert not torch.allclose(per_step, expected, atol=1e-3)


def test_batch_norm_of_a_static_input_equals_the_repeated_input_in_training():
    """The first layer of a static input runs on [B, ...] once: its batch statistics equal those of
    the T identical copies, so spikes, membranes and gradients match the repeated input."""
    torch.manual_seed(0)
    net = SpikingNetwork("4C3p1-BN-AP2-FC16-BN-FC10", (1, 6, 6), 10, LIF).double().train()
    twin = copy.deepcopy(net)
    x = torch.rand(5, 1, 6, 6, dtype=torch.float64) * 2
    spk1, mem1 = net(x, time_steps=6)
    spk2, mem2 = twin(x.unsqueeze(0).expand(6, *x.shape))
    assert torch.equal(spk1, spk2)
    torch.testing.assert_close(mem1, mem2)
    mem1.sum().backward()
    mem2.sum().backward()
    for p1, p2 in zip(net.parameters(), twin.parameters()):
        torch.testing.assert_close(p1.grad, p2.grad, rtol=1e-10, atol=1e-12)


def test_dropout_silences_the_same_neurons_at_every_step_and_only_in_training():
    torch.manual_seed(0)
    net = SpikingNetwork("FC400-DO0.25-FC10", (20,), 10, LIF)
    block = net.blocks[0]
    spikes = torch.ones(6, 32, 400)
    dropped = block.drop(spikes)
    assert torch.equal(dropped, dropped[:1].expand_as(dropped))  # one mask for all steps
    assert torch.equal(dropped.unique(), torch.tensor([0.0, 1 / 0.75]))
    assert (dropped[0] == 0).float().mean().item() == pytest.approx(0.25, abs=0.02)
    net.eval()
    assert block.drop(spikes) is spikes
    net.record = True
    net(torch.rand(3, 20) * 4, time_steps=5)
    assert set(net.recorded[0].unique().tolist()) <= {0.0, 1.0}  # recorded spikes stay binary


def _nchw_reference(net, x, time_steps):
    """The same network run layer by layer in plain NCHW with the step-by-step neuron."""
    out, spikes = x.unsqueeze(0).expand(time_steps, *x.shape), []
    for block in net.blocks:
        t, b = out.shape[:2]
        stateless = copy.deepcopy(block.stateless).to(memory_format=torch.contiguous_format)
        current = stateless(out.reshape(t * b, *out.shape[2:]).contiguous()).reshape(t, b, *block.out_shape)
        reference = copy.deepcopy(block.neuron)
        reference.fused = False
        out, mem = reference(current)
        spikes.append(out)
    return spikes, mem


def test_conv_layers_run_channels_last_with_unchanged_results():
    torch.manual_seed(0)
    net = SpikingNetwork("6C3-MP2-8C3-MP2-FC10", (1, 14, 14), 10, LIF)
    conv = net.blocks[0].stateless[0]
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.rand(5, 1, 14, 14) * 3
    net.record = True
    _, mem = net(x, time_steps=7)
    ref_spikes, ref_mem = _nchw_reference(net, x, 7)
    assert net.recorded[0].sum() > 0
    for ours, ref in zip(net.recorded, ref_spikes):
        assert torch.equal(ours, ref)
    torch.testing.assert_close(mem, ref_mem, rtol=1e-5, atol=1e-5)


def test_bf16_runs_weight_layers_in_bf16_and_neurons_in_fp32():
    torch.manual_seed(0)
    net = SpikingNetwork("6C3-MP2-FC10", (1, 10, 10), 10, LIF, precision="bf16")
    currents, products = [], []
    net.blocks[0].neuron.register_forward_hook(lambda m, args, out: currents.append(args[0]))
    for block in net.blocks:
        weighted = [m for m in block.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
        weighted[0].register_forward_hook(lambda m, args, out: products.append(out.dtype))
    x = torch.rand(4, 1, 10, 10) * 3
    spk, mem = net(x, time_steps=6)
    assert products == [torch.bfloat16, torch.bfloat16]  # the conv and the linear layer, under autocast
    assert currents[0].dtype == torch.float32 and mem.dtype == spk.dtype == torch.float32
    assert set(spk.unique().tolist()) <= {0.0, 1.0}
    mem.sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in net.parameters())
    net.precision = "fp32"
    net(x, time_steps=6)
    torch.testing.assert_close(currents[0], currents[1], rtol=0.02, atol=0.02)  # bf16 rounding only


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision"):
        SpikingNetwork("FC10", (1, 4, 4), 10, LIF, precision="fp8")


def test_xavier_uniform_init():
    torch.manual_seed(0)
    net = SpikingNetwork("FC100-FC10", (1, 28, 28), 10, LIF, init="xavier_uniform")
    fc1, fc2 = layers(net)
    for fc in (fc1, fc2):
        bound = (6 / (fc.in_features + fc.out_features)) ** 0.5
        assert fc.weight.abs().max() <= bound and fc.weight.abs().max() > 0.9 * bound
    with pytest.raises(ValueError, match="init"):
        SpikingNetwork("FC10", (1, 4, 4), 10, LIF, init="orthogonal")
