"""From a composed config to the parts of a run, built once, refusing impossible values before any work.

Every constructor checks its own options and raises an ``OptionError`` (or an
``ArchitectureError``) naming the option; ``assemble`` builds each part once and turns those
errors, and the errors a library's constructor raises about a configured value, into a
one-paragraph ``ConfigError`` about ``group.option``. An error raised inside snnrun's own code
that is not one of those is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
import inspect
import json
import sysconfig
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from ..core.architectures import ArchitectureError
from ..core.backends import MODULES, runs_on
from ..core.losses import READOUTS
from ..core.neurons import truncate
from ..core.options import OptionError
from ..data import datasets
from ..data.datasets import DataSpec
from ..interop import nir_import
from . import checkpoints
from .devices import check_memory, resolve_device
from .distributed import World, main_rank_first, world
from .guards import check_resume, shipped_options
from .records import Parts, TrainerOptions
from .rules import ConfigError, _is_int, _require, check, check_li_readout, task_view

# ``${snnrun.div:128,${data.downsample}}``: sizes that configs derive from other keys (integer division)
OmegaConf.register_new_resolver("snnrun.div", lambda a, b: int(a) // int(b), replace=True)
PACKAGE = Path(__file__).resolve().parents[1]
LIBRARIES = {Path(sysconfig.get_paths()[k]).resolve() for k in ("purelib", "platlib", "stdlib")}


def _raised_by_library(err: BaseException) -> bool:
    """Whether the innermost frame of ``err``'s traceback is an installed library's (torch, Hydra,
    Python's own), not snnrun's code or any other code."""
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = Path(tb.tb_frame.f_code.co_filename).resolve() if tb is not None else PACKAGE
    return not where.is_relative_to(PACKAGE) and any(where.is_relative_to(lib) for lib in LIBRARIES)


def _arch_example(node) -> str:
    """An architecture that fits the run's input, classes and neuron: recurrent layers for rlif/alif, the
    tutorial's convolutional network for an image of at least 28x28, else two fully connected layers."""
    root = node._get_root()
    classes = OmegaConf.select(root, "data.num_classes", default=None) or 10
    shape = OmegaConf.select(root, "data.input_shape", default=None) or []
    neuron = str(OmegaConf.select(root, "neuron._target_", default=""))
    if neuron.endswith((".RLIF", ".ALIF")):
        return f"RFC128-FC{classes}"
    if len(shape) == 3 and min(shape[1:]) >= 28:
        return f"12C5-MP2-64C5-MP2-FC{classes}"
    return f"FC128-FC{classes}"


@contextmanager
def options_of(group: str, node):
    """Turn an error about the options of the part built from config group ``group`` into a
    ConfigError on ``group.option``: snnrun's option errors, a target that does not exist, and a
    ``TypeError``/``ValueError`` raised inside a library (a value torch refuses). The same errors
    raised by snnrun's code (or any code not installed as a library) are bugs and propagate unchanged."""
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
                              f"model.arch={_arch_example(node)}") from None
        user = (cause is err and isinstance(err, InstantiationException)) or isinstance(cause, ImportError) or (
            isinstance(cause, (TypeError, ValueError)) and _raised_by_library(cause))
        if user:
            target = node.get("_target_") if isinstance(node, DictConfig) else group
            key = _named_in(str(cause), node)
            if key is not None:  # torch's "Invalid beta parameter at index 0: 1.5" names optimizer.betas
                raise ConfigError(f"{group}.{key}", node[key], f"a value {target} takes ({cause})",
                                  f"{group}.{key}={_shipped(group, target, key)}") from None
            raise ConfigError(group, dict(node), f"valid options for {target} ({cause})",
                              f"{group}=<option> or {group}.<key>=<value>") from None
        raise cause  # a bug: the original exception, not Hydra's wrapper


SPELLED = {"lr": "learning rate", "eps": "epsilon"}  # how torch's messages name these options


def _named_in(message: str, node) -> str | None:
    """The one option of ``node`` that a library's error message names (``betas`` in "Invalid beta parameter"), if one."""
    if not isinstance(node, DictConfig):
        return None
    words = message.lower()
    named = [k for k in node if not str(k).startswith("_") and
             (SPELLED.get(k, str(k)).lower() in words or str(k).rstrip("s").lower() + " " in words)]
    return named[0] if len(named) == 1 else None


def _shipped(group: str, target: str, key: str) -> str:
    """``key``'s value in the shipped option of ``group`` that builds ``target`` (compact, as an override)."""
    values = (v[key] for v in shipped_options(group, target).values() if key in v)
    return next((json.dumps(v).replace(" ", "") for v in values), "<value>")


