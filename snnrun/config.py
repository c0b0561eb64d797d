"""Turning a composed config into parts, refusing impossible values before any work starts.

Every refusal is a ``ConfigError`` naming the key, the value given, what is allowed, and a
correct override, so the command line can print one paragraph instead of a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from hydra.experimental.callback import Callback
from hydra.utils import instantiate
from omegaconf import DictConfig

from .architectures import PRECISIONS, ArchitectureError
from .data import DataError, ensure_available
from .distributed import world
from .training import CheckpointError, load_checkpoint


class ConfigError(ValueError):
    def __init__(self, key: str, value, allowed: str, example: str):
        super().__init__(f"{key}={value!r} is not allowed: {key} must be {allowed}. For example: snnrun {example}")
        self.key = key


def _require(cfg: DictConfig, key: str, ok, allowed: str, example: str) -> None:
    value = _get(cfg, key)
    try:
        good = ok(value)
    except TypeError:
        good = False
    if not good:
        raise ConfigError(key, value, allowed, example)


def _get(cfg: DictConfig, key: str):
    node = cfg
    for part in key.split("."):
        node = node.get(part) if node is not None else None
    return node


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError("device", name, "auto, cpu, cuda, cuda:N or mps", "device=cpu") from None
    available = {
        "cpu": True,
        "cuda": torch.cuda.is_available() and (device.index is None or device.index < torch.cuda.device_count()),
        "mps": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
    }.get(device.type, False)
    if not available:
        raise ConfigError("device", name, "a device this machine has (here: cpu"
                          + (", cuda" if torch.cuda.is_available() else "") + ")", "device=auto")
    return device


def input_shape(data_cfg: DictConfig) -> tuple[int, int, int]:
    """The image shape a data config yields, known without loading it."""
    if data_cfg.get("image_size") is not None:
        return (1, int(data_cfg.image_size), int(data_cfg.image_size))
    return (1, 28, 28)


def _part(cfg: DictConfig, group: str, **kwargs):
    """Instantiate one group, turning a constructor's ValueError into a ConfigError on that group."""
    try:
        return instantiate(cfg[group], **kwargs)
    except Exception as err:
        cause = err.__cause__ if err.__cause__ is not None else err
        if isinstance(cause, ArchitectureError):
            raise ConfigError(f"{group}.arch", cfg[group].get("arch"), f"a valid architecture ({cause})",
                              "model.arch=12C5-MP2-64C5-MP2-FC10") from None
        if isinstance(cause, (ValueError, TypeError)):
            raise ConfigError(group, dict(cfg[group]), f"valid options for {cfg[group].get('_target_')} ({cause})",
                              f"{group}=<option> or {group}.<key>=<value>") from None
        raise


