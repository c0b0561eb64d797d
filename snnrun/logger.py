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

HPARAM_METRICS = ("test_acc", "best_test_acc", "test_loss")

# tab10 colours, one per output neuron in membrane traces.
_PALETTE = torch.tensor([
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
], dtype=torch.uint8)


def write_text_atomic(path: Path, text: str) -> None:
    """Write via a temporary file and a rename: readers see the old file or the new one, never half."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json_atomic(path: Path, data) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def spike_raster(spikes: torch.Tensor, max_neurons: int = 128, px_per_step: int = 4) -> torch.Tensor:
    """Spikes [T, K, *] of K samples -> an image [H, W]: per sample a band of neurons (rows) by time
    (columns), white where a neuron fired, bands separated by a grey line."""
    t, k = spikes.shape[:2]
    rows = spikes.reshape(t, k, -1)[:, :, :max_neurons].permute(1, 2, 0).float()  # [K, N, T]
    bands = [torch.cat([(rows[i] > 0).float(), torch.full((1, t), 0.5)]) for i in range(k)]
    return torch.cat(bands)[:-1].repeat_interleave(px_per_step, dim=1)


def line_plot(values: torch.Tensor, threshold: float | None = None, height: int = 160, px_per_step: int = 8) -> torch.Tensor:
    """Traces [T, C] -> an RGB image [3, H, W], one coloured line per column, a grey dashed
    line at ``threshold`` and a light line at zero."""
    big = torch.finfo(torch.float32).max  # a blown-up run still gets a picture, not a crash
    values = torch.nan_to_num(values.double().cpu(), nan=0.0, posinf=big, neginf=-big)
    t, c = values.shape
    width = max(t - 1, 1) * px_per_step + 1
    pos = torch.linspace(0, t - 1, width)
    i0 = pos.floor().long().clamp(max=t - 1)
    i1 = (i0 + 1).clamp(max=t - 1)
    frac = (pos - i0).unsqueeze(1)
    curve = values[i0] * (1 - frac) + values[i1] * frac  # [W, C]
    marks = [0.0] + ([threshold] if threshold is not None else [])
    lo = min(curve.min().item(), *marks)
    hi = max(curve.max().item(), *marks)
    span = hi - lo if hi > lo else 1.0

    def row(v):
        return ((hi - v) / span * (height - 1)).round().long() if torch.is_tensor(v) else round((hi - v) / span * (height - 1))

    img = torch.full((height, width, 3), 255, dtype=torch.uint8)
    img[row(0.0), :] = 225
    if threshold is not None:
        img[row(threshold), (torch.arange(width) // 4) % 2 == 0] = 128
    y = row(curve)  # [W, C]
    y_next = torch.cat([y[1:], y[-1:]])
    r = torch.arange(height).view(height, 1, 1)
    mask = (r >= torch.minimum(y, y_next)) & (r <= torch.maximum(y, y_next))  # [H, W, C]
    for j in range(c):
        img[mask[:, :, j]] = _PALETTE[j % len(_PALETTE)]
    return img.permute(2, 0, 1)


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

    def log_eval(self, record: dict, model: torch.nn.Module, traces: dict | None) -> None:
        step = record["step"]
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        w = self.writer
        for key in ("test_loss", "test_acc"):
            w.add_scalar(f"test/{key[5:]}", record[key], step)
        w.add_scalar("throughput/train_samples_per_s", record["train_samples_per_s"], step)
        for metric in HPARAM_METRICS:
            w.add_scalar(f"hparams/{metric}", record[metric], step)
        for name, rate in record["firing_rates"].items():
            w.add_scalar(f"firing_rate/{name}", rate, step)
        for name, param in model.named_parameters():
            try:
                w.add_histogram(f"weights/{name}", param.detach().double().cpu(), step)
            except ValueError as err:  # TensorBoard cannot bin some extreme ranges (e.g. 1e30 after a blow-up)
                log.warning("step %d: no histogram for %s (%s)", step, name, err)
        if traces:
            for name, spikes in traces["spikes"].items():
                w.add_image(f"raster/{name}", spike_raster(spikes), step, dataformats="HW")
            for i, mem in enumerate(traces["membrane"].unbind(1)):
                w.add_image(f"membrane/sample{i}_label{traces['labels'][i]}",
                            line_plot(mem, traces["threshold"]), step)
        w.flush()

    def finish(self, results: dict) -> None:
        write_json_atomic(self.run_dir / "results.json", results)
        self.writer.close()
