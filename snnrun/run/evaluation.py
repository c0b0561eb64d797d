"""Evaluation: run the network on data without touching anything training depends on.

Everything here runs inside ``evaluating``: the network in eval mode (batch norm uses its
running statistics and updates none, dropout is off), gradients off, the mode restored and the
operation counter and recording removed in ``finally`` whatever happens; random encoders draw
from a generator of their own, seeded from the run's seed, never from the global stream. So
drawing figures or evaluating at any schedule leaves the weights, the BN statistics and every
random stream exactly as training left them.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

import torch
from tqdm import tqdm

from ..core.synops import E_AC_PJ, E_MAC_PJ, OpCounter
from ..data.datasets import Dataset, Split, batches, fixed_subset
from .distributed import World, all_sum
from .records import Parts, TrainerOptions

log = logging.getLogger("snnrun")


def simulate(model, encoder, x, time_steps: int, generator, shard: slice = slice(None)):
    """Encode a batch into ``time_steps`` steps and run the network on its ``shard`` of rows
    -> output (spikes, membranes). The whole batch is encoded, so random encoders draw the
    same numbers whatever the shard, and dropout draws its masks for the whole batch too
    (``rows``). Without an encoder the batch is already temporal, [B, T, ...], and runs time-first."""
    rows = (len(x), shard)
    if encoder is None:
        return model(x[shard].transpose(0, 1), rows=rows)
    if encoder.static:
        return model(x[shard], time_steps=time_steps, rows=rows)
    return model(encoder(x, time_steps, generator)[:, shard], rows=rows)


def generator_for(seed: int, device) -> torch.Generator:
    """Evaluation's random stream: fixed by the seed, apart from training's."""
    return torch.Generator(device=device).manual_seed(seed + 1)


@contextmanager
def evaluating(model, counter: OpCounter | None = None, record: bool = False):
    """The network in eval mode without gradients, counting operations or recording spikes as asked;
    everything is put back in ``finally``."""
    was_training = model.training
    model.eval()
    model.counter, model.record = counter, record
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)
        model.counter, model.record = None, False


def evaluate(parts: Parts, split: Split, *, batch_size: int, time_steps: int, seed: int,
             progress: bool = False, world: World = World(), name: str = "test",
             costs: tuple[float, float] = (E_AC_PJ, E_MAC_PJ)) -> dict:
    """Mean loss, accuracy, per-layer firing rates and synaptic operations per sample, with the
    energy they would cost at ``costs`` (pJ per AC, per MAC; see snnrun.core.synops), over a whole
    split. Under torchrun each rank simulates its shard of every batch and the sums are
    all-reduced: the same figures, N times sooner."""
    model, encoder = parts.model, parts.encoder
    counter = OpCounter(model, ann_steps=time_steps if encoder is None else 1)  # sequences: T steps
    device = split.labels.device
    generator = generator_for(seed, device)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    rates = 0
    with evaluating(model, counter):
        for x, y in tqdm(batches(split, batch_size), desc="eval", leave=False, disable=not progress,
                         total=-(-len(split) // batch_size)):
            shard = world.shard(len(y))
            y = y[shard]
            if len(y) == 0:  # fewer rows than ranks: nothing to simulate, but draw the batch's noise
                if encoder is not None and not encoder.static:
                    encoder(x, time_steps, generator)
                continue
            spk, mem = simulate(model, encoder, x, time_steps, generator, shard)
            loss_sum += parts.loss(spk, mem, y) * len(y)
            correct += (parts.readout(spk, mem) == y).sum()
            rates = rates + model.firing_rates * len(y)
    n, layers = len(split), len(model.layer_names)
    totals = all_sum([loss_sum.item(), correct.item(), *torch.as_tensor(rates, dtype=torch.float64)
                      .expand(layers).tolist(), *counter.totals()], device)
    return {
        f"{name}_loss": totals[0] / n,
        f"{name}_acc": totals[1] / n,
        "firing_rates": {layer: r / n for layer, r in zip(model.layer_names, totals[2:2 + layers])
                         if layer in model.spiking_layers},
        **counter.report(totals[2 + layers:], n, *costs),
    }


def traces(parts: Parts, split: Split, *, samples: int, time_steps: int, seed: int,
           classes: tuple[str, ...] | None = None) -> dict | None:
    """Every spiking layer's spikes and the output membranes of the first ``samples`` of ``split``,
    as the evaluated network computes them (eval mode, evaluation's generator)."""
    k = min(samples, len(split))
    if k <= 0:
        return None
    model = parts.model
    x, y = next(batches(split, k))
    with evaluating(model, record=True):
        _, mem = simulate(model, parts.encoder, x, time_steps, generator_for(seed, x.device))
        recorded = model.recorded
    threshold = getattr(model.blocks[-1].neuron, "threshold", None)
    if threshold is not None and not torch.isfinite(torch.as_tensor(threshold)).all():
        threshold = None  # an li readout never fires
    spiking = model.spiking_layers
    return {
        "spikes": {name: s.cpu() for name, s in zip(model.layer_names, recorded) if name in spiking},
        "membrane": mem.cpu(),
        "labels": y.tolist(),
        "classes": list(classes) if classes else None,  # the class names, where the data has them
        "threshold": float(torch.as_tensor(threshold).float().mean()) if threshold is not None else None,
    }


class Evaluator:
    """A run's evaluations: the test (and validation) figures, quick curve points, figure traces.

    Curves, not dots: if the full evaluations (every ``eval_every`` of ``total_steps``) give fewer
    than ``curve_points`` points, quick ones on a fixed subset of the selection split fill in,
    about ``curve_points`` over the whole run (every ``curve_every`` steps; 0: none)."""

    def __init__(self, parts: Parts, data: Dataset, options: TrainerOptions, *, total_steps: int, eval_every: int,
                 world: World = World(), progress: bool = False):
        self.parts, self.data, self.options, self.world, self.progress = parts, data, options, world, progress
        self.selected_on = "val" if data.val is not None else "test"  # the split best.pt is chosen on
        sparse = total_steps // eval_every < options.curve_points
        self.curve_every = -(-total_steps // options.curve_points) if sparse else 0
        self.curve_split = (fixed_subset(data.val if data.val is not None else data.test, options.curve_samples)
                            if self.curve_every else None)

    def split(self, split: Split, name: str, progress: bool = False) -> dict:
        o = self.options
        return evaluate(self.parts, split, batch_size=o.eval_batch_size, time_steps=o.time_steps, seed=o.seed,
                        progress=progress, world=self.world, name=name, costs=(o.energy_ac_pj, o.energy_mac_pj))

    def test(self) -> dict:
        """The test figures and, with a validation split, the validation figures."""
        metrics = self.split(self.data.test, "test", self.progress)
        if self.data.val is not None:
            val = self.split(self.data.val, "val", self.progress)
            metrics.update(val_loss=val["val_loss"], val_acc=val["val_acc"])
        return metrics

    def traces(self) -> dict | None:
        o = self.options
        return traces(self.parts, self.data.test, samples=o.raster_samples, time_steps=o.time_steps, seed=o.seed,
                      classes=self.data.classes)

    def curve_point(self, step: int, logger) -> None:
        """A quick evaluation on ``curve_split`` for TensorBoard's curve/ tags; it selects nothing."""
        split = self.selected_on
        metrics = self.split(self.curve_split, split)
        if logger is not None:
            logger.log_curve(step, split, metrics[f"{split}_loss"], metrics[f"{split}_acc"])
        log.info("step %d  %s_acc %.2f%% on %d samples (curve point)", step, split, 100 * metrics[f"{split}_acc"],
                 len(self.curve_split))
