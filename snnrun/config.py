"""From a composed config to the parts of a run, refusing impossible values before any work starts.

Every constructor checks its own options and raises an ``OptionError`` (or an
``ArchitectureError``) naming the option; ``assemble`` builds each part once and turns those
errors into a one-paragraph ``ConfigError`` about ``group.option``. ``check`` keeps only the
rules for keys no constructor owns. For a single run the Hydra callback ``Preflight``
assembles before Hydra creates the run folder, so a refused run writes nothing, and hands
what it built to the task; a sweep job assembles inside its own job.
"""

from __future__ import annotations

import inspect
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.errors import InstantiationException
from hydra.experimental.callback import Callback
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from . import checkpoints, data, nirgraph
from .architectures import ArchitectureError
from .checkpoints import CheckpointError
from .data import DataError, DataSpec, available_memory
from .distributed import World, world
from .losses import READOUTS, SPIKE_READOUTS
from .options import OptionError, is_number
from .training import FIGURES, Parts, TrainerOptions


# ``${snnrun.div:128,${data.downsample}}``: sizes that configs derive from other keys (integer division)
OmegaConf.register_new_resolver("snnrun.div", lambda a, b: int(a) // int(b), replace=True)


class ConfigError(ValueError):
    def __init__(self, key: str, value, allowed: str, example: str):
        super().__init__(f"{key}={value!r} is not allowed: {key} must be {allowed}. For example: snnrun {example}")
        self.key = key


USER_ERRORS = (ConfigError, DataError, CheckpointError, nirgraph.NIRError)


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
    """The keys no constructor owns: run-level scalars, batch sizes, the learning rate, the trainer block."""
    _require(cfg, "time_steps", lambda v: _is_int(v) and v > 0, "a positive integer", "time_steps=25")
    _require(cfg, "seed", lambda v: _is_int(v) and v >= 0, "a non-negative integer", "seed=0")
    _require(cfg, "task", lambda v: v in ("train", "eval", "export"), "train, eval or export",
             "task=eval ckpt_path=outputs/.../checkpoints/best.pt")
    _require(cfg, "readout", lambda v: v in READOUTS, " or ".join(READOUTS), "readout=membrane")
    _require(cfg, "data.batch_size", lambda v: _is_int(v) and v > 0, "a positive integer", "data.batch_size=128")
    _require(cfg, "data.batch_size", lambda v: v % processes == 0, f"a multiple of the {processes} torchrun processes "
             "(each takes an equal shard of every batch)", f"data.batch_size={128 * processes}")
    _require(cfg, "data.eval_batch_size", lambda v: _is_int(v) and v > 0, "a positive integer", "data.eval_batch_size=1000")
    _require(cfg, "optimizer.lr", lambda v: is_number(v) and v > 0, "a positive number", "optimizer.lr=5e-4")
    _require(cfg, "trainer.epochs", lambda v: _is_int(v) and v >= 0, "an integer >= 0", "trainer.epochs=3")
    for key, example in (("trainer.max_steps", "trainer.max_steps=500"), ("trainer.eval_every", "trainer.eval_every=100")):
        if _get(cfg, key) is not None:
            low = 0 if key.endswith("max_steps") else 1
            _require(cfg, key, lambda v: _is_int(v) and v >= low, f"null or an integer >= {low}", example)
    _require(cfg, "trainer.curve_points", lambda v: _is_int(v) and v >= 0, "an integer >= 0", "trainer.curve_points=10")
    _require(cfg, "trainer.curve_samples", lambda v: _is_int(v) and v > 0, "a positive integer", "trainer.curve_samples=1000")
    _require(cfg, "trainer.augment_shift", lambda v: _is_int(v) and v >= 0, "an integer >= 0", "trainer.augment_shift=2")
    _require(cfg, "trainer.log_every", lambda v: _is_int(v) and v > 0, "a positive integer", "trainer.log_every=50")
    _require(cfg, "trainer.raster_samples", lambda v: _is_int(v) and v >= 0, "an integer >= 0", "trainer.raster_samples=4")
    _require(cfg, "trainer.figures", lambda v: v in FIGURES, " or ".join(FIGURES), "trainer.figures=last")
    if _get(cfg, "trainer.grad_clip") is not None:
        _require(cfg, "trainer.grad_clip", lambda v: is_number(v) and v > 0, "null or a positive number",
                 "trainer.grad_clip=1.0")
    for key in ("trainer.energy_ac_pj", "trainer.energy_mac_pj"):
        _require(cfg, key, lambda v: is_number(v) and v >= 0,
                 "a number of picojoules >= 0", f"{key}={0.9 if key.endswith('ac_pj') else 4.6}")
    if _get(cfg, "trainer.num_threads") is not None:
        _require(cfg, "trainer.num_threads", lambda v: _is_int(v) and v > 0, "null or a positive integer", "trainer.num_threads=2")
    if cfg.task in ("eval", "export") and not cfg.get("ckpt_path") and not (cfg.task == "eval" and cfg.get("nir_path")):
        raise ConfigError("ckpt_path", None, f"a checkpoint file when task={cfg.task}"
                          + (" (or nir_path=, a NIR graph)" if cfg.task == "eval" else ""),
                          f"task={cfg.task} ckpt_path=outputs/2026-01-01/12-00-00/checkpoints/best.pt")
    if cfg.get("nir_path") and cfg.get("ckpt_path"):
        raise ConfigError("nir_path", cfg.nir_path, "null when ckpt_path is set (the network comes from one or the "
                          "other)", f"ckpt_path={cfg.ckpt_path}")
    if cfg.get("export"):
        _require(cfg, "export.dt", lambda v: is_number(v) and v > 0,
                 "a positive number of seconds", "export.dt=1e-4")
    if cfg.get("ckpt_path") and not Path(str(cfg.ckpt_path)).expanduser().is_file():
        raise ConfigError("ckpt_path", cfg.ckpt_path, "an existing checkpoint file",
                          "ckpt_path=outputs/2026-01-01/12-00-00/checkpoints/last.pt")


def resolve_device(name: str, rank: World = World()) -> torch.device:
    """``auto`` -> cuda, then mps, then cpu; under torchrun each rank takes its local GPU."""
    if name == "auto":
        if torch.cuda.is_available():
            device = torch.device("cuda")
        elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            device = torch.device("mps")
        else:
            device = torch.device("cpu")
    else:
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
    if rank.size > 1 and device.type == "cuda":
        device = torch.device("cuda", rank.local_rank)  # one GPU per rank
    return device


@contextmanager
def options_of(group: str, node):
    """Turn an error of the part built from config group ``group`` into a ConfigError on ``group.option``."""
    try:
        yield
    except (ValueError, TypeError, InstantiationException) as err:
        cause = err.__cause__ if isinstance(err, InstantiationException) and err.__cause__ is not None else err
        if isinstance(cause, ConfigError):
            raise cause from None
        if isinstance(cause, OptionError):
            raise ConfigError(f"{group}.{cause.option}", cause.value, cause.allowed,
                              f"{group}.{cause.option}={cause.example}") from None
        if isinstance(cause, ArchitectureError):
            raise ConfigError(f"{group}.arch", node.get("arch"), f"a valid architecture ({cause})",
                              "model.arch=12C5-MP2-64C5-MP2-FC10") from None
        if isinstance(cause, (TypeError, ValueError)):
            target = node.get("_target_") if isinstance(node, DictConfig) else group
            raise ConfigError(group, dict(node), f"valid options for {target} ({cause})",
                              f"{group}=<option> or {group}.<key>=<value>") from None
        raise


def _part(cfg: DictConfig, group: str, **kwargs):
    with options_of(group, cfg[group]):
        return instantiate(cfg[group], **kwargs)


def _guarded(group: str, node, factory):
    """A partial whose calls (made later, e.g. by the model for each layer) report errors on ``group``."""

    def call(*args, **kwargs):
        with options_of(group, node):
            return factory(*args, **kwargs)

    call.func = getattr(factory, "func", factory)  # the class it builds, for the model's checks
    return call


def check_memory(model, options: TrainerOptions, device: torch.device) -> None:
    """Refuse a run whose per-step states (every layer's output, spikes, membranes and their
    gradients, over T steps of the larger batch) cannot fit in the device's free memory."""
    batch = max(options.batch_size, options.eval_batch_size)
    per_step = 4 * model.state_numel * batch
    params = 4 * 4 * sum(p.numel() for p in model.parameters())  # weights, gradients, two optimiser moments
    need = per_step * options.time_steps + params
    free = available_memory(device)
    if free is None or need <= free:
        return
    fits = max(1, int((free - params) // per_step)) if free > params else 1
    gib = 2 ** 30
    where = "this machine" if device.type == "cpu" else str(device)
    raise ConfigError("time_steps", options.time_steps,
                      f"small enough for the run to fit in memory: {model.arch} at T={options.time_steps} with batches "
                      f"of {batch} needs about {need / gib:.1f} GiB, and {where} has {free / gib:.1f} GiB "
                      "available (lower time_steps, data.batch_size or data.eval_batch_size)", f"time_steps={fits}")


def check_data(cfg: DictConfig, spec: DataSpec, options: TrainerOptions) -> None:
    """The rules that tie the run to its dataset: T of a temporal dataset, augmentation of images."""
    if spec.temporal and options.time_steps != spec.time_steps:
        raise ConfigError("time_steps", options.time_steps, f"the {spec.time_steps} steps of every sample of this "
                          "temporal dataset (data.time_steps); leave time_steps out to follow the data",
                          f"data.time_steps={options.time_steps}" if "time_steps" in _loader(cfg.data)[1]
                          else f"time_steps={spec.time_steps}")
    if options.augment_shift and len(spec.input_shape) != 3:
        raise ConfigError("trainer.augment_shift", options.augment_shift, "0 for samples that are not images "
                          f"(this dataset's samples are {list(spec.input_shape)}, not [C, H, W])", "trainer.augment_shift=0")


def check_li_readout(cfg: DictConfig, loss) -> None:
    """A non-spiking readout needs a loss and a readout on its membrane."""
    if getattr(loss, "needs_spikes", False):
        raise ConfigError("model.readout_neuron", "li", f"same with this loss ({type(loss).__name__} counts output "
                          "spikes, and an li readout never spikes)", "loss=membrane_max_ce readout=membrane_max")
    if cfg.readout in SPIKE_READOUTS:
        raise ConfigError("readout", cfg.readout, "membrane or membrane_max with model.readout_neuron=li (an li "
                          "readout never spikes)", "readout=membrane_max")


def _loader(data_cfg: DictConfig):
    """The data config's loader and the keys it takes (the others declare the data or batch it)."""
    with options_of("data", data_cfg):
        loader = instantiate({"_target_": data_cfg._target_, "_partial_": True})
    return loader, inspect.signature(loader.func).parameters


def load_data(data_cfg: DictConfig, spec: DataSpec) -> data.Dataset:
    """Call the data config's loader with the keys it takes, and check the result against ``spec``."""
    loader, accepted = _loader(data_cfg)
    with options_of("data", data_cfg):
        dataset = loader(**{k: v for k, v in data_cfg.items() if k in accepted})
    spec.check(dataset, str(data_cfg.get("name", data_cfg._target_)))
    return dataset


def network_of(cfg: DictConfig, imported: nirgraph.Imported, spec: DataSpec) -> DictConfig:
    """The run's config with the model and neuron that a NIR graph describes (the other groups stay)."""
    if tuple(imported.input_shape) != tuple(spec.input_shape):
        raise ConfigError("nir_path", cfg.nir_path, f"a graph for this dataset's {list(spec.input_shape)} inputs (the "
                          f"graph's input is {list(imported.input_shape)})", "data=<the dataset the graph was trained on>")
    classes = int(imported.layers[-1].weight.shape[0])
    if classes != spec.num_classes:
        raise ConfigError("nir_path", cfg.nir_path, f"a graph with one output per class of this dataset ({spec.num_classes};"
                          f" the graph has {classes})", "data=<the dataset the graph was trained on>")
    cfg = OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])  # the task's view: no hydra node
    with open_dict(cfg):
        cfg.model.arch, cfg.model.readout_neuron = imported.arch, imported.readout_neuron
        cfg.neuron = OmegaConf.create(imported.neuron)
    return cfg


def checkpoint_network(cfg: DictConfig):
    """The network a checkpoint holds, built from the config saved in it -> (model, saved config)."""
    state = checkpoints.load(cfg.ckpt_path)
    saved = OmegaConf.create(state.get("config") or {})
    if not {"model", "neuron", "surrogate", "data"} <= set(saved):
        raise CheckpointError(f"ckpt_path={cfg.ckpt_path} holds no run config to rebuild its network from")
    with options_of("data", saved.data):
        spec = DataSpec.from_config(saved.data)
    neuron = _guarded("neuron", saved.neuron, _part(saved, "neuron"))
    model = _part(saved, "model", input_shape=spec.input_shape, num_classes=spec.num_classes, neuron=neuron,
                  surrogate=_part(saved, "surrogate"))
    checkpoints.check_fits(state, model, cfg.ckpt_path)
    with checkpoints.restoring(cfg.ckpt_path):
        model.load_state_dict(state["model"])
    return model, saved


@dataclass
class Assembly:
    """A run, ready to train or evaluate: built once, by ``assemble``."""

    device: torch.device
    spec: DataSpec
    data: data.Dataset
    parts: Parts
    options: TrainerOptions
    checkpoint: dict | None  # the state to resume or evaluate, already checked against the model
    config: DictConfig | None = None  # with nir_path: the run's config with the graph's model and neuron


def synced_batch_norm(model, cfg: DictConfig, device: torch.device):
    """Under torchrun, BN layers normalise over the whole global batch (SyncBatchNorm), so N ranks
    compute what one process does. torch syncs them on GPUs only: on CPU processes each rank would
    normalise its own shard, a different network, so that is refused."""
    if device.type != "cuda":
        raise ConfigError("model.arch", cfg.model.arch, "a network without BN layers when torchrun runs CPU processes "
                          "(each would normalise only its own shard of the batch, unlike one process; torch syncs "
                          "batch norm across ranks on GPUs only). Drop the BN tokens or run on one process",
                          "model.arch=16C5-MP2-32C5-MP2-FC10")
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)