def accepted_keys(target) -> set[str] | None:
    """The keyword arguments ``target`` (a function or class) takes; ``None`` if it takes any. A
    class's ``**kwargs`` passed on to its base's ``__init__`` are followed through its MRO."""
    names: set[str] = set()
    for owner in (target.__mro__ if inspect.isclass(target) else (target,)):
        init = vars(owner).get("__init__") if inspect.isclass(target) else owner
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"}
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            return names
    return None


def _part(cfg: DictConfig, group: str, **kwargs):
    """Build the part config group ``group`` describes; a key its target does not take is refused."""
    node = cfg[group]
    with options_of(group, node):
        target = get_object(node._target_)
    allowed = accepted_keys(target)
    unknown = sorted(k for k in node if not str(k).startswith("_") and allowed is not None and k not in allowed)
    if unknown:
        key, options = unknown[0], sorted(allowed - set(kwargs))
        close = difflib.get_close_matches(str(key), options, n=1)
        named = sorted(shipped_options(group, node._target_))
        example = (f"{group}.{close[0]}={node[key]}" if close else f"{group}={named[0]} (without {group}.{key})" if named
                   else f"{group}.{options[0]}=... (without {group}.{key})")
        raise ConfigError(f"{group}.{key}", node[key], f"an option of {node._target_} (its options: "
                          + ", ".join(options) + ")", example)
    with options_of(group, node):
        return instantiate(node, **kwargs)


def _guarded(group: str, node, factory):
    """A partial whose calls (made later, e.g. by the model for each layer) report errors on ``group``."""

    def call(*args, **kwargs):
        with options_of(group, node):
            return factory(*args, **kwargs)

    call.func = getattr(factory, "func", factory)  # the class it builds, for the model's checks
    return call


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
    side = min(spec.input_shape[1:]) if len(spec.input_shape) == 3 else None
    if options.augment_shift and side is not None and 2 * options.augment_shift >= side:
        raise ConfigError("trainer.augment_shift", options.augment_shift, f"less than half the {side}-pixel side of "
                          "these images (a shift that large moves most of an image out of its frame)",
                          f"trainer.augment_shift={max(1, side // 8)}")


def _loader(data_cfg: DictConfig):
    """The data config's loader and the keys it takes (the others declare the data or batch it)."""
    with options_of("data", data_cfg):
        loader = instantiate({"_target_": data_cfg._target_, "_partial_": True})
    return loader, inspect.signature(loader.func).parameters


# what every dataset may declare besides its loader's options, and the machine's keys an evaluation carries over
DATA_KEYS = ("_target_", "name", "input_shape", "num_classes", "temporal", "time_steps", "batch_size", "eval_batch_size",
             "val_size", "class_names", "root", "download", "cache")


def check_data_keys(data_cfg: DictConfig) -> None:
    """Refuse a data key that nothing reads (``+data.time_windw=5000`` trained without a window): neither its loader's
    option, nor a key every dataset may declare, nor one its shipped config has."""
    _, accepted = _loader(data_cfg)
    shipped = {k for values in shipped_options("data", data_cfg._target_).values() for k in values}
    known = set(accepted) | set(DATA_KEYS) | shipped
    for key in data_cfg:
        if key not in known:
            value = data_cfg._get_node(key)._value()
            close = difflib.get_close_matches(str(key), sorted(known - {"_target_"}), n=1)
            raise ConfigError(f"data.{key}", value, "a key this dataset reads (" + ", ".join(sorted(known - {"_target_"}))
                              + ")", f"data.{close[0]}={value}" if close else
                              f"data.batch_size={data_cfg.get('batch_size')} (leave data.{key} out: nothing reads it)")


def describe_data(cfg: DictConfig) -> None:
    """Fill in what a dataset read from the user's files declares (its loader's ``describe``: the
    sample shape, T, the classes) into ``cfg.data``, so the run's config and checkpoints hold it.
    A value the command gives that differs from the files is refused, naming both."""
    loader, accepted = _loader(cfg.data)
    describe = getattr(loader.func, "describe", None)
    if describe is None:
        return
    with options_of("data", cfg.data):
        found = describe(**{k: v for k, v in cfg.data.items() if k in accepted})
    declared = OmegaConf.to_container(cfg.data, resolve=True)
    for key, value in found.items():
        given = declared.get(key)
        if given is not None and given != value:
            choice = (HydraConfig.get().runtime.choices.get("data") if HydraConfig.initialized()
                      else OmegaConf.select(cfg, "hydra.runtime.choices.data", default=None))
            raise ConfigError(f"data.{key}", given, f"{value!r}, what the data files hold (leave data.{key} out: it is "
                              "read from them)", f"data={choice or 'tensors'} (without data.{key})")
    with open_dict(cfg), read_write(cfg):
        for key, value in found.items():
            cfg.data[key] = value


