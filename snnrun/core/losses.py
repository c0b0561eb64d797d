"""Losses on the output layer's spikes S and membranes U, both [T, B, C], and readouts.

Every loss is called as ``loss(spk, mem, target)`` with integer class targets [B]. Losses and
readouts that count output spikes (``needs_spikes``, ``SPIKE_READOUTS``) do not fit an ``li`` readout.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from .options import in_range, one_of


def _per_step_ce(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(1/T) * sum_t CE(x[t], y), in one call over all T*B rows."""
    t = x.shape[0]
    return F.cross_entropy(x.flatten(0, 1), target.repeat(t))


class MembraneCE:
    """sum_t CE(U[t], y) (snnTorch tutorial 5); ``reduction="mean"`` averages over steps instead."""

    def __init__(self, reduction: str = "sum"):
        self.reduction = one_of("reduction", reduction, ("sum", "mean"))

    def __call__(self, spk, mem, target):
        loss = _per_step_ce(mem, target)
        return loss * mem.shape[0] if self.reduction == "sum" else loss


class SpikeCountCE:
    """CE(sum_t S[t], y) (snnTorch ``ce_count_loss``); ``normalize`` uses the rate sum_t S[t] / T."""

    needs_spikes = True  # not for a non-spiking (li) readout

    def __init__(self, normalize: bool = False):
        self.normalize = normalize

    def __call__(self, spk, mem, target):
        counts = spk.sum(0)
        if self.normalize:
            counts = counts / spk.shape[0]
        return F.cross_entropy(counts, target)


class SpikeRateCE:
    """(1/T) * sum_t CE(S[t], y) (snnTorch ``ce_rate_loss``, tutorial 6)."""

    needs_spikes = True  # not for a non-spiking (li) readout

    def __call__(self, spk, mem, target):
        return _per_step_ce(spk, target)


class MSECount:
    """MSE(sum_t S[t], target counts) / T (snnTorch ``mse_count_loss``).

    The target count is T*correct_rate for the label and T*incorrect_rate for the others.
    """

    needs_spikes = True  # not for a non-spiking (li) readout

    def __init__(self, correct_rate: float = 1.0, incorrect_rate: float = 0.0):
        self.correct_rate = in_range("correct_rate", correct_rate, 0, 1, example=1.0, low_open=False)
        self.incorrect_rate = in_range("incorrect_rate", incorrect_rate, 0, 1, example=0.0, low_open=False)

    def __call__(self, spk, mem, target):
        t = spk.shape[0]
        one_hot = F.one_hot(target, spk.shape[-1]).to(spk.dtype)
        goal = t * (self.incorrect_rate + (self.correct_rate - self.incorrect_rate) * one_hot)
        return F.mse_loss(spk.sum(0), goal) / t


class MembraneSumCE:
    """CE(sum_t U[t], y): the membrane summed over time as logits.

    ``reduction="mean"`` uses (1/T) sum_t U[t] instead, as the graded_fc100 preset does.
    """

    def __init__(self, reduction: str = "sum"):
        self.reduction = one_of("reduction", reduction, ("sum", "mean"))

    def __call__(self, spk, mem, target):
        logits = mem.sum(0) if self.reduction == "sum" else mem.mean(0)
        return F.cross_entropy(logits, target)


class MembraneMaxCE:
    """CE(max_t U[t], y): the largest membrane each class reaches is its logit (a leaky-integrator
    readout on sequences and spoken digits: the class may peak at any step)."""

    def __call__(self, spk, mem, target):
        return F.cross_entropy(mem.amax(0), target)


def spike_count(spk: torch.Tensor, mem: torch.Tensor) -> torch.Tensor:
    """Predicted class = argmax_c sum_t S[t, :, c]; ties go to the lowest index."""
    return spk.sum(0).argmax(-1)


def membrane(spk: torch.Tensor, mem: torch.Tensor) -> torch.Tensor:
    """Predicted class = argmax_c sum_t U[t, :, c] (for graded or membrane-trained nets)."""
    return mem.sum(0).argmax(-1)


def membrane_max(spk: torch.Tensor, mem: torch.Tensor) -> torch.Tensor:
    """Predicted class = argmax_c max_t U[t, :, c] (the readout of ``MembraneMaxCE``)."""
    return mem.amax(0).argmax(-1)


READOUTS = {"spike_count": spike_count, "membrane": membrane, "membrane_max": membrane_max}
SPIKE_READOUTS = ("spike_count",)
