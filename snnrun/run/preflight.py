"""Before a run starts: the config it follows, checked and built before Hydra creates its folder.

``task=eval`` and ``task=export`` follow the checkpoint's config (``checkpoint_config``): the
network, its input and its data come from the checkpoint; an override that contradicts them is
refused with both values named, a compatible one (a batch size, the device) wins. For a single
run the Hydra callback ``Preflight`` assembles before Hydra creates the run folder, so a refused
run writes nothing, and hands what it built to the task; a sweep job assembles inside its own job.
"""

from __future__ import annotations

import os
import sys
import traceback

from hydra import compose
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

from ..interop import nir_export
from . import checkpoints, sweep_checks
from .assembly import Assembly, assemble, checkpoint_network
from .guards import (BATCHING, HOW, IDENTITY, LOCAL, check_export_path, check_folder, check_resolves,
                     check_switches, overrides_of, plain, under)
from .distributed import world
from .rules import USER_ERRORS, ConfigError, check, leaves
from .sweep import SweepSummary, stop_on_signals as sweep_signals


FROM_FILES = ("data.input_shape", "data.num_classes", "data.time_steps", "data.class_names")  # loaders' describe


def checkpoint_config(cfg: DictConfig, overrides: list[str], state: dict) -> DictConfig:
    """The config of the checkpoint ``state`` (read from ``cfg.ckpt_path``), with this command's machine
    keys and its compatible overrides.

    An override is whatever this command's ``overrides`` name or change against the defaults (an
    ``experiment=`` preset included); one that gives the network, its input or its data a value
    other than the checkpoint's is refused, naming both."""
    saved = checkpoints.saved_config(state, cfg.ckpt_path)
    ours = plain(cfg)
    mine = leaves(ours)
    # the defaults with this command's own network overrides (data=tensors): what a preset (experiment=) changed
    # besides, and not what those overrides changed through interpolations (model.arch's FC${data.num_classes})
    base = leaves(plain(compose(config_name="config", overrides=[o for o in overrides if under(
        o.lstrip("+~").split("=", 1)[0], ("task", "ckpt_path") + IDENTITY)])))
    names = [o.lstrip("+~").split("=", 1)[0] for o in overrides]
    names = [n for n in names if not n.startswith("hydra")]
    # what this command sets: the values it changed and the keys it names one by one (data.eval_batch_size=7)
    taken = {k for k, v in mine.items() if base.get(k, object()) != v or under(k, [n for n in names if "." in n])}
    # checked against the checkpoint besides: all a group option brings, though it equals the default (data=mnist)
    touched = taken | {k for k in mine if under(k, names)}
    theirs = leaves(saved)
    # a null where a dataset's files declare the value (data=tensors' input_shape) is left to them: the checkpoint's
    # stands (a null elsewhere means what it says: psmnist's permutation_seed, none for smnist)
    touched -= {k for k in touched if k in FROM_FILES and mine[k] is None and theirs.get(k) is not None}
    for key in sorted(touched):
        if under(key, IDENTITY) and not under(key, LOCAL + BATCHING + HOW) and key in theirs and theirs[key] != mine[key]:
            raise ConfigError(key, mine[key], f"the checkpoint's value, {theirs[key]!r}: ckpt_path={cfg.ckpt_path} holds "
                              f"a network trained with {key}={theirs[key]!r} (task={cfg.task} takes the network, its "
                              "input and its data from the checkpoint; leave the override out)",
                              f"task={cfg.task} ckpt_path={cfg.ckpt_path}")
    merged = OmegaConf.create({**ours, **saved})  # the checkpoint's groups whole, not merged key by key
    for override in overrides:  # another option of a group outside the network (loss=, readout=) comes whole
        group = override.lstrip("+~").split("=", 1)[0]
        if "." not in group and not under(group, IDENTITY + LOCAL) and isinstance(ours.get(group), dict):
            merged[group] = ours[group]
    with open_dict(merged):
        for key, value in mine.items():
            if key in taken or under(key, LOCAL):
                OmegaConf.update(merged, key, value, force_add=True)
    return merged


