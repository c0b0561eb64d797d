"""Before a run starts: the config it follows, checked and built before Hydra creates its folder.

``task=eval`` and ``task=export`` follow the checkpoint's config (``checkpoint_config``): the
network, its input and its data come from the checkpoint; an override that contradicts them is
refused with both values named, a compatible one (a batch size, the device) wins. For a single
run the Hydra callback ``Preflight`` assembles before Hydra creates the run folder, so a refused
run writes nothing, and hands what it built to the task; a sweep job assembles inside its own job.
"""

from __future__ import annotations

import sys

from hydra import compose
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

from ..interop import nir_export
from . import checkpoints
from .assembly import Assembly, assemble, checkpoint_network
from .rules import USER_ERRORS, ConfigError, check, leaves, task_view

IDENTITY = ("model", "neuron", "surrogate", "encoder", "time_steps", "data")  # what the checkpoint's network is
# keys of the running machine and the run's own choices: never taken from the checkpoint
LOCAL = ("task", "ckpt_path", "nir_path", "device", "export", "data.root", "data.download", "data.cache",
         "trainer.num_threads")
BATCHING = ("data.batch_size", "data.eval_batch_size", "data.val_size")  # compatible with any checkpoint


def _under(key: str, names) -> bool:
    return any(key == n or key.startswith(n + ".") for n in names)


def _plain(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(task_view(cfg), resolve=True)


def checkpoint_config(cfg: DictConfig, overrides: list[str], state: dict) -> DictConfig:
    """The config of the checkpoint ``state`` (read from ``cfg.ckpt_path``), with this command's machine
    keys and its compatible overrides.

    An override is whatever this command's ``overrides`` name or change against the defaults (an
    ``experiment=`` preset included); one that gives the network, its input or its data a value
    other than the checkpoint's is refused, naming both."""
    saved = checkpoints.saved_config(state, cfg.ckpt_path)
    mine = leaves(_plain(cfg))
    base = leaves(_plain(compose(config_name="config", overrides=[o for o in overrides if _under(
        o.lstrip("+~").split("=", 1)[0], ("task", "ckpt_path"))])))
    touched = {k for k, v in mine.items() if base.get(k, object()) != v}  # what the overrides changed, presets too
    for override in overrides:  # and what they name, though it equals the default (data=mnist)
        named = override.lstrip("+~").split("=", 1)[0]
        touched |= {k for k in mine if _under(k, (named,)) and not named.startswith("hydra")}
    theirs = leaves(saved)
    for key in sorted(touched):
        if _under(key, IDENTITY) and not _under(key, LOCAL + BATCHING) and key in theirs and theirs[key] != mine[key]:
            raise ConfigError(key, mine[key], f"the checkpoint's value, {theirs[key]!r}: ckpt_path={cfg.ckpt_path} holds "
                              f"a network trained with {key}={theirs[key]!r} (task={cfg.task} takes the network, its "
                              "input and its data from the checkpoint; leave the override out)",
                              f"task={cfg.task} ckpt_path={cfg.ckpt_path}")
    merged = OmegaConf.create({**_plain(cfg), **saved})  # the checkpoint's groups whole, not merged key by key
    with open_dict(merged):
        for key, value in mine.items():
            if key in touched or _under(key, LOCAL):
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
            Preflight._assembly = prepare(config, list(config.hydra.overrides.task))
        except USER_ERRORS as err:
            if not Preflight.exit_on_error:
                raise Refused(err) from None
            print(f"snnrun: error: {err}", file=sys.stderr)
            sys.exit(2)
        except Exception as err:  # a bug: Hydra's runner would only warn; the task raises it, preparing nothing twice
            Preflight._failure = err

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
    state = None  # a checkpoint to evaluate or export, read once
    if cfg.task in ("eval", "export"):
        check(cfg)
        if cfg.get("ckpt_path"):
            state = checkpoints.load(cfg.ckpt_path)
            cfg = checkpoint_config(cfg, overrides, state)
    if cfg.task == "export":  # the graph is built here: what NIR or the reader cannot hold is refused before the folder
        model, saved = checkpoint_network(cfg, state)
        return exported(cfg, model, saved)
    assembly = assemble(cfg, state=state)
    if cfg.task == "eval" and cfg.get("ckpt_path"):
        assembly.config = cfg
    return assembly
