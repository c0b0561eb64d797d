"""snnrun from Python (a notebook, a script): ``snnrun.train`` and ``snnrun.evaluate``.

They compose the same config with the same overrides as the ``snnrun`` command, run the same
checks before any run folder exists, and write the same folder (config, log, TensorBoard,
checkpoints, results.json). A bad input raises the ``ConfigError``, ``DataError``,
``CheckpointError`` or ``NIRError`` whose message the command prints, instead of exiting;
a run that fails raises ``TrainingError`` (or ``Interrupted``) with its last checkpoint intact.
Hydra's logging (the run's snnrun.log, the console) lasts for the run: the caller's logging and
thread count are given back after it. The allocator setting the command makes (``keep_freed_memory``)
stays for the process: glibc cannot report the previous one.
"""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import NamedTuple, Sequence

import torch
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from .cli import config_dir, keep_freed_memory, run
from .preflight import Preflight, Refused


class Result(NamedTuple):
    """What a run returns: its results.json as a dict, and its folder."""

    results: dict
    run_dir: Path


@contextmanager
def _raising():
    """Preflight raises a refused run's error instead of exiting the process (as the command does)."""
    Preflight.exit_on_error = False
    try:
        yield
    finally:
        Preflight.exit_on_error = True


@contextmanager
def _callers_logging():
    """Hydra configures the root logger for the run (a handler writing the run's snnrun.log, one for the
    console); close those afterwards and give the caller's handlers and level back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        for handler in root.handlers:
            if handler not in handlers:
                handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)


def _listed(overrides: Sequence[str]) -> list[str]:
    if isinstance(overrides, str):
        raise TypeError("overrides is a list of strings, e.g. ['data=mnist', 'trainer.epochs=2'], not one string")
    return [str(o) for o in overrides]


def _run(overrides: list[str]) -> Result:
    if any(o.lstrip("+~").startswith("task=") for o in overrides[:-1]):
        raise ValueError("the task is the function's: snnrun.train trains, snnrun.evaluate evaluates; leave task= out")
    if any(o in ("-m", "--multirun") or o.startswith("hydra.mode") for o in overrides):
        raise ValueError("snnrun.train runs one configuration; run a sweep with the snnrun command (snnrun -m ...)")
    if GlobalHydra.instance().is_initialized():
        raise RuntimeError("Hydra is already initialised in this process (by a hydra.initialize block that is still "
                           "open); call snnrun.train outside it")
    keep_freed_memory()
    launch = datetime.now()
    OmegaConf.register_new_resolver("launch", launch.strftime, replace=True)
    folder: list[Path] = []

    def task(cfg: DictConfig) -> float:
        from hydra.core.hydra_config import HydraConfig

        folder.append(Path(HydraConfig.get().runtime.output_dir))
        return run(cfg)

    threads = torch.get_num_threads()  # trainer.num_threads sets it for the run, not for the caller
    with initialize_config_dir(config_dir=config_dir(), version_base=None, job_name="snnrun"), _raising(), \
            _callers_logging():
        try:
            GlobalHydra.instance().hydra.run(config_name="config", task_function=task, overrides=overrides)
        except Refused as refused:
            raise refused.error from None
        finally:
            torch.set_num_threads(threads)
    run_dir = folder[0]
    return Result(json.loads((run_dir / "results.json").read_text()), run_dir)


def train(overrides: Sequence[str] = ()) -> Result:
    """Train one configuration, as ``snnrun <overrides>`` does -> (results, run folder).

    ``snnrun.train(["data=tensors", "data.train_path=train.npz", "data.test_path=test.npz"])``"""
    return _run([*_listed(overrides), "task=train"])


def evaluate(ckpt_path: str | Path | None = None, overrides: Sequence[str] = ()) -> Result:
    """Evaluate a checkpoint (or, with ``nir_path=`` among the overrides, a NIR graph) on its test set,
    as ``snnrun task=eval ckpt_path=...`` does -> (results, run folder)."""
    extra = [f"ckpt_path={ckpt_path}"] if ckpt_path is not None else []
    return _run([*_listed(overrides), *extra, "task=eval"])
