"""Spiking networks built from spec strings in the literature's notation.

Tokens joined by ``-``: ``{n}C{k}`` conv, n filters k x k (no padding, stride 1);
``MP{k}`` / ``AP{k}`` max / average pooling k x k; ``FC{n}`` fully connected to n units,
flattening first when needed; ``RFC{n}`` the same, with its neurons also driven by their own
previous spikes (``neuron=rlif`` or ``alif``, on a flat input). Every weight layer is followed by its pooling (if any)
and then a spiking neuron layer: conv -> pool -> neuron (the order of snnTorch's tutorial 6).

Execution is multi-step: stateless layers run once over all T*B samples and only the
neuron recurrence loops over time. With a static input (direct coding) the first
block's weight layer and pooling run once on [B, ...] and are broadcast over T.
"""

from __future__ import annotations

import math
import re
from typing import Callable, Sequence

import torch
from torch import nn

from .neurons import LI
from .options import one_of

PRECISIONS = ("fp32", "bf16")
INITS = ("default", "xavier_uniform")
READOUT_NEURONS = ("same", "li")
_TOKEN = re.compile(r"(?P<conv>(?P<filters>\d+)C(?P<kernel>\d+))|(?P<pool>(?P<kind>MP|AP)(?P<size>\d+))"
                    r"|(?P<fc>(?P<recurrent>R?)FC(?P<units>\d+))")


class ArchitectureError(ValueError):
    """An architecture string that does not parse or does not fit the input."""

    def __init__(self, arch: str, token: str, reason: str):
        super().__init__(f"architecture {arch!r}: bad token {token!r}: {reason}")
        self.token = token


def parse(arch: str) -> list[tuple[str, str, tuple[int, ...]]]:
    """``"12C5-MP2-FC10"`` -> ``[("12C5", "conv", (12, 5)), ("MP2", "MP", (2,)), ("FC10", "fc", (10,))]``;
    ``RFC{n}`` gives kind ``"rfc"``."""
    if not isinstance(arch, str) or not arch.strip():
        raise ArchitectureError(str(arch), str(arch), "empty architecture; expected e.g. 'FC1000-FC10'")
    layers = []
    for token in arch.strip().split("-"):
        m = _TOKEN.fullmatch(token.strip())
        if m is None:
            raise ArchitectureError(arch, token, "expected {n}C{k}, MP{k}, AP{k}, FC{n} or RFC{n} (e.g. 12C5, MP2, FC10)")
        if m["conv"]:
            layer = (token, "conv", (int(m["filters"]), int(m["kernel"])))
        elif m["pool"]:
            layer = (token, m["kind"], (int(m["size"]),))
        else:
            layer = (token, "rfc" if m["recurrent"] else "fc", (int(m["units"]),))
        if any(v <= 0 for v in layer[2]):
            raise ArchitectureError(arch, token, "sizes must be positive integers")
        layers.append(layer)
    return layers


