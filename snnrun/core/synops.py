"""Synaptic operations and energy estimates, per layer and per sample.

Every input spike of a layer adds its weights into the targets it reaches: an accumulate (AC)
per synapse. ACs = sum_t sum_inputs S_in * fan-out, with fan-out = out_features for FC and, for
a k x k conv, the output positions whose window covers the input pixel (fewer at the
borders, padding and stride included) times C_out. Pooling and the neurons' own updates are not counted.
Where a layer's input is not binary (direct coding, event counts), its weight layer is counted
as dense multiply-accumulates (MACs): once per sample when the input is a static image whose
current is computed once, T times otherwise. A recurrent layer's own spikes S[t-1] add their V
weights too: n ACs each (all_to_all) or 1 (one_to_one). Energy = MACs * E_MAC + ACs * E_AC with Horowitz's
45 nm, 32-bit figures by default (4.6 pJ and 0.9 pJ): an estimate for neuromorphic hardware,
not the energy of the machine that ran the model. ``ann_macs`` is the same network as a
non-spiking ANN: once per image, or T steps of a sequence (a recurrent layer adds its recurrent
weights per step: n x n all-to-all, n one-to-one).
A psn layer's neurons also weight their current over time with learned weights: those MACs are
counted once per sample, in both figures (``add_mixing``).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

E_AC_PJ, E_MAC_PJ = 0.9, 4.6
ENERGY_KEYS = ("synops", "acs", "macs", "energy_pj", "ann_macs", "ann_energy_pj")  # what ``report`` returns


def weight_layer(block) -> nn.Module:
    return next(m for m in block.stateless if isinstance(m, (nn.Linear, nn.Conv2d)))


def fan_out(layer: nn.Module, in_shape: tuple) -> torch.Tensor:
    """How many synapses each input element drives, shaped like one sample's input: for a conv,
    the output positions whose window covers the element (padding and stride included, fewer at
    the borders) times C_out, counted by a transposed convolution of ones."""
    if isinstance(layer, nn.Linear):
        return torch.full(in_shape, float(layer.out_features))
    (_, h, w), (k, _), (st, _), (p, _) = in_shape, layer.kernel_size, layer.stride, layer.padding
    out_h, out_w = (h + 2 * p - k) // st + 1, (w + 2 * p - k) // st + 1
    extra = (h - ((out_h - 1) * st - 2 * p + k), w - ((out_w - 1) * st - 2 * p + k))  # rows/cols no window reaches
    covering = F.conv_transpose2d(torch.ones(1, 1, out_h, out_w, dtype=torch.float64),
                                  torch.ones(1, 1, k, k, dtype=torch.float64), stride=st, padding=p, output_padding=extra)
    return (covering[0] * layer.out_channels).expand(in_shape).float()


def dense_macs(layer: nn.Module, in_shape: tuple) -> int:
    """Multiply-accumulates of the weight layer on one dense input (padding's zeros included)."""
    if isinstance(layer, nn.Linear):
        return layer.in_features * layer.out_features
    (c, h, w), (k, _), (s, _), (p, _) = in_shape, layer.kernel_size, layer.stride, layer.padding
    return layer.out_channels * ((h + 2 * p - k) // s + 1) * ((w + 2 * p - k) // s + 1) * c * k * k


def recurrent_macs(n: int, recurrence: str) -> int:
    """Multiply-accumulates of a recurrent layer's own weights per step: n x n all-to-all, n one-to-one."""
    return {"all_to_all": n * n, "one_to_one": n}[recurrence]


class OpCounter:
    """Accumulates each layer's ACs and MACs over the batches a network runs while attached."""

    def __init__(self, model, ann_steps: int = 1):
        self.names, self.ann_steps = model.layer_names, ann_steps
        self.recurrent = [getattr(b.neuron, "recurrence", None) for b in model.blocks]
        self.mixing = [getattr(b.neuron, "mixing_macs", None) for b in model.blocks]  # psn: weights over time
        self.mixing_per_sample = [0] * len(model.blocks)
        self.layers = [weight_layer(b) for b in model.blocks]
        self.shapes, shape = [], tuple(model.input_shape)
        for block in model.blocks:
            self.shapes.append(shape)
            shape = block.out_shape
        self.fan_outs: list[torch.Tensor | None] = [None] * len(self.layers)
        self.acs = [0.0] * len(self.layers)
        self.macs = [0.0] * len(self.layers)

    def add(self, i: int, x: torch.Tensor, static: bool) -> None:
        """Layer i's input: [T, B, ...] time-first, or [B, ...] for a static input computed once."""
        binary = bool(((x == 0) | (x == 1)).all())
        if binary:
            if self.fan_outs[i] is None or self.fan_outs[i].device != x.device:
                self.fan_outs[i] = fan_out(self.layers[i], self.shapes[i]).to(x.device)
            flat = x.reshape(-1, *self.shapes[i]).float()
            self.acs[i] += float((flat.sum(0) * self.fan_outs[i]).sum())
        else:
            rows = x.shape[0] if static else x.shape[0] * x.shape[1]
            self.macs[i] += float(dense_macs(self.layers[i], self.shapes[i])) * rows

    def add_mixing(self, i: int, current: torch.Tensor) -> None:
        """Layer i's neurons weight their current [T, B, ...] over time (psn): MACs per neuron and sample."""
        if self.mixing[i] is not None:
            self.mixing_per_sample[i] = self.mixing[i](current.shape[0]) * current[0, 0].numel()
            self.macs[i] += float(self.mixing_per_sample[i] * current.shape[1])

    def add_recurrent(self, i: int, spk: torch.Tensor) -> None:
        """Layer i's own spikes of every step but the last drive V at the next step."""
        n = spk.shape[-1] if self.recurrent[i] == "all_to_all" else 1
        self.acs[i] += float(spk[:-1].sum()) * n

    def totals(self) -> list[float]:
        return [*self.acs, *self.macs]

    def report(self, totals: list[float], samples: int, e_ac: float = E_AC_PJ, e_mac: float = E_MAC_PJ) -> dict:
        """Per-sample figures from summed ``totals`` (see ``totals``; summed over ranks)."""
        n = len(self.names)
        acs, macs = [a / samples for a in totals[:n]], [m / samples for m in totals[n:]]
        ann = self.ann_steps * sum(dense_macs(layer, shape) + (recurrent_macs(layer.out_features, rec) if rec else 0)
                                   for layer, shape, rec in zip(self.layers, self.shapes, self.recurrent))
        ann += sum(self.mixing_per_sample)  # the same weighting over time, once per sequence
        return {
            "synops": {name: {"ac": a, "mac": m} for name, a, m in zip(self.names, acs, macs)},
            "acs": sum(acs), "macs": sum(macs),
            "energy_pj": sum(acs) * e_ac + sum(macs) * e_mac,
            "ann_macs": float(ann), "ann_energy_pj": ann * e_mac,
        }

