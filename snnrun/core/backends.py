"""Who runs a fused neuron op (``neuron.backend``): torch's loop over T, or one kernel per sequence.

    auto    numba on a CPU for float32 where numba imports and the surrogate is one the kernels
            know; torch otherwise (float64, bfloat16, GPUs, a surrogate of your own)
    torch   the Python loop over T of in-place tensor ops (``snnrun.core.sequences``)
    numba   the compiled CPU kernels (``snnrun.core.numba_ops``), float32 or float64

An explicit backend that cannot run is refused when the layer is built (numba missing, a
surrogate the kernels do not know, an all-to-all recurrence) or when the run is assembled (a
GPU). Each layer records the backend its last call used (``last_backend``), which the log and
``results.json`` report.
"""

from __future__ import annotations

import importlib
from functools import lru_cache

import torch

from .options import OptionError, one_of

BACKENDS = ("auto", "torch", "numba")
KERNEL_DTYPES = {"numba": (torch.float32, torch.float64)}


@lru_cache(maxsize=None)
def unavailable(name: str) -> str | None:
    """Why backend ``name`` cannot run on this install, or None."""
    if name == "numba":
        try:
            importlib.import_module("snnrun.core.numba_ops")  # compiles nothing until first use
        except ImportError as err:
            return f"numba does not import here ({err}); pip install 'snnrun[kernels]'"
    return None


def check(backend: str, surrogate, one_to_one: bool = True) -> str:
    """A constructor's check of ``backend``: refuse one that cannot run this layer anywhere."""
    one_of("backend", backend, BACKENDS)
    if backend in ("auto", "torch"):
        return backend
    reason = unavailable(backend)
    if reason is None and not kernel_knows(surrogate):
        reason = f"the {backend} kernels compute the built-in surrogates, not {type(surrogate).__name__}"
    if reason is None and not one_to_one:
        reason = (f"the {backend} kernels run one-to-one or no recurrence; an all-to-all recurrence runs on torch "
                  "(its matrix product per step)")
    if reason:
        raise OptionError("backend", backend, f"auto or torch here: {reason}", "auto")
    return backend


def kernel_knows(surrogate) -> bool:
    from .surrogates import BUILT_IN

    return type(surrogate) in BUILT_IN


def choose(backend: str, current: torch.Tensor, surrogate, one_to_one: bool = True) -> str:
    """The backend that runs this call."""
    if backend == "auto":
        ok = (current.device.type == "cpu" and current.dtype == torch.float32 and one_to_one
              and unavailable("numba") is None and kernel_knows(surrogate))
        return "numba" if ok else "torch"
    if backend == "numba" and (current.device.type != "cpu" or current.dtype not in KERNEL_DTYPES["numba"]):
        raise RuntimeError(f"neuron.backend=numba runs float32 or float64 on a CPU, not {current.dtype} on "
                           f"{current.device}: use neuron.backend=auto")
    return backend


def used(model: torch.nn.Module) -> list[str]:
    """The backends the layers of ``model`` ran on in their last call, sorted."""
    return sorted({m.last_backend for m in model.modules() if getattr(m, "last_backend", None)})