def load_data(data_cfg: DictConfig, spec: DataSpec) -> datasets.Dataset:
    """Call the data config's loader with the keys it takes, and check the result against ``spec``."""
    loader, accepted = _loader(data_cfg)
    with options_of("data", data_cfg):
        dataset = loader(**{k: v for k, v in data_cfg.items() if k in accepted})
    spec.check(dataset, str(data_cfg.get("name", data_cfg._target_)))
    return dataset


def check_data_fits(dataset: datasets.Dataset, device: torch.device) -> None:
    """The splits stay on the training device: refuse data (a memory-mapped file, say) that the GPU cannot hold."""
    if device.type != "cuda":
        return
    stores = {id(s.inputs): s.inputs for s in (dataset.train, dataset.test, dataset.val) if s is not None}
    size = sum(t.numel() * t.element_size() for t in stores.values())
    free = datasets.available_memory(device)
    if free is not None and size > 0.9 * free:
        raise datasets.DataError(f"the data takes {size / 2**30:.1f} GiB and {device} has {free / 2**30:.1f} GiB free; "
                                 "snnrun keeps the splits on the training device: train on device=cpu (which maps a "
                                 "large file instead of loading it), or use a smaller dataset")


def network_of(cfg: DictConfig, imported: nir_import.Imported, spec: DataSpec) -> DictConfig:
    """The run's config with the model and neuron that a NIR graph describes (the other groups stay)."""
    if tuple(imported.input_shape) != tuple(spec.input_shape):
        raise ConfigError("nir_path", cfg.nir_path, f"a graph for this dataset's {list(spec.input_shape)} inputs (the "
                          f"graph's input is {list(imported.input_shape)})", "data=<the dataset the graph was trained on>")
    classes = int(imported.layers[-1].weight.shape[0])
    if classes != spec.num_classes:
        raise ConfigError("nir_path", cfg.nir_path, f"a graph with one output per class of this dataset ({spec.num_classes};"
                          f" the graph has {classes})", "data=<the dataset the graph was trained on>")
    cfg = task_view(cfg)
    with open_dict(cfg):
        cfg.model.arch, cfg.model.readout_neuron = imported.arch, imported.readout_neuron
        cfg.neuron = OmegaConf.create(imported.neuron)
    return cfg


def checkpoint_network(cfg: DictConfig, state: dict):
    """The network the checkpoint ``state`` (read from ``cfg.ckpt_path``) holds, built from the config
    saved in it -> (model, saved config)."""
    saved = OmegaConf.create(checkpoints.saved_config(state, cfg.ckpt_path))
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
    data: datasets.Dataset
    parts: Parts
    options: TrainerOptions
    checkpoint: dict | None  # the state to resume or evaluate, already checked against the model
    config: DictConfig | None = None  # the config the run follows, where it is not the composed one (nir_path)
    read_as: str | None = None  # how a NIR graph was read (nir_path): its network and the dt, for the run's log


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


def optimiser(cfg: DictConfig, params, total_steps: int):
    """The optimiser over ``params`` and the schedule factory (the trainer builds the schedule for its plan,
    ``snnrun.run.schedules``), their options checked now against a probe."""
    optimizer = _guarded("optimizer", cfg.optimizer, _part(cfg, "optimizer"))(params)
    scheduler = None
    if cfg.scheduler and "_target_" in cfg.scheduler:
        scheduler = _guarded("scheduler", cfg.scheduler, _part(cfg, "scheduler"))
        probe = _guarded("optimizer", cfg.optimizer, _part(cfg, "optimizer"))([torch.zeros(1, requires_grad=True)])
        scheduler(probe, total_steps=max(total_steps, 1))
    return optimizer, scheduler


