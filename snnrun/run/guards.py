"""What a run may not do to what already exists, checked before anything is written: write over an earlier
run's folder or a file, continue a checkpoint as another run, or take a value that does not resolve or a
string for a switch. ``snnrun.run.preflight`` calls these before Hydra creates the run's folder.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from hydra import compose
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

from .rules import ConfigError, _is_int, leaves, task_view

IDENTITY = ("model", "neuron", "surrogate", "encoder", "time_steps", "data")  # what the checkpoint's network is
# keys of the running machine and the run's own choices: never taken from the checkpoint
LOCAL = ("task", "ckpt_path", "nir_path", "device", "export", "data.root", "data.download", "data.cache",
         "trainer.num_threads")
BATCHING = ("data.batch_size", "data.eval_batch_size", "data.val_size")  # compatible with any checkpoint
RESUMED = IDENTITY + ("loss", "readout", "optimizer._target_", "seed")  # what a resume continues: the same run
# what a resume may change besides LOCAL and HOW: not data.batch_size (the epoch's position is counted in batches)
RESUME_MAY = ("data.eval_batch_size", "data.val_size")  # val_size: refused by checkpoints.check_data, naming the set
# how a layer computes and where the files are: a resume may change them (another machine, moved files; the
# training set itself is held to the checkpoint's by checkpoints.check_data)
HOW = ("neuron.backend", "neuron.fused", "neuron.scan", "neuron.block", "data.train_path", "data.test_path",
       "data.val_path", "data.path")


def overrides_of(hydra_node) -> list[str]:
    """The command's overrides as typed: an override may hold an interpolation (``time_steps=${data.steps}``)."""
    return OmegaConf.to_container(hydra_node.overrides.task, resolve=False)


def under(key: str, names) -> bool:
    return any(key == n or key.startswith(n + ".") for n in names)


def plain(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(task_view(cfg), resolve=True)


def occupied(path: Path) -> str | None:
    """What makes ``path`` unfit for a new run ("already holds a, b, ...", "is a file"), or None: new or empty."""
    if not path.exists() or (path.is_dir() and not any(path.iterdir())):
        return None
    names = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
    return f"already holds {', '.join(names[:4])}{', ...' if len(names) > 4 else ''}" if names else "is a file"


def check_folder(key: str, folder: str) -> None:
    """Refuse a run's or a sweep's folder that is a file or already holds files: snnrun never writes over a
    run (its checkpoints, results and logs would be replaced or mixed with this one's)."""
    path = Path(folder).expanduser()
    held = occupied(path)
    if held is None:
        return
    fresh = "each sweep gets a new folder under outputs/multirun/" if "sweep" in key else "each run gets a new folder"
    raise ConfigError(key, folder, f"a new or empty folder: {path} {held}, and snnrun never writes over what an "
                      f"earlier run wrote (leave {key} out and {fresh})", f"{key}={str(folder).rstrip('/')}-2")


def export_path(cfg: DictConfig) -> Path:
    """Where task=export writes the graph: export.path, else model.nir next to the checkpoint."""
    return Path(cfg.export.path or Path(cfg.ckpt_path).expanduser().with_name("model.nir")).expanduser()


def check_export_path(cfg: DictConfig) -> None:
    """Refuse an export onto an existing file (a checkpoint, an earlier export) or below a file."""
    path = export_path(cfg)
    blocked = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if path.exists() or blocked is not None:
        why = f"{blocked} is a file" if blocked is not None else f"{path} exists"
        ckpt = Path(cfg.ckpt_path).expanduser()
        names = (ckpt.with_suffix(".nir"), *(ckpt.with_name(f"{ckpt.stem}-{n}.nir") for n in range(2, 1000)))
        free = next((c for c in names if not c.exists()), ckpt.with_name(f"{ckpt.stem}-new.nir"))
        raise ConfigError("export.path", cfg.export.path, f"a new file: {why}, and snnrun never writes over a file "
                          "(give the graph a name of its own)", f"task=export ckpt_path={cfg.ckpt_path} export.path={free}")


def check_resume(cfg: DictConfig, state: dict) -> None:
    """Refuse a resume (task=train with ckpt_path) whose network, input, data, batch size, loss, readout, optimiser
    or seed is not the checkpoint's: it continues that run (the plan, learning rate and budget may change)."""
    theirs, mine = leaves(state.get("config") or {}), leaves(plain(cfg))
    for key in sorted(set(theirs) & set(mine)):
        if under(key, RESUMED) and not under(key, LOCAL + RESUME_MAY + HOW) and theirs[key] != mine[key]:
            raise ConfigError(key, mine[key], f"the checkpoint's value, {theirs[key]!r}: ckpt_path={cfg.ckpt_path} "
                              f"holds a run trained with {key}={theirs[key]!r}, and a resume continues that run (give "
                              "it the run's overrides; start a new run without ckpt_path to train something else)",
                              f"ckpt_path={cfg.ckpt_path} {_as_override(key, theirs[key])}")


def shipped_options(group: str, target: str) -> dict[str, dict]:
    """The shipped options of config group ``group`` that build ``target``: {option name: its values}."""
    from .cli import config_dir

    options = {o.stem: yaml.safe_load(o.read_text()) or {} for o in sorted((Path(config_dir()) / group).glob("*.yaml"))}
    return {name: values for name, values in options.items() if values.get("_target_") == target}


def _as_override(key: str, value) -> str:
    """``neuron._target_`` = the LIF class -> ``neuron=lif``: the group option with that target, where one has it."""
    group, _, leaf = key.partition(".")
    if leaf == "_target_":
        options = list(shipped_options(group, value))
        if len(options) == 1:  # datasets share a loader (nmnist, dvs_gesture): no option to name then
            return f"{group}={options[0]}"
    return f"{key}={value!r}"


def check_resolves(cfg: DictConfig) -> None:
    """Every value resolves: a key that picks another (``data.mode`` picks ``data.modes.<mode>``) or divides a size
    (``data.downsample``) is checked first, so the error names it and what it may be."""
    data = cfg.get("data") or {}
    if "modes" in data and data.get("mode") not in data.modes:
        modes = list(data.modes)
        raise ConfigError("data.mode", data.get("mode"), " or ".join(modes), f"data.mode={modes[-1]}")
    if "downsample" in data and not (_is_int(data.get("downsample")) and data.downsample > 0):
        raise ConfigError("data.downsample", data.get("downsample"), "a positive integer (the sensor's pixels are "
                          "pooled in squares of this side)", "data.downsample=2")
    try:
        plain(cfg)
    except InterpolationResolutionError as err:
        raw = leaves(OmegaConf.to_container(cfg, resolve=False)).get(err.full_key)
        raise ConfigError(err.full_key, raw, f"a value that resolves ({str(err).splitlines()[0]})", "--cfg job  (prints the config "
                          "as composed, before resolving)") from None


def check_switches(cfg: DictConfig, overrides: list[str]) -> None:
    """A key the shipped config sets to true or false takes only true or false (``neuron.learn_beta=maybe``
    would read as true): the defaults come from composing the same group choices without the other overrides."""
    choices = [o for o in overrides if "." not in o.lstrip("+~").split("=", 1)[0]]
    shipped = leaves(plain(compose(config_name="config", overrides=choices)))
    for key, value in leaves(plain(cfg)).items():
        if isinstance(shipped.get(key), bool) and not isinstance(value, bool):
            raise ConfigError(key, value, "true or false", f"{key}={str(not shipped[key]).lower()}")
