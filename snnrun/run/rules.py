"""The rules for the keys no constructor owns, and the errors a user gets.

Every constructor checks its own options (``snnrun.core.options``); ``check`` keeps only the
run-level scalars, batch sizes, the learning rate and the trainer block, and refuses a bad
value with a ``ConfigError`` that names the key, what is allowed and a command that works.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ..core.losses import READOUTS, SPIKE_READOUTS
from ..core.options import is_number
from ..data.datasets import DataError
from ..interop.nir_common import NIRError
from ..interop.nir_readers import READERS
from .checkpoints import CheckpointError
from .records import FIGURES

READER_NAMES = tuple(READERS)


class ConfigError(ValueError):
    def __init__(self, key: str, value, allowed: str, example: str):
        super().__init__(f"{key}={value!r} is not allowed: {key} must be {allowed}. For example: snnrun {example}")
        self.key = key


def task_view(cfg: DictConfig) -> DictConfig:
    """The run's config as the task sees it: without Hydra's own ``hydra`` node."""
    return OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])


def leaves(node: dict, prefix: str = "") -> dict:
    """A nested (plain) config -> {"a.b": value} for every leaf."""
    if not isinstance(node, dict):
        return {prefix[:-1]: node}
    return {k: v for key, child in node.items() for k, v in leaves(child, f"{prefix}{key}.").items()}


def _get(cfg: DictConfig, key: str):
    node = cfg
    for part in key.split("."):
        node = node.get(part) if node is not None else None
    return node


def _require(cfg: DictConfig, key: str, ok, allowed: str, example: str) -> None:
    value = _get(cfg, key)
    try:
        good = ok(value)
    except TypeError:
        good = False
    if not good:
        raise ConfigError(key, value, allowed, example)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check(cfg: DictConfig, processes: int = 1) -> None:
    """The keys no constructor owns: run-level scalars, batch sizes, the learning rate, the trainer block;
    and no key left at ``???`` (a value the chosen config needs from the command)."""
    missing = sorted(k for k in OmegaConf.missing_keys(task_view(cfg)))
    if missing:
        raise ConfigError(missing[0], "???", "given: the chosen config has no default for it"
                          + (f" (nor for {', '.join(missing[1:])})" if len(missing) > 1 else ""),
                          " ".join(f"{k}=<value>" for k in missing))
    if _get(cfg, "data.time_steps") is not None:  # a temporal dataset's T, which time_steps follows: named as set
        _require(cfg, "data.time_steps", lambda v: _is_int(v) and v > 0, "a positive integer", "data.time_steps=20")
    _require(cfg, "time_steps", lambda v: _is_int(v) and v > 0, "a positive integer", "time_steps=25")
    _require(cfg, "seed", lambda v: _is_int(v) and v >= 0, "a non-negative integer", "seed=0")
    _require(cfg, "task", lambda v: v in ("train", "eval", "export", "check_nir"), "train, eval, export or check_nir",
             "task=eval ckpt_path=outputs/.../checkpoints/best.pt")
    _require(cfg, "readout", lambda v: v in READOUTS, " or ".join(READOUTS), "readout=membrane")
    _require(cfg, "data.batch_size", lambda v: _is_int(v) and v > 0, "a positive integer", "data.batch_size=128")
    _require(cfg, "data.batch_size", lambda v: v % processes == 0, f"a multiple of the {processes} torchrun processes "
             "(each takes an equal shard of every batch)", f"data.batch_size={128 * processes}")
    _require(cfg, "data.eval_batch_size", lambda v: _is_int(v) and v > 0, "a positive integer", "data.eval_batch_size=1000")
    _require(cfg, "optimizer.lr", lambda v: is_number(v) and v > 0, "a positive number", "optimizer.lr=5e-4")
    _require(cfg, "trainer.epochs", lambda v: _is_int(v) and v >= 0, "an integer >= 0", "trainer.epochs=3")
    if _get(cfg, "trainer.max_time") is not None:
        _require(cfg, "trainer.max_time", lambda v: is_number(v) and v > 0, "null or a positive number of seconds",
                 "trainer.max_time=600")
    for key, example in (("trainer.max_steps", "trainer.max_steps=500"), ("trainer.eval_every", "trainer.eval_every=100")):
        if _get(cfg, key) is not None:
            low = 0 if key.endswith("max_steps") else 1
            _require(cfg, key, lambda v: _is_int(v) and v >= low, f"null or an integer >= {low}", example)
    _require(cfg, "trainer.curve_points", lambda v: _is_int(v) and v >= 0, "an integer >= 0", "trainer.curve_points=10")
    _require(cfg, "trainer.curve_samples", lambda v: _is_int(v) and v > 0, "a positive integer", "trainer.curve_samples=1000")
    _require(cfg, "trainer.augment_shift", lambda v: _is_int(v) and v >= 0, "an integer >= 0", "trainer.augment_shift=2")
    _require(cfg, "trainer.skip_nonfinite", lambda v: _is_int(v) and v >= 0, "an integer >= 0 (non-finite updates "
             "skipped in a row before the run fails; 0: the first ends it)", "trainer.skip_nonfinite=10")
    _require(cfg, "trainer.tbptt", lambda v: _is_int(v) and v >= 0, "an integer >= 0 (truncated BPTT: the state's "
             "gradient is cut every this many steps; 0: full BPTT)", "trainer.tbptt=100")
    _require(cfg, "trainer.log_every", lambda v: _is_int(v) and v > 0, "a positive integer", "trainer.log_every=50")
    _require(cfg, "trainer.raster_samples", lambda v: _is_int(v) and v >= 0, "an integer >= 0", "trainer.raster_samples=4")
    _require(cfg, "trainer.figures", lambda v: v in FIGURES, " or ".join(FIGURES), "trainer.figures=last")
    if _get(cfg, "trainer.grad_clip") is not None:
        _require(cfg, "trainer.grad_clip", lambda v: is_number(v) and v > 0, "null or a positive number",
                 "trainer.grad_clip=1.0")
    for key in ("trainer.energy_ac_pj", "trainer.energy_mac_pj"):
        _require(cfg, key, lambda v: is_number(v) and v >= 0,
                 "a number of picojoules >= 0", f"{key}={0.9 if key.endswith('_ac_pj') else 4.6}")
    if _get(cfg, "trainer.num_threads") is not None:
        _require(cfg, "trainer.num_threads", lambda v: _is_int(v) and v > 0, "null or a positive integer", "trainer.num_threads=2")
    if cfg.task in ("eval", "export") and not cfg.get("ckpt_path") and not (cfg.task == "eval" and cfg.get("nir_path")):
        raise ConfigError("ckpt_path", None, f"a checkpoint file when task={cfg.task}"
                          + (" (or nir_path=, a NIR graph)" if cfg.task == "eval" else ""),
                          f"task={cfg.task} ckpt_path=outputs/2026-01-01/12-00-00/checkpoints/best.pt")
    if cfg.get("nir_path") and cfg.get("ckpt_path"):
        raise ConfigError("nir_path", cfg.nir_path, "null when ckpt_path is set (the network comes from one or the "
                          "other)", f"ckpt_path={cfg.ckpt_path}")
    if cfg.task == "check_nir" and not cfg.get("nir_path"):
        raise ConfigError("nir_path", None, "a NIR graph when task=check_nir (it runs through export.reader)",
                          "task=check_nir nir_path=model.nir export.reader=snntorch")
    if cfg.get("export"):
        _require(cfg, "export.dt", lambda v: is_number(v) and v > 0,
                 "a positive number of seconds", "export.dt=1e-4")
        _require(cfg, "export.reader", lambda v: v in READER_NAMES, " or ".join(READER_NAMES), "export.reader=snntorch")
        if cfg.task == "check_nir":
            _require(cfg, "export.reader", lambda v: v != "nir", "the reader to run the graph through: snntorch, "
                     "norse or sinabs", "export.reader=snntorch")
            _require(cfg, "export.check_samples", lambda v: _is_int(v) and v > 0, "a positive integer",
                     "export.check_samples=64")
    if cfg.get("ckpt_path") and not Path(str(cfg.ckpt_path)).expanduser().is_file():
        raise ConfigError("ckpt_path", cfg.ckpt_path, "an existing checkpoint file",
                          "ckpt_path=outputs/2026-01-01/12-00-00/checkpoints/last.pt")


def check_li_readout(cfg: DictConfig, loss) -> None:
    """A non-spiking readout needs a loss and a readout on its membrane."""
    if getattr(loss, "needs_spikes", False):
        raise ConfigError("model.readout_neuron", "li", f"same with this loss ({type(loss).__name__} counts output "
                          "spikes, and an li readout never spikes)", "loss=membrane_max_ce readout=membrane_max")
    if cfg.readout in SPIKE_READOUTS:
        raise ConfigError("readout", cfg.readout, "membrane or membrane_max with model.readout_neuron=li (an li "
                          "readout never spikes)", "readout=membrane_max")


USER_ERRORS = (ConfigError, DataError, CheckpointError, NIRError)