def assemble(cfg: DictConfig, rank: World | None = None) -> Assembly:
    """Check the config, then build every part, read the checkpoint and load the data, once."""
    rank = rank or world()
    check(cfg, rank.size)
    device = resolve_device(cfg.device, rank)
    with options_of("trainer", cfg.trainer):
        options = TrainerOptions.from_config(cfg)
    if options.num_threads:
        torch.set_num_threads(options.num_threads)
    with options_of("data", cfg.data):
        spec = DataSpec.from_config(cfg.data)
    check_data(cfg, spec, options)
    imported = None
    if cfg.get("nir_path"):
        imported = nirgraph.read(cfg.nir_path, cfg.export.dt)
        cfg = network_of(cfg, imported, spec)
    torch.manual_seed(cfg.seed)
    surrogate = _part(cfg, "surrogate")
    neuron = _guarded("neuron", cfg.neuron, _part(cfg, "neuron"))
    model = _part(cfg, "model", input_shape=spec.input_shape, num_classes=spec.num_classes, neuron=neuron,
                  surrogate=surrogate)
    if imported is not None:
        imported.load_into(model)
    encoder = None if spec.temporal else _part(cfg, "encoder")  # temporal samples are their own T steps
    loss = _part(cfg, "loss")
    if getattr(model, "readout_neuron", "same") == "li":
        check_li_readout(cfg, loss)
    check_memory(model, options, device)
    if rank.size > 1 and any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        model = synced_batch_norm(model, cfg, device)
    state = None
    if cfg.get("ckpt_path"):
        state = checkpoints.load(cfg.ckpt_path)
        checkpoints.check_fits(state, model, cfg.ckpt_path)
    dataset = load_data(cfg.data, spec)
    if state is not None:
        checkpoints.check_data(state, dataset, cfg.ckpt_path)
    val_size = cfg.data.get("val_size", 0)
    if val_size:
        _require(cfg, "data.val_size", lambda v: _is_int(v) and 0 <= v < len(dataset.train),
                 f"an integer from 0 to {len(dataset.train) - 1} (training samples held out for validation)",
                 "data.val_size=5000")
        dataset = data.hold_out(dataset, val_size)
    if len(dataset.train) < options.batch_size:
        raise ConfigError("data.batch_size", options.batch_size, f"at most the {len(dataset.train)} training samples",
                          f"data.batch_size={len(dataset.train)}")
    model = model.to(device)
    dataset = dataset.to(device)
    optimizer = _guarded("optimizer", cfg.optimizer, _part(cfg, "optimizer"))(model.parameters())
    scheduler = None
    if cfg.scheduler and "_target_" in cfg.scheduler:
        total = max(options.total_steps(len(dataset.train)), 1)
        scheduler = _guarded("scheduler", cfg.scheduler, _part(cfg, "scheduler"))(optimizer, total_steps=total)
    parts = Parts(model, encoder, loss, READOUTS[cfg.readout], optimizer, scheduler)
    return Assembly(device, spec, dataset, parts, options, state, cfg if imported is not None else None)


class Preflight(Callback):
    """Hydra callback: assemble a single run before Hydra creates its folder or log; refuse it
    there when anything is wrong, else keep the assembly for the task (``take``)."""

    _assembly: Assembly | tuple | None = None  # an Assembly, or for task=export the checkpoint's (model, config)

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        try:
            if config.task == "export":
                check(config)
                model, saved = Preflight._assembly = checkpoint_network(config)
                nirgraph.check_exact(model, saved.model.get("precision", "fp32"), config.export.approximate)
                return
            Preflight._assembly = assemble(config)
        except USER_ERRORS as err:
            print(f"snnrun: error: {err}", file=sys.stderr)
            sys.exit(2)

    @staticmethod
    def take() -> Assembly | tuple | None:
        assembly, Preflight._assembly = Preflight._assembly, None
        return assembly
