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
from pathlib import Path

import torch
from hydra import compose
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

from ..interop import nir_export
from . import checkpoints
from .assembly import Assembly, assemble, checkpoint_network
from .guards import (BATCHING, HOW, IDENTITY, LOCAL, check_export_path, check_folder, check_resolves,
                     check_switches, plain, under)
from .distributed import world
from .rules import USER_ERRORS, ConfigError, check, leaves
from .sweep import SweepSummary, stop_on_signals as sweep_signals


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
    # a null under the network's groups is a value left to the data or the defaults (data=tensors' input_shape):
    # the checkpoint's stands
    touched -= {k for k in touched if under(k, IDENTITY) and mine[k] is None and theirs.get(k) is not None}
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


def overrides_of(hydra_node) -> list[str]:
    """The command's overrides as typed: an override may hold an interpolation (``time_steps=${data.steps}``)."""
    return OmegaConf.to_container(hydra_node.overrides.task, resolve=False)


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
        """A sweep's folder (or with a subdir of your own, each job's), and the parts of each of its jobs (built
        without their data), before any job runs."""
        subdir = OmegaConf.to_container(config.hydra.sweep, resolve=False).get("subdir")
        try:
            if subdir == "${hydra.job.num}":  # Hydra's default: jobs 0, 1, ... of one sweep, in a folder of its own
                check_folder("hydra.sweep.dir", config.hydra.sweep.dir)
        except ConfigError as err:
            self.refuse(err)
        threads = torch.get_num_threads()  # a job's trainer.num_threads is its own, when it runs
        checked = set()
        jobs = sweep_jobs(config)
        SweepSummary.planned = len(jobs) or None
        sweep_signals(config.hydra.sweep.dir)
        try:
            for number, job in enumerate(jobs):
                if subdir != "${hydra.job.num}":
                    try:
                        check_job_folder(config, subdir, number, job)
                    except ConfigError as err:
                        self.refuse(err)
                cfg = compose(config_name="config", overrides=job)
                key = OmegaConf.to_yaml(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "seed"]))
                if key in checked:  # a sweep over seeds builds the same parts each time: once is enough
                    continue
                checked.add(key)
                try:
                    check_job(cfg, job)
                except USER_ERRORS as err:
                    print(f"snnrun: error: job {number} of the sweep ({' '.join(job)}) would be refused, so none "
                          f"was run: {err}", file=sys.stderr)
                    sys.exit(2)
            if subdir != "${hydra.job.num}":
                keep_earlier_record(Path(str(config.hydra.sweep.dir)))
        finally:
            torch.set_num_threads(threads)

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


LOCAL_LAUNCHERS = ("BasicLauncher", "JoblibLauncher", "LocalLauncher")  # jobs run on this machine


def sweep_jobs(config: DictConfig) -> list[list[str]]:
    """The overrides of each job of a sweep that Hydra's basic sweeper runs (every combination) on this
    machine; none where the jobs run elsewhere (a cluster's launcher: its nodes have other devices and
    memory), come from ``hydra.sweeper.params``, or are drawn as the search goes (Optuna)."""
    sweeper, launcher = (str(config.hydra[k].get("_target_", "")) for k in ("sweeper", "launcher"))
    if (not sweeper.endswith("BasicSweeper") or not launcher.endswith(LOCAL_LAUNCHERS)
            or config.hydra.sweeper.get("params")):
        return []
    parsed = OverridesParser.create().parse_overrides(overrides_of(config.hydra))
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def keep_earlier_record(sweep_dir: Path) -> None:
    """A sweep folder that an earlier sweep shares (jobs in subdirs of their own): Hydra writes this sweep's
    multirun.yaml over the earlier one's, so the earlier one moves aside to multirun.<k>.yaml first."""
    record = sweep_dir / "multirun.yaml"
    if record.is_file():
        k = next(k for k in range(1, 10**6) if not (sweep_dir / f"multirun.{k}.yaml").exists())
        record.rename(sweep_dir / f"multirun.{k}.yaml")


def check_job_folder(config: DictConfig, subdir: str, number: int, job: list[str]) -> None:
    """Refuse a sweep whose job ``number`` would write into a folder that holds an earlier run: with a subdir of
    your own (``r${hydra.job.num}``, ``${hydra.job.override_dirname}``), a second sweep into the same folder
    would meet the first one's jobs there. The subdir is resolved as the launchers do, with the job's number."""
    cfg = compose(config_name="config", overrides=job, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.job.num, cfg.hydra.job.name = number, config.hydra.job.name
        launcher = str(config.hydra.launcher.get("_target_", ""))
        cfg.hydra.job.id = f"{config.hydra.job.name}_{number}" if launcher.endswith("JoblibLauncher") else number
        cfg.hydra.sweep.subdir = subdir
    folder = Path(str(config.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir)
    try:
        check_folder("hydra.sweep.subdir", str(folder))
    except ConfigError:
        held = sorted(p.name for p in folder.iterdir())[:4] if folder.is_dir() else []
        raise ConfigError("hydra.sweep.subdir", subdir, f"a folder per job that holds no earlier run: job {number} "
                          f"({' '.join(job)}) would write into {folder}, which "
                          + (f"already holds {', '.join(held)}" if held else "is a file")
                          + ", and snnrun never writes over what an earlier run wrote (give the sweep a new "
                          "hydra.sweep.dir)", f"hydra.sweep.dir={str(config.hydra.sweep.dir).rstrip('/')}-2") from None


def check_job(cfg: DictConfig, overrides: list[str]) -> None:
    """What a sweep's job would refuse before it loads data: its values, switches and parts (a training job
    from scratch; one that resumes or evaluates a checkpoint is checked when it runs)."""
    check_resolves(cfg)
    check_switches(cfg, overrides)
    if cfg.task == "train" and not cfg.get("ckpt_path"):
        assemble(cfg, dry=True)


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
