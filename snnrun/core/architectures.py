"""Spiking networks built from spec strings in the literature's notation.

Tokens joined by ``-``: ``{n}C{k}`` conv, n filters k x k, optionally ``p{p}`` zero padding and
``s{s}`` stride (``32C3p1``, ``64C3p1s2``); ``MP{k}`` / ``AP{k}`` max / average pooling k x k;
``FC{n}`` fully connected to n units, flattening first when needed; ``RFC{n}`` the same, with its
neurons also driven by their own previous spikes (``neuron=rlif`` or ``alif``, on a flat input);
``BN`` right after a weight layer or after its pooling: batch normalisation of its current with
statistics over all T*B samples (tdBN, per channel); ``DO{p}`` after a layer: dropout of its spikes with probability
p, one mask for all time steps. Every weight layer is followed by its BN and pooling (if any)
and then a spiking neuron layer: conv -> BN -> pool -> neuron (snnTorch tutorial 6's order;
``MP2-BN`` normalises the pooled current instead, with its own statistics: a quarter of the work).

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

from . import backends
from .neurons import LI, Graded
from .options import one_of, positive

PRECISIONS = ("fp32", "bf16")
INITS = ("default", "xavier_uniform")
RECURRENT_INITS = ("default", "zeros", "orthogonal")
READOUT_NEURONS = ("same", "li")
_TOKEN = re.compile(r"(?P<conv>(?P<filters>\d+)C(?P<kernel>\d+)(?:p(?P<padding>\d+))?(?:s(?P<stride>\d+))?)"
                    r"|(?P<pool>(?P<kind>MP|AP)(?P<size>\d+))|(?P<fc>(?P<recurrent>R?)FC(?P<units>\d+))"
                    r"|(?P<bn>BN)|(?P<dropout>DO(?P<p>\d*\.?\d+))")
_EXPECTED = ("expected {n}C{k}[p{p}][s{s}], MP{k}, AP{k}, FC{n}, RFC{n}, BN or DO{p} "
             "(e.g. 32C3p1, MP2, FC10, DO0.2)")


class ArchitectureError(ValueError):
    """An architecture string that does not parse or does not fit the input."""

    def __init__(self, arch: str, token: str, reason: str):
        super().__init__(f"architecture {arch!r}: bad token {token!r}: {reason}")
        self.token = token


def parse(arch: str) -> list[tuple[str, str, tuple]]:
    """``"32C3p1-BN-MP2-DO0.2-FC10"`` -> ``[("32C3p1", "conv", (32, 3, 1, 1)), ("BN", "BN", ()),
    ("MP2", "MP", (2,)), ("DO0.2", "DO", (0.2,)), ("FC10", "fc", (10,))]``; conv args are
    (filters, kernel, padding, stride); ``RFC{n}`` gives kind ``"rfc"``."""
    if not isinstance(arch, str) or not arch.strip():
        raise ArchitectureError(str(arch), str(arch), "empty architecture; expected e.g. 'FC1000-FC10'")
    layers = []
    for token in arch.strip().split("-"):
        token = token.strip()
        m = _TOKEN.fullmatch(token)
        if m is None:
            raise ArchitectureError(arch, token, _EXPECTED)
        if m["conv"]:
            args = (int(m["filters"]), int(m["kernel"]), int(m["padding"] or 0), int(m["stride"] or 1))
            if min(args[:2] + args[3:]) <= 0:
                raise ArchitectureError(arch, token, "filters, kernel and stride must be positive integers")
            if args[2] >= args[1]:
                raise ArchitectureError(arch, token, f"padding {args[2]} must be smaller than the kernel {args[1]}")
            layer = (token, "conv", args)
        elif m["pool"]:
            layer = (token, m["kind"], (int(m["size"]),))
        elif m["fc"]:
            layer = (token, "rfc" if m["recurrent"] else "fc", (int(m["units"]),))
        elif m["bn"]:
            layer = (token, "BN", ())
        else:
            p = float(m["p"])
            if not 0 < p < 1:
                raise ArchitectureError(arch, token, f"dropout probability {p} must lie strictly between 0 and 1")
            layer = (token, "DO", (p,))
        if any(v <= 0 for v in layer[2]) and layer[1] != "conv":
            raise ArchitectureError(arch, token, "sizes must be positive integers")
        layers.append(layer)
    return layers


GATHER_BELOW = 0.15  # input density under which gathering the non-zero inputs beats a dense product (measured)
FEW_INPUTS = 16  # a linear layer on this many inputs or fewer (a pixel) gathers them whatever their density


class _Block(nn.Module):
    """A weight layer, its batch norm and pooling (``stateless``), then a spiking ``neuron``, whose
    spikes ``dropout`` zeroes in training with one mask for all time steps."""

    def __init__(self, name: str, stateless: nn.Sequential, neuron: nn.Module, out_shape: tuple[int, ...],
                 dropout: float = 0.0):
        super().__init__()
        self.name, self.stateless, self.neuron, self.out_shape = name, stateless, neuron, out_shape
        self.dropout = dropout
        self.conv = isinstance(stateless[0], nn.Conv2d)
        if self.conv:  # NHWC convolutions run about 1.8x faster on CPU (oneDNN) and suit tensor cores
            stateless.to(memory_format=torch.channels_last)

    def apply_stateless(self, x: torch.Tensor) -> torch.Tensor:
        """The weight layer and pooling on [N, ...]; the current comes out in at least fp32."""
        if self.conv:
            x = x.contiguous(memory_format=torch.channels_last)
        current = self.stateless(x)
        return current.to(torch.promote_types(current.dtype, torch.float32))  # neurons integrate in fp32

    def current(self, x: torch.Tensor, density: torch.Tensor | None = None) -> torch.Tensor:
        """Apply the stateless layers to every step at once: [T, B, ...] -> [T, B, ...]. ``density``: the
        fraction of x that is non-zero, where known (the previous layer's firing rate, a 0-d tensor)."""
        t, b = x.shape[:2]
        if self.gathers(x, density):
            from . import numba_linear

            return numba_linear.linear(x.reshape(t * b, -1), self.stateless[-1]).reshape(t, b, *self.out_shape)
        return self.apply_stateless(x.reshape(t * b, *x.shape[2:])).reshape(t, b, *self.out_shape)

    def gathers(self, x: torch.Tensor, density: torch.Tensor | None) -> bool:
        """Whether the numba kernels of ``numba_linear`` run this block's linear layer: on a CPU, without BN
        or bf16, where its neuron layer runs numba (``neuron.backend=numba``, or ``auto`` on float32 with numba
        installed), and where the input is sparse (fewer than ``GATHER_BELOW`` non-zero) or only a few values."""
        backend = getattr(self.neuron, "backend", "torch")
        linear = self.stateless[-1]
        if not (isinstance(linear, nn.Linear) and all(isinstance(m, (nn.Flatten, nn.Linear)) for m in self.stateless)
                and x.device.type == "cpu" and x.dtype == linear.weight.dtype
                and not torch.is_autocast_enabled(x.device.type)):
            return False
        if not backends.numba_runs(backend, x.dtype):
            return False
        return linear.in_features <= FEW_INPUTS or (density is not None and density.item() < GATHER_BELOW)

    def projects(self, x: torch.Tensor) -> bool:
        """Whether the neuron layer computes this block's linear layer itself: one input per step (a pixel),
        no BN or bf16, and a neuron whose numba kernel takes it (``RLIF.takes_projection``). The kernel then
        never stores the current [T, B, n] nor its gradient."""
        linear = self.stateless[-1]
        return (len(self.stateless) == 1 and isinstance(linear, nn.Linear) and linear.in_features == 1
                and x.dim() == 3 and x.dtype == linear.weight.dtype and not torch.is_autocast_enabled(x.device.type)
                and hasattr(self.neuron, "takes_projection") and self.neuron.takes_projection(x[..., 0]))

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(S, U) of the neuron layer on x [T, B, 1], its current c + x w computed in its kernel (``projects``)."""
        linear = self.stateless[-1]
        bias = linear.bias if linear.bias is not None else linear.weight.new_zeros(linear.out_features)
        return self.neuron(x[..., 0], projection=(linear.weight[:, 0], bias))

    def drop(self, spk: torch.Tensor, rows: tuple[int, slice] | None = None) -> torch.Tensor:
        """Inverted dropout on [T, B, ...] spikes: the same neurons of a sample are silenced at every
        step (a mask drawn per step would only thin the spike trains), the rest scaled by 1/(1-p).
        ``rows`` = (N, shard): these B rows are the ``shard`` of a batch of N (one torchrun rank's);
        the masks are drawn for all N rows, so every sample gets the mask it gets in one process."""
        if not (self.training and self.dropout):
            return spk
        total, shard = rows or (spk.shape[1], slice(None))
        keep = spk.new_empty((total, *spk.shape[2:])).bernoulli_(1 - self.dropout)[shard]
        return spk * (keep / (1 - self.dropout))


class SpikingNetwork(nn.Module):
    """A feed-forward SNN for ``input_shape`` (C, H, W) with ``num_classes`` output neurons.

    ``neuron(shape=..., surrogate=...)`` builds each spiking layer. ``forward`` returns the
    output layer's spikes and membranes, both [T, B, num_classes]; afterwards
    ``firing_rates`` holds each layer's mean spike rate (detached), and with
    ``record = True``, ``recorded`` holds every layer's spikes.

    ``precision="bf16"`` runs the weight layers (conv, linear) in bfloat16 autocast. Spikes
    are exactly 0 or 1 in bf16; the neurons still integrate their current in fp32.
    ``init="xavier_uniform"`` re-initialises every weight matrix and kernel (the graded_fc100 preset);
    ``"default"`` keeps PyTorch's. ``recurrent_init`` re-initialises the recurrent weights V of the
    ``RFC{n}`` layers: ``zeros`` (SRNN's start: no neuron hears another until training says so) or
    ``orthogonal`` with ``recurrent_gain`` (``default``: all-to-all as ``nn.Linear``, one-to-one 0).
    ``readout_neuron="li"`` makes the last layer a non-spiking
    leaky integrator with the neuron's decay (its spikes are all zero; train it on the membrane).
    """

    def __init__(self, arch: str, input_shape: Sequence[int], num_classes: int,
                 neuron: Callable[..., nn.Module], surrogate=None, precision: str = "fp32", init: str = "default",
                 readout_neuron: str = "same", recurrent_init: str = "default", recurrent_gain: float = 1.0):
        super().__init__()
        one_of("precision", precision, PRECISIONS)
        one_of("init", init, INITS)
        one_of("recurrent_init", recurrent_init, RECURRENT_INITS)
        recurrent_gain = positive("recurrent_gain", recurrent_gain, example=1.0)
        self.readout_neuron = one_of("readout_neuron", readout_neuron, READOUT_NEURONS)
        self.neuron_class = getattr(neuron, "func", neuron)  # the class behind the (partial) factory
        self.arch, self.input_shape, self.precision = arch, tuple(input_shape), precision
        self.blocks = nn.ModuleList()
        self.record = False
        self.recorded: list[torch.Tensor] = []
        self.firing_rates: torch.Tensor | None = None
        self.counter = None  # an OpCounter (snnrun.core.synops) while evaluation counts synaptic operations
        shape = self.input_shape
        self.state_numel = 0  # elements every layer produces per sample and step (memory estimates)
        layers = parse(arch)
        if getattr(self.neuron_class, "needs_recurrent_layer", False) and not any(k == "rfc" for _, k, _ in layers):
            raise ArchitectureError(arch, arch, "neuron=rlif makes the RFC{n} layers recurrent and this architecture "
                                    "has none; write e.g. RFC128-FC10, or use neuron=lif")
        i = 0
        while i < len(layers):
            token, kind, args = layers[i]
            if kind in ("MP", "AP"):
                raise ArchitectureError(arch, token, "pooling must follow a conv layer (conv -> pool -> neuron)")
            if kind == "BN":
                raise ArchitectureError(arch, token, "BN normalises a weight layer's current: put it right after "
                                        "{n}C{k} or FC{n} (e.g. 32C3p1-BN-MP2)")
            if kind == "DO":
                raise ArchitectureError(arch, token, "dropout acts on a layer's spikes: put it after a layer, before "
                                        "the next one (e.g. FC500-DO0.2-FC10)")
            modules, shape = self._weight_layer(arch, token, kind, args, shape)
            name = f"L{len(self.blocks) + 1}_{token}"
            i += 1
            bn = i < len(layers) and layers[i][1] == "BN"
            if bn:
                modules.append(self._batch_norm(shape))
                name += "_BN"
                i += 1
            pooled = False
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
                pooled = True
                i += 1
            if i < len(layers) and layers[i][1] == "BN":
                if bn or not pooled:
                    raise ArchitectureError(arch, layers[i][0], "one BN per layer, right after its weight layer or "
                                            "after its pooling (e.g. 32C3p1-BN-MP2 or 32C3p1-MP2-BN)")
                modules.append(self._batch_norm(shape))  # the pooled current
                name += "_BN"
                i += 1
            dropout = 0.0
            if i < len(layers) and layers[i][1] == "DO":
                if i == len(layers) - 1:
                    raise ArchitectureError(arch, layers[i][0], "dropout after the output layer would drop class "
                                            "outputs; put it between two layers")
                dropout = layers[i][2][0]
                i += 1
            layer = neuron(shape=shape, surrogate=surrogate, **({"recurrent": True} if kind == "rfc" else {}))
            if i == len(layers) and readout_neuron == "li":
                if kind == "rfc":
                    raise ArchitectureError(arch, token, "model.readout_neuron=li makes the last layer a leaky integrator "
                                            "without recurrence; end with FC{n} (e.g. RFC128-FC10) or use "
                                            "model.readout_neuron=same")
                layer = LI.like(layer, shape)
            self.blocks.append(_Block(name, nn.Sequential(*modules), layer, shape, dropout))
            self.state_numel += 3 * math.prod(shape)  # spikes, membrane and its gradient
        if init == "xavier_uniform":
            for p in self.parameters():
                if p.dim() >= 2:
                    nn.init.xavier_uniform_(p)
        if recurrent_init != "default":
            for block in self.blocks:
                if getattr(block.neuron, "recurrence", None):
                    block.neuron.initialise_recurrence(recurrent_init, recurrent_gain)
        last = layers[-1][0]
        if shape != (num_classes,):
            raise ArchitectureError(arch, last, f"the last layer must be FC{num_classes}, one unit per class")

    def _batch_norm(self, shape: tuple) -> nn.Module:
        """Batch norm of a current of ``shape``: per channel of [C, H, W], per unit of [n]."""
        self.state_numel += math.prod(shape)
        return nn.BatchNorm2d(shape[0]) if len(shape) == 3 else nn.BatchNorm1d(shape[0])

    def _weight_layer(self, arch: str, token: str, kind: str, args: tuple, shape: tuple) -> tuple[list, tuple]:
        """The conv or linear layer (flattening first if needed) for ``token`` on ``shape``, and its output shape."""
        if kind == "conv":
            if len(shape) != 3:
                raise ArchitectureError(arch, token, f"a conv layer needs a [C, H, W] input, gets {list(shape)}")
            filters, k, p, s = args
            if k > shape[1] + 2 * p or k > shape[2] + 2 * p:
                raise ArchitectureError(arch, token, f"kernel {k}x{k} does not fit its {shape[1]}x{shape[2]} input"
                                        + (f" padded by {p}" if p else ""))
            conv = nn.Conv2d(shape[0], filters, k, stride=s, padding=p)
            shape = (filters, (shape[1] + 2 * p - k) // s + 1, (shape[2] + 2 * p - k) // s + 1)
            self.state_numel += math.prod(shape)
            return [conv], shape
        if kind == "rfc" and not getattr(self.neuron_class, "supports_recurrence", False):
            raise ArchitectureError(arch, token, "a recurrent layer needs neuron=rlif or neuron=alif")
        modules = [nn.Flatten()] if len(shape) > 1 else []  # FC and RFC take a [C, H, W] input flattened
        modules.append(nn.Linear(math.prod(shape), args[0]))
        self.state_numel += args[0]
        return modules, (args[0],)

    @property
    def layer_names(self) -> list[str]:
        return [b.name for b in self.blocks]

    @property
    def spiking_layers(self) -> list[str]:
        """The layers whose neurons spike: all but an ``li`` readout."""
        return [b.name for b in self.blocks if not isinstance(b.neuron, LI)]

    def step(self, x: torch.Tensor, state: list | None = None) -> tuple[torch.Tensor, torch.Tensor, list]:
        """One time step for streaming inference: x [B, *input_shape] -> (output spikes, membranes, state).

        ``state`` holds each layer's neuron state between calls (None: every layer at rest); feeding a
        sequence step by step gives ``forward``'s outputs in eval mode. Dropout is not applied (use eval
        mode). A ``psn`` layer, which needs the whole sequence, refuses."""
        state = state if state is not None else [None] * len(self.blocks)
        bf16 = torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")
        carried = []
        for block, layer_state in zip(self.blocks, state):
            with bf16:
                current = block.apply_stateless(x).reshape(x.shape[0], *block.out_shape)
            spk, mem, layer_state = block.neuron.step(current, layer_state)
            carried.append(layer_state)
            x = spk
        return spk, mem, carried

    def forward(self, x: torch.Tensor, time_steps: int | None = None, rows: tuple[int, slice] | None = None):
        """x: [T, B, *input_shape], or a static [B, *input_shape] repeated for ``time_steps``; ``rows``:
        these B samples are rows ``rows[1]`` of a batch of ``rows[0]`` (see ``_Block.drop``)."""
        rates, self.recorded = [], []
        bf16 = torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")
        for i, block in enumerate(self.blocks):
            if self.counter is not None:
                self.counter.add(i, x, static=i == 0 and time_steps is not None)
            with bf16:  # under bf16 the linear layer runs in autocast, outside the kernel (projects says no)
                projected = self.counter is None and time_steps is None and block.projects(x)
            if projected:
                spk, mem = block.project(x)
            else:
                with bf16:
                    if i == 0 and time_steps is not None:
                        current = block.apply_stateless(x)
                        current = current.unsqueeze(0).expand(time_steps, *current.shape)
                    else:
                        current = block.current(x, rates[-1] if rates else None)
                if self.counter is not None:
                    self.counter.add_mixing(i, current)
                spk, mem = block.neuron(current)
            if self.counter is not None and getattr(block.neuron, "recurrence", None):
                self.counter.add_recurrent(i, spk)
            out = spk.detach()
            rates.append((out > 0).float().mean() if isinstance(block.neuron, Graded)
                         else out.sum(dtype=torch.float32) / out.numel())  # spikes are 0 or 1: their mean, one pass
            if self.record:
                self.recorded.append(spk.detach())
            x = block.drop(spk, rows)
        self.firing_rates = torch.stack(rates)
        return spk, mem
