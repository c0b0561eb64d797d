"""Where a run computes and whether it fits there: the device, and the memory its states need."""

from __future__ import annotations

import torch

from ..data.datasets import available_memory
from .distributed import World
from .records import TrainerOptions
from .rules import ConfigError

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


def state_bytes(model) -> int:
    """Bytes per element of the per-step states: the neurons integrate in the parameters' float type,
    at least float32 (under bf16 autocast the weight layers' outputs are promoted to float32)."""
    dtype = next(model.parameters(), torch.empty(0)).dtype
    return torch.promote_types(dtype, torch.float32).itemsize


def check_memory(model, options: TrainerOptions, device: torch.device, sizes: tuple[int, int] | None = None,
                 temporal: bool = False) -> None:
    """Refuse a run whose per-step states (every layer's output, spikes, membranes and their
    gradients, over T steps of the larger batch) cannot fit in the device's free memory. ``sizes``: the
    training and the largest evaluation split, once loaded (a batch is never larger than its split; before
    the data loads, only the training batch is known to be used whole). ``temporal``: T is the data's, so the
    example lowers a batch, not time_steps."""
    if sizes is None:
        eval_batch = 0
        train_batch = options.batch_size
    else:
        train_batch, eval_batch = min(options.batch_size, sizes[0]), min(options.eval_batch_size, sizes[1])
    batch = max(train_batch, eval_batch)
    per_step = state_bytes(model) * model.state_numel * batch
    params = 4 * sum(p.numel() * p.element_size() for p in model.parameters())  # weights, gradients, two moments
    need = per_step * options.time_steps + params
    free = available_memory(device)
    if free is None or need <= free:
        return
    room = 0.8 * free  # what the example leaves room in: free memory moves while a machine works
    fits = int((room - params) // per_step) if room > params else 0  # steps that fit with these batches
    gib = 2 ** 30
    where = "this machine" if device.type == "cpu" else str(device)
    why = (f"{model.arch} at T={options.time_steps} with batches of {batch} needs about {need / gib:.1f} GiB, and "
           f"{where} has {free / gib:.1f} GiB available (lower "
           + ("data.batch_size or data.eval_batch_size, or the data's T" if temporal else
              "time_steps, data.batch_size or data.eval_batch_size") + ")")
    if fits >= 1 and not temporal:
        raise ConfigError("time_steps", options.time_steps, f"small enough for the run to fit in memory: {why}",
                          f"time_steps={fits}")
    key = "data.eval_batch_size" if eval_batch >= train_batch else "data.batch_size"
    per_sample = per_step * options.time_steps / batch  # not even one step fits: the batch is what is too large
    smaller = max(1, int((room - params) // per_sample)) if room > params else 1
    raise ConfigError(key, batch, f"small enough for the run to fit in memory: {why}", f"{key}={smaller}")
