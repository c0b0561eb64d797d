"""What a run leaves behind: metrics.jsonl, results.json and TensorBoard events, all in the run folder."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summary

from ..atomic import append_line, write_json_atomic
from .figures import membrane_figure, raster_figure
from .rules import leaves

log = logging.getLogger("snnrun")

HPARAM_METRICS = ("test_acc", "best_test_acc", "test_loss", "val_acc", "best_val_acc", "test_acc_at_best_val")


def flatten(cfg: dict) -> dict:
    """Nested config -> {"a.b": value} with values TensorBoard's hparams accept (others as text)."""
    return {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in leaves(cfg).items()}


class RunLogger:
    """Writes metrics.jsonl, results.json and TensorBoard events into ``run_dir``."""

    def __init__(self, run_dir: Path, hparams: dict):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(log_dir=str(self.run_dir))
        # The hparams session goes into this run's own event file (no sub-run folder), with the
        # metric tags that log_eval keeps updating, so sweeps compare in the HPARAMS dashboard.
        # Its end (success, failure) is written when the run ends: until then the dashboard shows it running.
        exp, ssi, _ = hparams_summary(hparams, {f"hparams/{m}": math.nan for m in HPARAM_METRICS})
        file_writer = self.writer._get_file_writer()
        for summary in (exp, ssi):
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
        append_line(self.run_dir / "metrics.jsonl", json.dumps(record))
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
                w.add_figure(f"raster/{name}", raster_figure(spikes, traces["labels"], classes=traces.get("classes")), step)
            w.add_figure("membrane/output", membrane_figure(traces["membrane"], traces["labels"], traces["threshold"],
                                                          classes=traces.get("classes")), step)
        w.flush()

    def finish(self, results: dict) -> None:
        write_json_atomic(self.run_dir / "results.json", results)
        self.writer._get_file_writer().add_summary(session_end(results["status"]))
        self.writer.close()


def session_end(status: str):
    """The end of the run's hparams session: SUCCESS for a run that ended ok, FAILURE for one that failed,
    UNKNOWN for one that was interrupted (resume it to end it)."""
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.plugins.hparams.api_pb2 import Status
    from tensorboard.plugins.hparams.metadata import PLUGIN_DATA_VERSION, PLUGIN_NAME, SESSION_END_INFO_TAG
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData, SessionEndInfo

    code = {"ok": "STATUS_SUCCESS", "failed": "STATUS_FAILURE"}.get(status, "STATUS_UNKNOWN")
    content = HParamsPluginData(session_end_info=SessionEndInfo(status=Status.Value(code)), version=PLUGIN_DATA_VERSION)
    metadata = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name=PLUGIN_NAME,
                                                                      content=content.SerializeToString()))
    return Summary(value=[Summary.Value(tag=SESSION_END_INFO_TAG, metadata=metadata)])
