"""What a run leaves behind: metrics.jsonl, results.json and TensorBoard events, all in the run folder."""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summary

log = logging.getLogger("snnrun")

HPARAM_METRICS = ("test_acc", "best_test_acc", "test_loss", "val_acc", "best_val_acc", "test_acc_at_best_val")

def write_text_atomic(path: Path, text: str) -> None:
    """Write via a temporary file, fsync and a rename: readers see the old file or the new one, never half."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: Path, data) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def _panels(width: float, height: float, k: int, right: float):
    """A figure of k panels side by side with fixed margins (inches): a constrained layout would
    cost more than the drawing at every evaluation."""
    from matplotlib.figure import Figure  # imported only when a figure is drawn: keeps the CLI's start fast

    fig = Figure(figsize=(width, height))
    fig.subplots_adjust(left=0.75 / width, right=1 - right / width, bottom=0.5 / height, top=1 - 0.3 / height,
                        wspace=0.12)
    return fig, fig.subplots(1, k, sharey=True, squeeze=False)[0]


def raster_figure(spikes: torch.Tensor, labels: list[int], max_neurons: int = 512):
    """One layer's spikes [T, K, *] for K samples -> a figure with a panel per sample: a mark at
    (time step, neuron) for every spike, the first ``max_neurons`` neurons of the layer."""
    t, k = spikes.shape[:2]
    flat = spikes.detach().reshape(t, k, -1).cpu()
    n = min(flat.shape[2], max_neurons)
    fig, axes = _panels(1.0 + 2.6 * k, 3.2, k, right=0.15)
    for i, ax in enumerate(axes):
        steps, neurons = (flat[:, i, :n] > 0).nonzero(as_tuple=True)
        ax.scatter(steps.numpy(), neurons.numpy(), s=6, marker="|", color="black", linewidths=0.8)
        ax.set_xlim(-0.5, t - 0.5)
        ax.set_ylim(-0.5, n - 0.5)
        ax.set_xlabel("time step")
        ax.set_title(f"sample {i}, label {labels[i]}", fontsize="medium")
        if i == 0:
            ax.set_ylabel("neuron" + (f" (first {n} of {flat.shape[2]})" if flat.shape[2] > n else ""))
    return fig


def membrane_figure(mem: torch.Tensor, labels: list[int], threshold: float | None = None):
    """The output membranes [T, K, C] of K samples -> a figure with a panel per sample: one
    labelled line per class (the true class drawn thicker) and the threshold dashed."""
    values = mem.detach().double().cpu()
    values = values.masked_fill(~torch.isfinite(values), float("nan"))  # a blown-up run still gets a picture
    t, k, c = values.shape
    fig, axes = _panels(1.9 + 3.2 * k, 3.4, k, right=1.15)
    for i, ax in enumerate(axes):
        for j in range(c):
            ax.plot(range(t), values[:, i, j].numpy(), label=str(j), linewidth=2.4 if j == labels[i] else 1.0)
        if threshold is not None:
            ax.axhline(threshold, linestyle="--", color="grey", linewidth=1.0, label="threshold")
        ax.set_xlabel("time step")
        ax.set_title(f"sample {i}, label {labels[i]}", fontsize="medium")
        if i == 0:
            ax.set_ylabel("membrane potential U (V)")
    ax.legend(title="class", fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return fig


def flatten(cfg: dict, prefix: str = "") -> dict:
    """Nested config -> {"a.b": value} with values TensorBoard's hparams accept."""
    flat = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat


class RunLogger:
    """Writes metrics.jsonl, results.json and TensorBoard events into ``run_dir``."""

    def __init__(self, run_dir: Path, hparams: dict):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(log_dir=str(self.run_dir))
        # The hparams session goes into this run's own event file (no sub-run folder), with the
        # metric tags that log_eval keeps updating, so sweeps compare in the HPARAMS dashboard.
        exp, ssi, sei = hparams_summary(hparams, {f"hparams/{m}": math.nan for m in HPARAM_METRICS})
        file_writer = self.writer._get_file_writer()
        for summary in (exp, ssi, sei):
            file_writer.add_summary(summary)

    def log_train(self, step: int, loss: float, acc: float, lr: float) -> None:
        self.writer.add_scalar("train/loss", loss, step)
        self.writer.add_scalar("train/acc", acc, step)
        self.writer.add_scalar("lr", lr, step)

    def log_curve(self, step: int, split: str, loss: float, acc: float) -> None:
        """A quick evaluation on a fixed subset of ``split``: curve/<split>_acc and curve/<split>_loss."""
        self.writer.add_scalar(f"curve/{split}_acc", acc, step)
        self.writer.add_scalar(f"curve/{split}_loss", loss, step)

    def log_eval(self, record: dict, model: torch.nn.Module, traces: dict | None) -> None:
        step = record["step"]
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        w = self.writer
        for split in ("test", "val"):
            for metric in ("loss", "acc"):
                if f"{split}_{metric}" in record:
                    w.add_scalar(f"{split}/{metric}", record[f"{split}_{metric}"], step)
        w.add_scalar("throughput/train_samples_per_s", record["train_samples_per_s"], step)
        for metric in HPARAM_METRICS:
            if metric in record:
                w.add_scalar(f"hparams/{metric}", record[metric], step)
        for name, rate in record["firing_rates"].items():
            w.add_scalar(f"firing_rate/{name}", rate, step)
        for name, ops in record.get("synops", {}).items():
            for kind, value in ops.items():
                w.add_scalar(f"synops/{name}/{kind}", value, step)
        for key in ("energy_pj", "ann_energy_pj"):
            if key in record:
                w.add_scalar(f"energy/{key}", record[key], step)
        for name, param in model.named_parameters():
            try:
                w.add_histogram(f"weights/{name}", param.detach().double().cpu(), step)
            except ValueError as err:  # TensorBoard cannot bin some extreme ranges (e.g. 1e30 after a blow-up)
                log.warning("step %d: no histogram for %s (%s)", step, name, err)
        if traces:
            for name, spikes in traces["spikes"].items():
                w.add_figure(f"raster/{name}", raster_figure(spikes, traces["labels"]), step)
            w.add_figure("membrane/output", membrane_figure(traces["membrane"], traces["labels"], traces["threshold"]), step)
        w.flush()

    def finish(self, results: dict) -> None:
        write_json_atomic(self.run_dir / "results.json", results)
        self.writer.close()
