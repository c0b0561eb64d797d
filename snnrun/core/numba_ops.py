"""The fused neuron ops as numba kernels on the CPU: one kernel per layer per sequence, each way.

The tensors are time-first and contiguous, [T, M] with M = batch x neurons. Each kernel gives a
block of ``BLOCK`` neighbouring neurons its whole time loop (forward: t = 0..T-1, backward:
t = T-1..0): the block's rows are contiguous in memory and stay in cache from one step to the
next, and the blocks run in parallel. The equations, option for option, are those of
``neurons._LIFSequence``, ``neurons._LeakyIntegral`` and ``recurrent._RecurrentSequence``
(one-to-one or no recurrence); the tests hold each kernel to the torch op. Parameters (beta,
theta, v) come expanded to [M]; their gradients come back per element, [M], and are summed over
the batch by the caller. The surrogate derivative is computed inside the kernel (``SURROGATES``).
Compiled on first use for each dtype and cached on disk (numba's ``cache=True``).
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch
from numba import njit, prange

from . import surrogates as sg

BLOCK = 512  # neurons per block: 2 KiB (float32) per row of the block's state
SUBTRACT, ZERO, NONE = 0, 1, 2
RESET_CODES = {"subtract": SUBTRACT, "zero": ZERO, "none": NONE}

# surrogate -> (kind, its parameters); the kernel's derivative is scale * shape(x) (surrogates.py)
SURROGATES = {
    sg.ATan: lambda s: (0, (s.alpha, 0.0, 0.0)),
    sg.FastSigmoid: lambda s: (1, (s.slope, 0.0, 0.0)),
    sg.Sigmoid: lambda s: (2, (s.slope, 0.0, 0.0)),
    sg.Triangular: lambda s: (3, (s.width, 0.0, 0.0)),
    sg.MultiGaussian: lambda s: (4, (s.sigma, s.s, s.h)),
    sg.StraightThrough: lambda s: (5, (0.0, 0.0, 0.0)),
    sg.Heaviside: lambda s: (6, (0.0, 0.0, 0.0)),
}


def surrogate_code(surrogate) -> tuple[int, np.ndarray] | None:
    """(kind, [p0, p1, p2, scale]) for a surrogate the kernels compute, else None."""
    code = SURROGATES.get(type(surrogate))
    if code is None:
        return None
    kind, params = code(surrogate)
    return kind, np.array([*params, surrogate.scale], dtype=np.float64)


@njit(inline="always", cache=True)
def _normal(x, mean, std):
    return math.exp(-((x - mean) ** 2) / (2 * std * std)) / (std * math.sqrt(2 * math.pi))


@njit(cache=True)
def derivative(kind, p, x):
    """scale * the surrogate's dS/dx at x (formulas in surrogates.py)."""
    if kind == 0:
        d = (p[0] / 2) / (1 + (math.pi / 2 * p[0] * x) ** 2)
    elif kind == 1:
        d = 1 / (p[0] * abs(x) + 1) ** 2
    elif kind == 2:
        s = 1 / (1 + math.exp(-p[0] * x))
        d = p[0] * s * (1 - s)
    elif kind == 3:
        d = max(0.0, 1 - abs(x) / p[0]) / p[0]
    elif kind == 4:
        wide = p[1] * p[0]
        d = (1 + p[2]) * _normal(x, 0.0, p[0]) - p[2] * (_normal(x, p[0], wide) + _normal(x, -p[0], wide))
    elif kind == 5:
        d = 1.0
    else:
        d = 0.0
    return d * p[3]


@njit(cache=True)
def _truncated(t, tbptt):
    return tbptt > 0 and t > 0 and t % tbptt == 0