def check(cfg: DictConfig) -> None:
    """The plain scalar keys."""
    _require(cfg, "time_steps", lambda v: _is_int(v) and v > 0, "a positive integer", "time_steps=25")
    _require(cfg, "seed", lambda v: _is_int(v) and v >= 0, "a non-negative integer", "seed=0")
    _require(cfg, "task", lambda v: v in ("train", "eval"), "train or eval", "task=eval ckpt_path=outputs/.../checkpoints/best.pt")
    _require(cfg, "readout", lambda v: v in ("spike_count", "membrane"), "spike_count or membrane", "readout=membrane")
    _require(cfg, "data.batch_size", lambda v: _is_int(v) and v > 0, "a positive integer", "data.batch_size=128")
    processes = world().size
    _require(cfg, "data.batch_size", lambda v: v % processes == 0, f"a multiple of the {processes} torchrun processes "
             "(each takes an equal shard of every batch)", f"data.batch_size={128 * processes}")
    _require(cfg, "data.eval_batch_size", lambda v: _is_int(v) and v > 0, "a positive integer", "data.eval_batch_size=1000")
    _require(cfg, "optimizer.lr", lambda v: _is_number(v) and v > 0, "a positive number", "optimizer.lr=5e-4")
    _require(cfg, "trainer.epochs", lambda v: _is_int(v) and v >= 0, "an integer >= 0", "trainer.epochs=3")
    for key, example in (("trainer.max_steps", "trainer.max_steps=500"), ("trainer.eval_every", "trainer.eval_every=100")):
        if _get(cfg, key) is not None:
            low = 0 if key.endswith("max_steps") else 1
            _require(cfg, key, lambda v: _is_int(v) and v >= low, f"null or an integer >= {low}", example)
    _require(cfg, "trainer.augment_shift", lambda v: _is_int(v) and v >= 0, "an integer >= 0", "trainer.augment_shift=2")
    _require(cfg, "trainer.log_every", lambda v: _is_int(v) and v > 0, "a positive integer", "trainer.log_every=50")
    if _get(cfg, "trainer.grad_clip") is not None:
        _require(cfg, "trainer.grad_clip", lambda v: _is_number(v) and v > 0, "null or a positive number", "trainer.grad_clip=1.0")
    if _get(cfg, "trainer.num_threads") is not None:
        _require(cfg, "trainer.num_threads", lambda v: _is_int(v) and v > 0, "null or a positive integer", "trainer.num_threads=2")
    if cfg.task == "eval" and not cfg.get("ckpt_path"):
        raise ConfigError("ckpt_path", None, "a checkpoint file when task=eval",
                          "task=eval ckpt_path=outputs/2026-01-01/12-00-00/checkpoints/best.pt")
    if cfg.get("ckpt_path") and not Path(str(cfg.ckpt_path)).expanduser().is_file():
        raise ConfigError("ckpt_path", cfg.ckpt_path, "an existing checkpoint file",
                          "ckpt_path=outputs/2026-01-01/12-00-00/checkpoints/last.pt")
    _require(cfg, "model.precision", lambda v: v in PRECISIONS, " or ".join(PRECISIONS), "model.precision=bf16")
    neuron = cfg.neuron
    if neuron.get("beta") is not None and neuron.get("tau") is None:
        _require(cfg, "neuron.beta", lambda v: _is_number(v) and 0 < v <= 1, "in (0, 1]", "neuron.beta=0.9")
    _require(cfg, "neuron.threshold", lambda v: _is_number(v) and v > 0, "a positive number", "neuron.threshold=1.0")
    for key in ("alpha", "slope", "width"):
        if key in cfg.surrogate:
            _require(cfg, f"surrogate.{key}", lambda v: _is_number(v) and v > 0, "a positive number", f"surrogate.{key}=25")
    if "gain" in cfg.encoder:
        _require(cfg, "encoder.gain", lambda v: _is_number(v) and v >= 0, "a number >= 0", "encoder.gain=1.0")


def build(cfg: DictConfig, device: torch.device) -> dict:
    """Check the config and build every part except the dataset, which is loaded last."""
    check(cfg)
    surrogate = _part(cfg, "surrogate")
    neuron = _part(cfg, "neuron")
    neuron(shape=(1,), surrogate=surrogate)  # constructs once so bad neuron options fail here
    model = _part(cfg, "model", input_shape=input_shape(cfg.data), num_classes=cfg.data.get("num_classes", 10),
                  neuron=neuron, surrogate=surrogate)
    return {
        "model": model.to(device),
        "encoder": _part(cfg, "encoder"),
        "loss": _part(cfg, "loss"),
        "optimizer": _part(cfg, "optimizer")(model.parameters()),
        "scheduler": _part(cfg, "scheduler") if cfg.scheduler and "_target_" in cfg.scheduler else None,
    }


def checkpoint_for(cfg: DictConfig, model) -> dict | None:
    """The checkpoint named by ``ckpt_path``, loaded safely and checked against the model."""
    if not cfg.get("ckpt_path"):
        return None
    state = load_checkpoint(cfg.ckpt_path)
    if state.get("arch") != model.arch or tuple(state.get("input_shape", ())) != model.input_shape:
        raise CheckpointError(f"ckpt_path={cfg.ckpt_path} holds a {state.get('arch')} network for "
                              f"{state.get('input_shape')} inputs, but the config builds {model.arch} for "
                              f"{list(model.input_shape)}; use the same model, e.g. model.arch={state.get('arch')}")
    missing = set(model.state_dict()) ^ set(state["model"])
    if missing:
        raise CheckpointError(f"ckpt_path={cfg.ckpt_path} does not fit this configuration's model "
                              f"(parameters that differ: {', '.join(sorted(missing)[:5])}); "
                              "use the neuron options it was trained with")
    return state


def preflight(cfg: DictConfig) -> None:
    """Everything that can be checked before a run starts: values, device, parts, checkpoint, dataset."""
    resolve_device(cfg.device)
    checkpoint_for(cfg, build(cfg, torch.device("cpu"))["model"])
    if str(cfg.data.get("_target_", "")).endswith("torchvision_dataset"):
        ensure_available(cfg.data.name, cfg.data.root, cfg.data.download)


USER_ERRORS = (ConfigError, DataError, CheckpointError)


class Preflight(Callback):
    """Hydra callback: refuse a bad single run before Hydra creates its folder or log."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        try:
            preflight(config)
        except USER_ERRORS as err:
            print(f"snnrun: error: {err}", file=sys.stderr)
            sys.exit(2)