class Refused(BaseException):
    """A refused run, carried past Hydra's callback runner (which turns an ``Exception`` into a
    warning and goes on to create the folder) to ``snnrun.train``, which raises ``error``."""

    def __init__(self, error: Exception):
        super().__init__(str(error))
        self.error = error


class Preflight(Callback):
    """Hydra callback: assemble a single run before Hydra creates its folder or log; refuse it
    there when anything is wrong, else keep the assembly for the task (``take``)."""

    _assembly: Assembly | tuple | None = None  # an Assembly, or for task=export the (graph, approximations)
    _failure: Exception | None = None  # what preparing raised that is not a user error
    exit_on_error = True  # the command exits with 2; snnrun.train/evaluate raise the error instead

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        try:
            check_folder("hydra.run.dir", config.hydra.run.dir)  # every torchrun rank, before rank 0 makes it
            Preflight._assembly = prepare(config, overrides_of(config.hydra))
        except USER_ERRORS as err:
            self.refuse(err)
        except Exception as err:  # a bug: Hydra's runner would only warn; the task raises it, preparing nothing twice
            Preflight._failure = err

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        """Every job of a sweep (its folder, its values and parts) before the first runs; then Ctrl-C or SIGTERM
        stops the whole sweep."""
        try:
            SweepSummary.planned = sweep_checks.check_sweep(config) or None
        except (*USER_ERRORS, sweep_checks.JobRefused) as err:
            self.refuse(err)
        sweep_signals(config.hydra.sweep.dir)

    @staticmethod
    def refuse(err: Exception) -> None:
        if not Preflight.exit_on_error:
            raise Refused(err) from None
        if world().main:  # under torchrun every rank refuses alike; rank 0 says it once
            if os.environ.get("SNNRUN_DEBUG"):  # the full traceback (raised here, Hydra would only warn and go on)
                traceback.print_exception(err, file=sys.stderr)
            print(f"snnrun: error: {err}", file=sys.stderr)
        sys.exit(2)

    @staticmethod
    def take() -> Assembly | tuple | None:
        failure, Preflight._failure = Preflight._failure, None
        if failure is not None:
            raise failure
        assembly, Preflight._assembly = Preflight._assembly, None
        return assembly


def exported(cfg: DictConfig, model, saved: DictConfig) -> tuple:
    """task=export: the checkpoint's network as the graph ``export.reader`` computes -> (graph, approximations)."""
    return nir_export.export(
        model, dt=cfg.export.dt, approximate=cfg.export.approximate, precision=saved.model.get("precision", "fp32"),
        reader=cfg.export.get("reader", "nir"),
        metadata={"checkpoint": str(cfg.ckpt_path), "time_steps": saved.get("time_steps"),
                  "input": "the first layer's input at each step: the "
                           + ("dataset's frame" if saved.data.get("temporal") else f"{saved.encoder._target_} encoding")
                           + f" of {saved.data.get('_target_')} samples", "config": OmegaConf.to_container(saved)})


def prepare(cfg: DictConfig, overrides: list[str]) -> Assembly | tuple:
    """What the task needs: for task=export the graph and its approximations, else the assembled run."""
    check_resolves(cfg)
    check_switches(cfg, overrides)
    state = None  # a checkpoint to evaluate or export, read once (assemble reads a resume's)
    if cfg.task in ("eval", "export"):
        check(cfg)
        if cfg.get("ckpt_path"):
            state = checkpoints.load(cfg.ckpt_path)
            cfg = checkpoint_config(cfg, overrides, state)
    if cfg.task == "export":  # the graph is built here: what NIR or the reader cannot hold is refused before the folder
        check_export_path(cfg)
        model, saved = checkpoint_network(cfg, state)
        return exported(cfg, model, saved)
    assembly = assemble(cfg, state=state)
    if cfg.task == "eval" and cfg.get("ckpt_path"):
        assembly.config = cfg
    return assembly