class _Block(nn.Module):
    """A weight layer, its pooling (``stateless``), then a spiking ``neuron``."""

    def __init__(self, name: str, stateless: nn.Sequential, neuron: nn.Module, out_shape: tuple[int, ...]):
        super().__init__()
        self.name, self.stateless, self.neuron, self.out_shape = name, stateless, neuron, out_shape
        self.conv = isinstance(stateless[0], nn.Conv2d)
        if self.conv:  # NHWC convolutions run about 1.8x faster on CPU (oneDNN) and suit tensor cores
            stateless.to(memory_format=torch.channels_last)

    def apply_stateless(self, x: torch.Tensor) -> torch.Tensor:
        """The weight layer and pooling on [N, ...]; the current comes out in at least fp32."""
        if self.conv:
            x = x.contiguous(memory_format=torch.channels_last)
        current = self.stateless(x)
        return current.to(torch.promote_types(current.dtype, torch.float32))  # neurons integrate in fp32

    def current(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the stateless layers to every step at once: [T, B, ...] -> [T, B, ...]."""
        t, b = x.shape[:2]
        return self.apply_stateless(x.reshape(t * b, *x.shape[2:])).reshape(t, b, *self.out_shape)


class SpikingNetwork(nn.Module):
    """A feed-forward SNN for ``input_shape`` (C, H, W) with ``num_classes`` output neurons.

    ``neuron(shape=..., surrogate=...)`` builds each spiking layer. ``forward`` returns the
    output layer's spikes and membranes, both [T, B, num_classes]; afterwards
    ``firing_rates`` holds each layer's mean spike rate (detached), and with
    ``record = True``, ``recorded`` holds every layer's spikes.

    ``precision="bf16"`` runs the weight layers (conv, linear) in bfloat16 autocast. Spikes
    are exactly 0 or 1 in bf16; the neurons still integrate their current in fp32.
    ``init="xavier_uniform"`` re-initialises every weight matrix and kernel (the graded_fc100 preset);
    ``"default"`` keeps PyTorch's. ``readout_neuron="li"`` makes the last layer a non-spiking
    leaky integrator with the neuron's decay (its spikes are all zero; train it on the membrane).
    """

    def __init__(self, arch: str, input_shape: Sequence[int], num_classes: int,
                 neuron: Callable[..., nn.Module], surrogate=None, precision: str = "fp32", init: str = "default",
                 readout_neuron: str = "same"):
        super().__init__()
        one_of("precision", precision, PRECISIONS)
        one_of("init", init, INITS)
        self.readout_neuron = one_of("readout_neuron", readout_neuron, READOUT_NEURONS)
        neuron_class = getattr(neuron, "func", neuron)  # the class behind the (partial) factory
        self.arch, self.input_shape, self.precision = arch, tuple(input_shape), precision
        self.blocks = nn.ModuleList()
        self.record = False
        self.recorded: list[torch.Tensor] = []
        self.firing_rates: torch.Tensor | None = None
        self.counter = None  # an OpCounter (snnrun.synops) while evaluation counts synaptic operations
        shape = self.input_shape
        self.state_numel = 0  # elements every layer produces per sample and step (memory estimates)
        layers = parse(arch)
        if getattr(neuron_class, "needs_recurrent_layer", False) and not any(k == "rfc" for _, k, _ in layers):
            raise ArchitectureError(arch, arch, "neuron=rlif makes the RFC{n} layers recurrent and this architecture "
                                    "has none; write e.g. RFC128-FC10, or use neuron=lif")
        i = 0
        while i < len(layers):
            token, kind, args = layers[i]
            if kind in ("MP", "AP"):
                raise ArchitectureError(arch, token, "pooling must follow a conv layer (conv -> pool -> neuron)")
            modules: list[nn.Module] = []
            if kind == "conv":
                if len(shape) != 3:
                    raise ArchitectureError(arch, token, f"a conv layer needs a [C, H, W] input, gets {list(shape)}")
                filters, k = args
                if k > shape[1] or k > shape[2]:
                    raise ArchitectureError(arch, token, f"kernel {k}x{k} does not fit its {shape[1]}x{shape[2]} input")
                modules.append(nn.Conv2d(shape[0], filters, k))
                shape = (filters, shape[1] - k + 1, shape[2] - k + 1)
                self.state_numel += math.prod(shape)
            else:
                if kind == "rfc" and not getattr(neuron_class, "supports_recurrence", False):
                    raise ArchitectureError(arch, token, "a recurrent layer needs neuron=rlif or neuron=alif")
                if kind == "rfc" and len(shape) > 1:
                    raise ArchitectureError(arch, token, f"a recurrent layer needs a flat input, gets {list(shape)} "
                                            "(recurrent conv layers are not supported); put an FC layer before it")
                if len(shape) > 1:
                    modules.append(nn.Flatten())
                modules.append(nn.Linear(math.prod(shape), args[0]))
                shape = (args[0],)
                self.state_numel += args[0]
            name = f"L{len(self.blocks) + 1}_{token}"
            i += 1
            while i < len(layers) and layers[i][1] in ("MP", "AP"):
                token, pool, (size,) = layers[i]
                if len(shape) != 3:
                    raise ArchitectureError(arch, token, "pooling needs a spatial [C, H, W] input, not a flat FC output")
                if size > shape[1] or size > shape[2]:
                    raise ArchitectureError(arch, token, f"pool {size}x{size} does not fit its {shape[1]}x{shape[2]} input")
                modules.append(nn.MaxPool2d(size) if pool == "MP" else nn.AvgPool2d(size))
                shape = (shape[0], shape[1] // size, shape[2] // size)
                self.state_numel += math.prod(shape)
                name += f"_{token}"
                i += 1
            layer = neuron(shape=shape, surrogate=surrogate, **({"recurrent": True} if kind == "rfc" else {}))
            if i == len(layers) and readout_neuron == "li":
                layer = LI.like(layer, shape)
            self.blocks.append(_Block(name, nn.Sequential(*modules), layer, shape))
            self.state_numel += 3 * math.prod(shape)  # spikes, membrane and its gradient
        if init == "xavier_uniform":
            for p in self.parameters():
                if p.dim() >= 2:
                    nn.init.xavier_uniform_(p)
        last = layers[-1][0]
        if shape != (num_classes,):
            raise ArchitectureError(arch, last, f"the last layer must be FC{num_classes}, one unit per class")

    @property
    def layer_names(self) -> list[str]:
        return [b.name for b in self.blocks]

    def forward(self, x: torch.Tensor, time_steps: int | None = None):
        """x: [T, B, *input_shape], or a static [B, *input_shape] repeated for ``time_steps``."""
        rates, self.recorded = [], []
        bf16 = torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")
        for i, block in enumerate(self.blocks):
            if self.counter is not None:
                self.counter.add(i, x, static=i == 0 and time_steps is not None)
            with bf16:
                if i == 0 and time_steps is not None:
                    current = block.apply_stateless(x)
                    current = current.unsqueeze(0).expand(time_steps, *current.shape)
                else:
                    current = block.current(x)
            spk, mem = block.neuron(current)
            if self.counter is not None and getattr(block.neuron, "recurrence", None):
                self.counter.add_recurrent(i, spk)
            rates.append((spk.detach() > 0).float().mean())
            if self.record:
                self.recorded.append(spk.detach())
            x = spk
        self.firing_rates = torch.stack(rates)
        return spk, mem
