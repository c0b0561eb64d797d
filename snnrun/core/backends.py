"""Who runs a fused neuron op (``neuron.backend``): torch's loop over T, or one kernel per sequence.

    auto    for a float32 current and a surrogate the kernels know: triton on a GPU,
            numba on a CPU, where they import; torch otherwise (float64, bfloat16, a conv layer's
            channels-last current, a surrogate of your own, all-to-all recurrence)
    torch   the Python loop over T of in-place tensor ops (``snnrun.core.sequences``)
    numba   the compiled CPU kernels (``snnrun.core.numba_ops``), float32 or float64
    triton  the GPU kernels (``snnrun.core.triton_ops``), float32 or float64; on CPU tensors only
            in Triton's interpreter (``TRITON_INTERPRET=1``)

An explicit backend that cannot run is refused when the layer is built (numba missing, a
surrogate the kernels do not know, an all-to-all recurrence) or when the run is assembled (a
GPU). Each layer records the backend its last call used (``last_backend``), which the log and
``results.json`` report.
"""

from __future__ import annotations

import importlib
import math
import os
from functools import lru_cache

import numpy as np
import torch

from . import surrogates as sg
from .options import OptionError, one_of

BACKENDS = ("auto", "torch", "numba", "triton")
KERNEL_DTYPES = (torch.float32, torch.float64)
MODULES = {"numba": "snnrun.core.numba_ops", "triton": "snnrun.core.triton_ops"}
# measured (2-core AMD EPYC, AVX-512, 2 threads, forward + backward against the torch loop): the lif kernel
# 1.6x to 4.0x from [25, 128, 1000] to [784, 64, 128] and [100, 64, 4096]; the alif kernel 2.3x to 3.4x; the
# csnn tutorial network with its conv layers on numba 0.95x and 1.9x the peak memory (the copies of its
# channels-last currents and their gradients), hence torch for those
RESET_CODES = {"subtract": 0, "zero": 1, "none": 2}  # the reset rule as the kernels take it

# surrogate -> (kind, constants): the kernels compute scale * shape(x) (surrogates.py) from these, in
# the arrays' dtype, as torch does from Python scalars
SURROGATES = {
    sg.ATan: lambda s: (0, (s.alpha / 2, math.pi / 2 * s.alpha)),
    sg.FastSigmoid: lambda s: (1, (s.slope,)),
    sg.Sigmoid: lambda s: (2, (s.slope,)),
    sg.Triangular: lambda s: (3, (s.width,)),
    sg.MultiGaussian: lambda s: (4, (s.sigma, s.h, 2 * s.sigma**2, 2 * (s.s * s.sigma) ** 2,
                                     s.sigma * math.sqrt(2 * math.pi), s.s * s.sigma * math.sqrt(2 * math.pi))),
    sg.StraightThrough: lambda s: (5, ()),
    sg.Heaviside: lambda s: (6, ()),
}


def surrogate_code(surrogate, dtype) -> tuple[int, np.ndarray] | None:
    """(kind, [c0..c5, scale] in ``dtype``) for a surrogate the kernels compute, else None."""
    code = SURROGATES.get(type(surrogate))
    if code is None:
        return None
    kind, constants = code(surrogate)
    p = np.zeros(7, dtype=dtype)
    p[:len(constants)], p[6] = constants, surrogate.scale
    return kind, p


@lru_cache(maxsize=None)
def unavailable(name: str) -> str | None:
    """Why backend ``name`` cannot run on this install, or None."""
    if name in MODULES:
        try:
            importlib.import_module(MODULES[name])  # compiles nothing until first use
        except ImportError as err:
            extra = "pip install 'snnrun[kernels]'" if name == "numba" else "Triton comes with PyPI's CUDA torch"
            return f"{name} does not import here ({err}); {extra}"
    return None


def flat(x: torch.Tensor) -> torch.Tensor:
    """A kernel's input as [T, M] in row-major order (a copy where it is not contiguous: expanded, channels-last)."""
    return x.detach().contiguous().reshape(x.shape[0], -1)


def per_element(param: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A parameter (() or the neurons' shape) expanded to one value per element of ``like`` [B, *shape], as [M]."""
    return param.detach().to(like.dtype).expand_as(like).contiguous().reshape(-1)


def kernels(name: str):
    """The module of backend ``name``'s kernels: ``run_lif_forward`` and the rest, the same for each."""
    return importlib.import_module(MODULES[name])


def interpreted() -> bool:
    """Triton's interpreter runs the kernels on CPU tensors (the tests, where no GPU is present)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def runs_on(name: str, device: torch.device) -> bool:
    return device.type == ("cuda" if name == "triton" and not interpreted() else "cpu")


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
    return type(surrogate) in SURROGATES


def numba_runs(backend: str, dtype: torch.dtype) -> bool:
    """Whether ``backend`` takes the numba kernels for a ``dtype`` tensor on a CPU, the surrogate and the
    recurrence aside: ``numba`` in float32 or float64, ``auto`` in float32 where numba imports."""
    if backend == "numba":
        return dtype in KERNEL_DTYPES
    return backend == "auto" and dtype == torch.float32 and unavailable("numba") is None


def choose(backend: str, current: torch.Tensor, surrogate, one_to_one: bool = True) -> str:
    """The backend that runs this call (torch for an empty sequence, T = 0: there is no loop to run)."""
    if current.shape[0] == 0:
        return "torch"
    if backend == "auto":
        if not (current.dtype == torch.float32 and one_to_one and kernel_knows(surrogate)):
            return "torch"
        if current.dim() > 3 and not current.is_contiguous():
            return "torch"  # a conv layer's channels-last current: a kernel would copy it, and its gradients
        if current.is_cuda:
            return "triton" if unavailable("triton") is None else "torch"
        return "numba" if current.device.type == "cpu" and numba_runs("auto", current.dtype) else "torch"
    if backend != "torch" and (not runs_on(backend, current.device) or current.dtype not in KERNEL_DTYPES):
        where = "a GPU" if backend == "triton" else "a CPU"
        raise RuntimeError(f"neuron.backend={backend} runs float32 or float64 on {where}, not {current.dtype} on "
                           f"{current.device}: use neuron.backend=auto")
    return backend


def used(model: torch.nn.Module) -> list[str]:
    """The backends the layers of ``model`` ran on in their last call, sorted."""
    return sorted({m.last_backend for m in model.modules() if getattr(m, "last_backend", None)})