def assemble(cfg: DictConfig, rank: World | None = None, state: dict | None = None, dry: bool = False) -> Assembly | None:
    """Check the config, then build every part, read the checkpoint (unless its ``state`` is handed
    in, already read) and load the data, once. ``dry``: build and check the parts, load no data, return None
    (a sweep's jobs, checked before the first runs)."""
    rank = rank or world()
    check(cfg, rank.size)
    device = resolve_device(cfg.device, rank)
    backend = cfg.neuron.get("backend")
    if backend in MODULES and not runs_on(backend, device):  # bf16 too: its neurons integrate in fp32
        raise ConfigError("neuron.backend", backend, f"auto or torch for this run: the {backend} kernels run on "
                          f"{'a GPU' if backend == 'triton' else 'a CPU'} (this run: {device})", "neuron.backend=auto")
    check_data_keys(cfg.data)
    describe_data(cfg)
    if cfg.task == "train" and cfg.get("ckpt_path"):  # a resume, once the data's own values are filled in
        state = state if state is not None else checkpoints.load(cfg.ckpt_path)
        check_resume(cfg, state)
    with options_of("trainer", cfg.trainer):
        options = TrainerOptions.from_config(cfg)
    if options.num_threads:
        torch.set_num_threads(options.num_threads)
    with options_of("data", cfg.data):
        spec = DataSpec.from_config(cfg.data)
    check_data(cfg, spec, options)
    imported = None
    if cfg.get("nir_path"):
        imported = nir_import.read(cfg.nir_path, cfg.export.dt)
        cfg = network_of(cfg, imported, spec)
    torch.manual_seed(cfg.seed)
    surrogate = _part(cfg, "surrogate")
    neuron = _guarded("neuron", cfg.neuron, _part(cfg, "neuron"))
    try:
        model = _part(cfg, "model", input_shape=spec.input_shape, num_classes=spec.num_classes, neuron=neuron,
                      surrogate=surrogate)
    except (RuntimeError, MemoryError) as err:  # torch's allocator: "can't allocate memory: you tried to allocate ..."
        if isinstance(err, RuntimeError) and "allocate" not in str(err):
            raise
        raise ConfigError("model.arch", cfg.model.get("arch"), f"a network whose weights fit in this machine's memory "
                          f"({str(err).splitlines()[0][:160]})", "model.arch=FC1000-FC10") from None
    if imported is not None:
        imported.load_into(model)
    if options.tbptt and not truncate(model, options.tbptt):
        raise ConfigError("trainer.tbptt", options.tbptt, "0 for this network: none of its layers carries a state over "
                          "time (its neurons compute the whole sequence at once), so there is nothing to truncate",
                          "trainer.tbptt=0")
    encoder = None if spec.temporal else _part(cfg, "encoder")  # temporal samples are their own T steps
    loss = _part(cfg, "loss")
    if getattr(model, "readout_neuron", "same") == "li":
        check_li_readout(cfg, loss)
    check_memory(model, options, device, temporal=spec.temporal)  # the training batch, before any data loads
    if dry:
        optimiser(cfg, model.parameters(), options.max_steps or 1000)
        return None
    if rank.size > 1 and any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        model = synced_batch_norm(model, cfg, device)
    val_size = cfg.data.get("val_size", 0)
    if cfg.get("ckpt_path"):
        state = state if state is not None else checkpoints.load(cfg.ckpt_path)
        checkpoints.check_fits(state, model, cfg.ckpt_path)
        if cfg.task == "train":
            checkpoints.check_split(state, val_size, cfg.ckpt_path)
    with main_rank_first(rank):  # rank 0 downloads and bins the data; the others then read its cache
        dataset = load_data(cfg.data, spec)
    if state is not None:
        checkpoints.check_data(state, dataset, cfg.ckpt_path)
    if val_size and dataset.val is not None:
        raise ConfigError("data.val_size", val_size, "0: this dataset brings its own validation split (data.val_path)",
                          "data.val_size=0")
    if val_size:
        _require(cfg, "data.val_size", lambda v: _is_int(v) and 0 <= v < len(dataset.train),
                 f"an integer from 0 to {len(dataset.train) - 1} (training samples held out for validation)",
                 f"data.val_size={min(5000, len(dataset.train) // 10)}")
        dataset = datasets.hold_out(dataset, val_size)
    if state is not None and cfg.task == "train":
        checkpoints.check_progress(state, options.total_steps(len(dataset.train)), cfg.ckpt_path)
    if len(dataset.train) < options.batch_size:
        raise ConfigError("data.batch_size", options.batch_size, f"at most the {len(dataset.train)} training samples",
                          f"data.batch_size={len(dataset.train)}")
    evaluated = max(len(dataset.test), len(dataset.val) if dataset.val is not None else 0)
    check_memory(model, options, device, (len(dataset.train), evaluated), spec.temporal)  # the evaluation batch too
    check_data_fits(dataset, device)
    model = model.to(device)
    dataset = dataset.to(device)
    optimizer, scheduler = optimiser(cfg, model.parameters(), options.total_steps(len(dataset.train)))
    parts = Parts(model, encoder, loss, READOUTS[cfg.readout], optimizer, scheduler)
    read_as = None if imported is None else (
        f"read {cfg.nir_path} as {imported.arch} at dt={imported.dt:g} s ("
        + ("the graph's own, from its snnrun metadata" if imported.dt_from_graph else "export.dt") + ")")
    return Assembly(device, spec, dataset, parts, options, state, cfg if imported is not None else None, read_as)