@njit(parallel=True, cache=True)
def lif_forward(cur, beta, thr, reset, rectify, mem, spk):
    steps, m = cur.shape
    for b in prange((m + BLOCK - 1) // BLOCK):
        for t in range(steps):
            for j in range(b * BLOCK, min(m, (b + 1) * BLOCK)):
                if t == 0:
                    u = cur[0, j]
                else:
                    u = mem[t - 1, j] * beta[j]
                    if reset == ZERO:
                        u = u - u * spk[t - 1, j]
                    u = u + cur[t, j]
                    if reset == SUBTRACT:
                        u = u - spk[t - 1, j] * thr[j]
                if rectify and u < 0:
                    u = u - u  # +0 in the array's dtype: arithmetic stays in float32 for float32 arrays
                mem[t, j] = u
                spk[t, j] = 1.0 if u > thr[j] else 0.0


@njit(parallel=True, cache=True)
def lif_backward(mem, grad_spk, grad_mem, beta, thr, kind, p, reset, reset_path, tbptt, grad_in, acc_beta, acc_th):
    """a[t] = sigma'(U[t]-theta)*dL/dS[t] + dL/dU[t] + K[t]*a[t+1]; acc_* per element (see _LIFSequence)."""
    steps, m = mem.shape
    has_gs, has_gm = grad_spk.shape[0] > 0, grad_mem.shape[0] > 0
    need_beta, need_th = acc_beta.shape[0] > 0, acc_th.shape[0] > 0
    for b in prange((m + BLOCK - 1) // BLOCK):
        for t in range(steps - 1, -1, -1):
            linked = t < steps - 1 and not _truncated(t + 1, tbptt)
            for j in range(b * BLOCK, min(m, (b + 1) * BLOCK)):
                u, th = mem[t, j], thr[j]
                gs = grad_spk[t, j] if has_gs else 0.0
                nx = grad_in[t + 1, j] if linked else 0.0
                if linked and reset_path:
                    gs = gs - (nx * th if reset == SUBTRACT else nx * u * beta[j])
                a = derivative(kind, p, u - th) * gs
                if need_th:
                    acc_th[j] -= a
                if has_gm:
                    a += grad_mem[t, j]
                if linked and not (reset == ZERO and u > th):
                    a += nx * beta[j]
                if t > 0:
                    prev = mem[t - 1, j]
                    if need_beta and not (reset == ZERO and prev > th):
                        acc_beta[j] += a * prev
                    if need_th and reset == SUBTRACT and prev > th:
                        acc_th[j] -= a
                grad_in[t, j] = a


@njit(parallel=True, cache=True)
def leaky_forward(cur, alpha, out):
    steps, m = cur.shape
    for b in prange((m + BLOCK - 1) // BLOCK):
        for j in range(b * BLOCK, min(m, (b + 1) * BLOCK)):
            out[0, j] = cur[0, j]
        for t in range(1, steps):
            for j in range(b * BLOCK, min(m, (b + 1) * BLOCK)):
                out[t, j] = cur[t, j] + out[t - 1, j] * alpha


@njit(parallel=True, cache=True)
def leaky_backward(grad, alpha, tbptt, out):
    steps, m = grad.shape
    for b in prange((m + BLOCK - 1) // BLOCK):
        for j in range(b * BLOCK, min(m, (b + 1) * BLOCK)):
            out[steps - 1, j] = grad[steps - 1, j]
        for t in range(steps - 2, -1, -1):
            linked = not _truncated(t + 1, tbptt)
            for j in range(b * BLOCK, min(m, (b + 1) * BLOCK)):
                out[t, j] = grad[t, j] + out[t + 1, j] * alpha if linked else grad[t, j]


@njit(parallel=True, cache=True)
def recurrent_forward(cur, beta, th0, weight, reset, rectify, rho, rho_c, jump, mem, spk, thr):
    """rlif/alif with one-to-one (``weight`` [M]) or no recurrence (``weight`` empty); ``thr`` [T, M] for alif.
    ``rho``, ``rho_c`` = 1 - rho and ``jump`` come in the arrays' dtype, as torch computes them."""
    steps, m = cur.shape
    one_to_one, adaptive = weight.shape[0] > 0, jump != 0
    for b in prange((m + BLOCK - 1) // BLOCK):
        lo, hi = b * BLOCK, min(m, (b + 1) * BLOCK)
        adapt = np.zeros(hi - lo, dtype=cur.dtype)
        for t in range(steps):
            for j in range(lo, hi):
                if t == 0:
                    u = cur[0, j]
                else:
                    s = spk[t - 1, j]
                    u = mem[t - 1, j] * beta[j]
                    if reset == ZERO:
                        u = u - u * s
                    u = u + cur[t, j]
                    if one_to_one:
                        u = u + s * weight[j]
                    if reset == SUBTRACT:
                        u = u - s * (thr[t - 1, j] if adaptive else th0[j])
                if rectify and u < 0:
                    u = u - u
                theta = th0[j]
                if adaptive:
                    if t > 0:
                        adapt[j - lo] = adapt[j - lo] * rho + rho_c * spk[t - 1, j]
                    theta = th0[j] + jump * adapt[j - lo]
                    thr[t, j] = theta
                mem[t, j] = u
                spk[t, j] = 1.0 if u > theta else 0.0


@njit(parallel=True, cache=True)
def recurrent_backward(mem, thr, grad_spk, grad_mem, beta, th0, weight, kind, p, reset, detach_reset, rho, jump,
                       tbptt, grad_in, acc_beta, acc_th, acc_w):
    """The adjoints g[t] = dL/dU[t] and e[t] = dL/da[t] of _RecurrentSequence, by blocks of neurons."""
    steps, m = mem.shape
    has_gs, has_gm = grad_spk.shape[0] > 0, grad_mem.shape[0] > 0
    need_beta, need_th, need_w = acc_beta.shape[0] > 0, acc_th.shape[0] > 0, acc_w.shape[0] > 0
    one_to_one, adaptive = weight.shape[0] > 0, jump != 0
    for b in prange((m + BLOCK - 1) // BLOCK):
        lo, hi = b * BLOCK, min(m, (b + 1) * BLOCK)
        e_next = np.zeros(hi - lo, dtype=mem.dtype)
        for t in range(steps - 1, -1, -1):
            has_next = t < steps - 1
            linked = has_next and not _truncated(t + 1, tbptt)
            for j in range(lo, hi):
                u = mem[t, j]
                theta = thr[t, j] if adaptive else th0[j]
                spiked = u > theta
                nx = grad_in[t + 1, j] if has_next else 0.0
                gs = grad_spk[t, j] if has_gs else 0.0
                if linked:
                    if one_to_one:
                        gs += nx * weight[j]
                    if adaptive:
                        gs += (1 - rho) * e_next[j - lo]
                    if not detach_reset and reset == SUBTRACT:
                        gs -= nx * theta
                    elif not detach_reset and reset == ZERO:
                        gs -= nx * u * beta[j]
                g = derivative(kind, p, u - theta) * gs
                g_theta = -g
                if has_next and reset == SUBTRACT and spiked:
                    g_theta -= nx
                if need_th:
                    acc_th[j] += g_theta
                if has_next and not linked and reset == SUBTRACT:
                    g_theta = -g  # a[t] is detached where step t+1 starts a chunk; theta0 is not
                if has_gm:
                    g += grad_mem[t, j]
                if has_next:
                    kept = not (reset == ZERO and spiked)
                    if need_beta and kept:
                        acc_beta[j] += nx * u
                    if need_w and spiked:
                        acc_w[j] += nx
                    if linked and kept:
                        g += nx * beta[j]
                if adaptive:
                    e = g_theta * jump
                    e_next[j - lo] = e + rho * e_next[j - lo] if linked else e
                grad_in[t, j] = g


# -- the bridge from torch ----------------------------------------------------------------------

def _threads() -> None:
    """As many numba threads as torch uses (``trainer.num_threads``), within numba's pool."""
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))


def _flat(x: torch.Tensor) -> np.ndarray:
    """An input as [T, M] in row-major order (a copy where it is not contiguous: expanded, channels-last)."""
    return x.detach().contiguous().reshape(x.shape[0], -1).numpy()


def _empty(like: torch.Tensor) -> torch.Tensor:
    """An output in row-major order whatever the layout of ``like`` (empty_like would keep channels-last)."""
    return torch.empty(like.shape, dtype=like.dtype)


def _target(x: torch.Tensor) -> np.ndarray:
    """An output's memory as [T, M]: a view, never a copy, so the kernel writes into the tensor itself."""
    return x.view(x.shape[0], -1).numpy()


def _per_element(param: torch.Tensor, like: torch.Tensor) -> np.ndarray:
    """A parameter (() or the neurons' shape) expanded to one value per element of ``like`` [B, *shape]."""
    return param.detach().to(like.dtype).expand_as(like).contiguous().reshape(-1).numpy()


def _optional(grad: torch.Tensor | None, dtype) -> np.ndarray:
    return _flat(grad) if grad is not None else np.empty((0, 0), dtype=dtype)


def _accumulator(needed: bool, m: int, dtype) -> np.ndarray:
    return np.zeros(m if needed else 0, dtype=dtype)


def run_lif_forward(current, beta, threshold, reset, rectify):
    _threads()
    mem, spk = _empty(current), _empty(current)
    lif_forward(_flat(current), _per_element(beta, current[0]), _per_element(threshold, current[0]),
                RESET_CODES[reset], rectify, _target(mem), _target(spk))
    return spk, mem


def run_lif_backward(mem, grad_spk, grad_mem, beta, threshold, surrogate, reset, reset_path, tbptt, need_beta, need_th):
    """(dL/dI [T, *], dL/dbeta per element [B, *] or None, dL/dtheta per element or None)."""
    _threads()
    kind, p = surrogate_code(surrogate)
    dtype, m = _flat(mem).dtype, mem[0].numel()
    grad_in = _empty(mem)
    acc_beta, acc_th = _accumulator(need_beta, m, dtype), _accumulator(need_th, m, dtype)
    lif_backward(_flat(mem), _optional(grad_spk, dtype), _optional(grad_mem, dtype), _per_element(beta, mem[0]),
                 _per_element(threshold, mem[0]), kind, p, RESET_CODES[reset], reset_path, tbptt, _target(grad_in),
                 acc_beta, acc_th)
    shape = mem[0].shape
    return (grad_in, torch.from_numpy(acc_beta).reshape(shape) if need_beta else None,
            torch.from_numpy(acc_th).reshape(shape) if need_th else None)


def run_leaky_forward(current, alpha):
    _threads()
    out = _empty(current)
    x = _flat(current)
    leaky_forward(x, x.dtype.type(alpha), _target(out))  # alpha in the tensor's dtype, as torch multiplies
    return out


def run_leaky_backward(grad, alpha, tbptt):
    _threads()
    out = _empty(grad)
    leaky_backward(_flat(grad), alpha, tbptt, _target(out))
    return out


def run_recurrent_forward(current, beta, threshold, weight, reset, rectify, rho, jump):
    """(S, U, theta[t] or None) of rlif/alif with one-to-one (``weight`` [n]) or no recurrence (None)."""
    _threads()
    mem, spk = _empty(current), _empty(current)
    thr = _empty(current) if jump != 0 else None
    w = _per_element(weight, current[0]) if weight is not None else np.empty(0, dtype=_flat(current).dtype)
    recurrent_forward(_flat(current), _per_element(beta, current[0]), _per_element(threshold, current[0]), w,
                      RESET_CODES[reset], rectify, *(w.dtype.type(v) for v in (rho, 1 - rho, jump)), _target(mem),
                      _target(spk), _target(thr) if thr is not None else np.empty((0, 0), dtype=w.dtype))
    return spk, mem, thr


def run_recurrent_backward(mem, thr, grad_spk, grad_mem, beta, threshold, weight, surrogate, reset, detach_reset,
                           rho, jump, tbptt, need_beta, need_th, need_w):
    """(dL/dI, and per element [B, *]: dL/dbeta, dL/dtheta0, dL/dv, each None where not needed)."""
    _threads()
    kind, p = surrogate_code(surrogate)
    dtype, m, shape = _flat(mem).dtype, mem[0].numel(), mem[0].shape
    grad_in = _empty(mem)
    accs = [_accumulator(need, m, dtype) for need in (need_beta, need_th, need_w)]
    w = _per_element(weight, mem[0]) if weight is not None else np.empty(0, dtype=dtype)
    recurrent_backward(_flat(mem), _flat(thr) if thr is not None else np.empty((0, 0), dtype=dtype),
                       _optional(grad_spk, dtype), _optional(grad_mem, dtype), _per_element(beta, mem[0]),
                       _per_element(threshold, mem[0]), w, kind, p, RESET_CODES[reset], detach_reset, rho, jump,
                       tbptt, _target(grad_in), *accs)
    return (grad_in, *(torch.from_numpy(a).reshape(shape) if need else None
                       for a, need in zip(accs, (need_beta, need_th, need_w))))
