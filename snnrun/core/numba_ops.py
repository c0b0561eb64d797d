"""The fused neuron ops as numba kernels on the CPU: one kernel per layer per sequence, each way.

The tensors are time-first and contiguous, [T, M] with M = batch x neurons. Each kernel gives a
block of neighbouring neurons (``block_size``) its whole time loop (forward: t = 0..T-1, backward:
t = T-1..0) with the block's state in small arrays that stay in cache, and the blocks run in
parallel. The equations, option for option, are those of ``sequences.LIFSequence``,
``sequences.LeakyIntegral`` and ``recurrent._RecurrentSequence`` (one-to-one or no recurrence);
the tests hold each kernel to the torch op. Parameters (beta, theta, v) come expanded to [M]; their
gradients come back per element, [M], and are summed over the batch by the caller. The surrogate
derivative is computed inside the kernel (``backends.SURROGATES``). The options that decide the
inner loop's shape are compiled in (``lru_cache``d factories); every kernel is compiled on first
use for each dtype and cached on disk (numba's ``cache=True``).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numba
import numpy as np
import torch
from numba import njit, prange

from .backends import RESET_CODES, flat, per_element, surrogate_code

MIN_BLOCK, MAX_BLOCK = 512, 8192  # neurons per block (block_size)
CHECKPOINT = 8  # alif: the forward pass keeps a[t] every this many steps, not theta[t] at every step
SUBTRACT, ZERO, NONE = (RESET_CODES[r] for r in ("subtract", "zero", "none"))

ONE, NOUGHT = np.float32(1.0), np.float32(0.0)  # exact in float32 and float64: arithmetic keeps the arrays' dtype


@njit(inline="always", cache=True)
def derivative(kind, p0, p1, p2, p3, p4, p5, x):
    """The surrogate's dS/dx at x, before its scale; ``kind`` is a compile-time constant in each kernel."""
    if kind == 0:  # atan: (alpha/2) / (1 + (pi/2 * alpha * x)^2)
        y = p1 * x
        return p0 / (ONE + y * y)
    if kind == 1:  # fast sigmoid: 1 / (slope*|x| + 1)^2
        y = p0 * abs(x) + ONE
        return ONE / (y * y)
    if kind == 2:  # sigmoid: slope * s * (1 - s), s = 1 / (1 + exp(-slope*x))
        y = ONE / (ONE + math.exp(-p0 * x))
        return p0 * y * (ONE - y)
    if kind == 3:  # triangle: max(0, 1 - |x|/w) / w
        return max(NOUGHT, ONE - abs(x) / p0) / p0
    if kind == 4:  # multi-Gaussian: (1+h) N(x; 0, sigma) - h N(x; sigma, s*sigma) - h N(x; -sigma, s*sigma)
        return ((ONE + p1) * math.exp(-(x * x) / p2) / p4
                - p1 * (math.exp(-((x - p0) * (x - p0)) / p3) / p5 + math.exp(-((x + p0) * (x + p0)) / p3) / p5))
    if kind == 5:  # straight through
        return ONE
    return NOUGHT  # Heaviside: no gradient


@njit(cache=True)
def _truncated(t, tbptt):
    return tbptt > 0 and t > 0 and t % tbptt == 0


@lru_cache(maxsize=None)
def lif_forward(reset: int, rectify: bool):
    """The lif forward kernel with its reset rule and rectifier compiled in."""

    @njit(parallel=True, cache=True)
    def kernel(cur, beta, thr, mem, spk, block):
        """Each block's U and S live in two small arrays from step to step; rows of mem and spk are written
        only. U and S start at 0, so step 0 gives U = I exactly, as the torch op's copy does."""
        steps, m = cur.shape
        for b in prange((m + block - 1) // block):
            lo = b * block
            n = min(m, lo + block) - lo
            u, s = np.zeros(n, dtype=cur.dtype), np.zeros(n, dtype=cur.dtype)
            be, th = beta[lo:lo + n], thr[lo:lo + n]
            for t in range(steps):
                c, mo, so = cur[t, lo:lo + n], mem[t, lo:lo + n], spk[t, lo:lo + n]
                for k in range(n):
                    x = u[k] * be[k]
                    if reset == ZERO:
                        x = x - x * s[k]
                    x = x + c[k]
                    if reset == SUBTRACT:
                        x = x - s[k] * th[k]
                    if rectify:
                        x = NOUGHT if x < NOUGHT else x  # torch's clamp(min=0): -inf to 0, NaN kept
                    y = ONE if x > th[k] else NOUGHT
                    u[k], s[k], mo[k], so[k] = x, y, x, y

    return kernel


@lru_cache(maxsize=None)
def lif_backward(kind: int, reset: int, reset_path: bool, need_beta: bool, need_th: bool, has_gs: bool,
                 has_gm: bool):
    """The lif backward kernel with the surrogate, the reset and the gradients wanted compiled in: as
    runtime flags they kept the inner loop from vectorising (measured 3x slower). ``has_gs``, ``has_gm``:
    whether dL/dS and dL/dU come from above (else their argument is one row, unread)."""

    @njit(parallel=True, cache=True)
    def kernel(mem, grad_spk, grad_mem, beta, thr, p, tbptt, grad_in, acc_beta, acc_th, block):
        """a[t] = sigma'(U[t]-theta)*dL/dS[t] + dL/dU[t] + K[t]*a[t+1] (see sequences.LIFSequence); ``grad_spk``
        and ``grad_mem`` are [T, M], or one row where there is none; acc_* per element, or empty."""
        steps, m = mem.shape
        p0, p1, p2, p3, p4, p5, scale = p[0], p[1], p[2], p[3], p[4], p[5], p[6]
        for b in prange((m + block - 1) // block):
            lo = b * block
            n = min(m, lo + block) - lo
            nxt = np.zeros(n, dtype=mem.dtype)  # a[t+1]
            be, th, ab, at = beta[lo:lo + n], thr[lo:lo + n], acc_beta[lo:lo + n], acc_th[lo:lo + n]
            for t in range(steps - 1, -1, -1):
                linked = t < steps - 1 and not _truncated(t + 1, tbptt)
                uu, out = mem[t, lo:lo + n], grad_in[t, lo:lo + n]
                prev = mem[max(t - 1, 0), lo:lo + n]
                gs_row = grad_spk[t if has_gs else 0, lo:lo + n]
                gm_row = grad_mem[t if has_gm else 0, lo:lo + n]
                for k in range(n):
                    u, thk = uu[k], th[k]
                    nx = nxt[k] if linked else NOUGHT
                    gs = gs_row[k] if has_gs else NOUGHT
                    if reset_path:
                        gs = gs - (nx * thk if reset == SUBTRACT else nx * u * be[k])
                    a = scale * derivative(kind, p0, p1, p2, p3, p4, p5, u - thk) * gs
                    if need_th:
                        at[k] -= a
                    if has_gm:
                        a = a + gm_row[k]
                    if reset == ZERO:
                        a = a + (NOUGHT if u > thk else nx * be[k])
                    else:
                        a = a + nx * be[k]
                    if t > 0:
                        if need_beta:
                            ab[k] += NOUGHT if (reset == ZERO and prev[k] > thk) else a * prev[k]
                        if need_th and reset == SUBTRACT:
                            at[k] -= a if prev[k] > thk else NOUGHT
                    nxt[k], out[k] = a, a

    return kernel


@njit(parallel=True, cache=True)
def leaky_forward(cur, alpha, out, block):
    steps, m = cur.shape
    for b in prange((m + block - 1) // block):
        lo = b * block
        n = min(m, lo + block) - lo
        j = np.zeros(n, dtype=cur.dtype)
        for t in range(steps):
            c, o = cur[t, lo:lo + n], out[t, lo:lo + n]
            for k in range(n):
                x = c[k] + j[k] * alpha
                j[k], o[k] = x, x


@njit(parallel=True, cache=True)
def leaky_backward(grad, alpha, tbptt, out, block):
    steps, m = grad.shape
    for b in prange((m + block - 1) // block):
        lo = b * block
        n = min(m, lo + block) - lo
        nxt = np.zeros(n, dtype=grad.dtype)
        for t in range(steps - 1, -1, -1):
            linked = t < steps - 1 and not _truncated(t + 1, tbptt)
            g, o = grad[t, lo:lo + n], out[t, lo:lo + n]
            for k in range(n):
                x = g[k] + nxt[k] * alpha if linked else g[k]
                nxt[k], o[k] = x, x


@lru_cache(maxsize=None)
def recurrent_forward(adaptive: bool, reset: int, rectify: bool, one_to_one: bool, projected: bool):
    """The rlif/alif forward kernel with its options compiled in (``adaptive`` as a runtime flag: 2x slower).
    ``projected``: the current is I = x w_in + c_in from one input x per sample and step, computed in the kernel."""

    @njit(parallel=True, cache=True)
    def kernel(cur, beta, th0, weight, w_in, c_in, rows, rho, rho_c, jump, mem, spk, adapt_at, block):
        """One-to-one (``weight`` [M]) or no recurrence (``weight`` empty); ``adapt_at`` [ceil(T/C), M] gets the
        adaptation a[t] at every CHECKPOINT-th step (alif), from which the backward pass recomputes theta[t].
        ``rho``, ``rho_c`` = 1 - rho and ``jump`` come in the arrays' dtype, as torch computes them. A block's state
        is U and a; S[t-1] and theta[t-1] are recomputed from them with the same arithmetic (bit for bit), which
        stores two arrays fewer per step. Projected: ``cur`` is x [T, B], ``rows`` [M] each element's sample and
        ``w_in``, ``c_in`` [M] (else all three empty); I = c_in + x w_in as the linear layer computes it."""
        steps, m = mem.shape
        for b in prange((m + block - 1) // block):
            lo = b * block
            n = min(m, lo + block) - lo
            u, adapt = np.zeros(n, dtype=mem.dtype), np.zeros(n, dtype=mem.dtype)
            be, th, w = beta[lo:lo + n], th0[lo:lo + n], weight[lo:lo + n]
            wi, ci, r = w_in[lo:lo + n], c_in[lo:lo + n], rows[lo:lo + n]
            c = np.empty(n if projected else 0, dtype=mem.dtype)  # projected: the block's current of step t
            for t in range(steps):
                if projected:
                    xt = cur[t]
                    for k in range(n):  # a gather loop of its own: in the loop below it kept it from vectorising
                        c[k] = ci[k] + xt[r[k]] * wi[k]
                else:
                    c = cur[t, lo:lo + n]
                mo, so = mem[t, lo:lo + n], spk[t, lo:lo + n]
                for k in range(n):
                    a = adapt[k]
                    theta_prev = th[k] + jump * a if adaptive else th[k]  # theta[t-1], as step t-1 computed it
                    x = u[k]
                    sp = ONE if (x > theta_prev and t > 0) else NOUGHT  # S[t-1], recomputed: two arrays fewer to store
                    x = x * be[k]
                    if reset == ZERO:
                        x = x - x * sp
                    x = x + c[k]
                    if one_to_one:
                        x = x + sp * w[k]
                    if reset == SUBTRACT:
                        x = x - sp * theta_prev
                    if rectify:
                        x = NOUGHT if x < NOUGHT else x
                    theta = th[k]
                    if adaptive:
                        a = a * rho + rho_c * sp
                        adapt[k] = a
                        theta = th[k] + jump * a
                    y = ONE if x > theta else NOUGHT
                    u[k], mo[k], so[k] = x, x, y
                if adaptive and t % CHECKPOINT == 0:
                    adapt_at[t // CHECKPOINT, lo:lo + n] = adapt

    return kernel


@lru_cache(maxsize=None)
def recurrent_backward(kind: int, adaptive: bool, reset: int, detach_reset: bool, one_to_one: bool,
                       need_beta: bool, need_th: bool, need_w: bool, has_gs: bool, has_gm: bool, projected: bool):
    """The rlif/alif backward kernel with the surrogate ``kind``, the options and the gradients wanted compiled in
    (a runtime branch on the kind in the inner loop kept it from vectorising: measured 8x slower; the options as
    runtime flags: 1.5x, in the pixel-wise network); each combination is compiled on first use and cached on disk.
    ``has_gs``, ``has_gm``: whether dL/dS and dL/dU come from above (else their argument is one row, unread).
    ``projected``: dL/dI goes straight into the projection's gradients (dL/dw_in += g x, dL/dc_in += g), unstored."""

    @njit(parallel=True, cache=True)
    def kernel(mem, adapt_at, grad_spk, grad_mem, beta, th0, weight, p, rho, rho_c, jump, tbptt, grad_in, acc_beta,
               acc_th, acc_w, x_in, rows, acc_win, acc_cin, block):
        """The adjoints g[t] = dL/dU[t] and e[t] = dL/da[t] of recurrent._RecurrentSequence, by blocks, in chunks
        of CHECKPOINT steps: a chunk first recomputes its a[t] (alif) from the forward pass's checkpoint and its
        U (S[t-1] = U[t-1] > theta[t-1]), with the forward pass's arithmetic, so theta[t] is the same to the bit.
        Projected: ``x_in`` [T, B] and ``rows`` as in the forward kernel, ``grad_in`` one row, unwritten."""
        steps, m = mem.shape
        p0, p1, p2, p3, p4, p5, scale = p[0], p[1], p[2], p[3], p[4], p[5], p[6]
        for b in prange((m + block - 1) // block):
            lo = b * block
            n = min(m, lo + block) - lo
            nxt, e_next = np.zeros(n, dtype=mem.dtype), np.zeros(n, dtype=mem.dtype)  # g[t+1], e[t+1]
            adapt = np.zeros((CHECKPOINT if adaptive else 1, n), dtype=mem.dtype)  # a[t0..t1) of the chunk
            be, th, w = beta[lo:lo + n], th0[lo:lo + n], weight[lo:lo + n]
            ab, at, aw = acc_beta[lo:lo + n], acc_th[lo:lo + n], acc_w[lo:lo + n]
            awi, aci, r = acc_win[lo:lo + n], acc_cin[lo:lo + n], rows[lo:lo + n]
            for chunk in range((steps - 1) // CHECKPOINT, -1, -1):
                t0 = chunk * CHECKPOINT
                t1 = min(steps, t0 + CHECKPOINT)
                if adaptive:
                    adapt[0] = adapt_at[chunk, lo:lo + n]
                    for t in range(t0 + 1, t1):
                        before, a_prev, a_now = mem[t - 1, lo:lo + n], adapt[t - 1 - t0], adapt[t - t0]
                        for k in range(n):
                            sp = ONE if before[k] > th[k] + jump * a_prev[k] else NOUGHT
                            a_now[k] = a_prev[k] * rho + rho_c * sp
                for t in range(t1 - 1, t0 - 1, -1):
                    has_next = t < steps - 1
                    linked = has_next and not _truncated(t + 1, tbptt)
                    uu, a_t = mem[t, lo:lo + n], adapt[t - t0 if adaptive else 0]
                    out = grad_in[0 if projected else t, lo:lo + n]  # projected: one row, the block's g[t]
                    gs_row = grad_spk[t if has_gs else 0, lo:lo + n]
                    gm_row = grad_mem[t if has_gm else 0, lo:lo + n]
                    for k in range(n):
                        u = uu[k]
                        theta = th[k] + jump * a_t[k] if adaptive else th[k]
                        spiked = u > theta
                        nx = nxt[k] if has_next else NOUGHT
                        gs = gs_row[k] if has_gs else NOUGHT
                        if linked:
                            if one_to_one:
                                gs = gs + nx * w[k]
                            if adaptive:
                                gs = gs + rho_c * e_next[k]
                            if not detach_reset and reset == SUBTRACT:
                                gs = gs - nx * theta
                            elif not detach_reset and reset == ZERO:
                                gs = gs - nx * u * be[k]
                        g = scale * derivative(kind, p0, p1, p2, p3, p4, p5, u - theta) * gs
                        g_theta = -g
                        if has_next and reset == SUBTRACT and spiked:
                            g_theta = g_theta - nx
                        if need_th:
                            at[k] += g_theta
                        if has_next and not linked and reset == SUBTRACT:
                            g_theta = -g  # a[t] is detached where step t+1 starts a chunk; theta0 is not
                        if has_gm:
                            g = g + gm_row[k]
                        if has_next:
                            kept = not (reset == ZERO and spiked)
                            if need_beta and kept:
                                ab[k] += nx * u
                            if need_w and spiked:
                                aw[k] += nx
                            if linked and kept:
                                g = g + nx * be[k]
                        if adaptive:
                            e = g_theta * jump
                            e_next[k] = e + rho * e_next[k] if linked else e
                        nxt[k], out[k] = g, g
                    if projected:  # dL/dw_in += g x, dL/dc_in += g: a gather loop of its own, as in the forward
                        xt = x_in[t]
                        for k in range(n):
                            awi[k] += out[k] * xt[r[k]]
                            aci[k] += out[k]

    return kernel


# -- the bridge from torch ----------------------------------------------------------------------

def set_threads() -> None:
    """As many numba threads as torch uses (``trainer.num_threads``), within numba's pool. Numba's first call
    starts its OpenMP layer, which sets OpenMP's thread count (torch's too) to all cores: torch's is put back."""
    wanted = torch.get_num_threads()
    numba.get_num_threads()  # starts numba's threading layer, once
    if torch.get_num_threads() != wanted:
        torch.set_num_threads(wanted)
    numba.set_num_threads(max(1, min(wanted, numba.config.NUMBA_NUM_THREADS)))


def block_size(m: int) -> int:
    """Neurons per block for M per step: long rows (a block walks T rows M apart, so each row is one
    contiguous run for the prefetcher and one page for the TLB), yet a block for every thread. Measured on
    [100, 64*4096], one thread: blocks of 512 took 35.6 + 24.1 ms forward + backward, of 8192 19.2 + 18.7; an
    alif forward on [784, 64*128], two threads: 4.37 ms in blocks of 1024 (four per thread), 3.46 in 4096."""
    per_block = -(-m // numba.get_num_threads())
    return min(MAX_BLOCK, max(MIN_BLOCK, -(-per_block // 64) * 64))


def _flat(x: torch.Tensor) -> np.ndarray:
    return flat(x).numpy()


def _empty(like: torch.Tensor) -> torch.Tensor:
    """An output in row-major order whatever the layout of ``like`` (empty_like would keep channels-last)."""
    return torch.empty(like.shape, dtype=like.dtype)


def _target(x: torch.Tensor) -> np.ndarray:
    """An output's memory as [T, M]: a view, never a copy, so the kernel writes into the tensor itself."""
    return x.view(x.shape[0], -1).numpy()


def _per_element(param: torch.Tensor, like: torch.Tensor) -> np.ndarray:
    return per_element(param, like).numpy()


def _optional(grad: torch.Tensor | None, like: np.ndarray) -> np.ndarray:
    """A gradient as [T, M], or where there is none one row of zeros (the kernels compile its reads out then)."""
    return _flat(grad) if grad is not None else np.zeros((1, like.shape[1]), dtype=like.dtype)


def _accumulator(needed: bool, m: int, dtype) -> np.ndarray:
    return np.zeros(m if needed else 0, dtype=dtype)


def run_lif_forward(current, beta, threshold, reset, rectify):
    set_threads()
    mem, spk = _empty(current), _empty(current)
    lif_forward(RESET_CODES[reset], rectify)(_flat(current), _per_element(beta, current[0]),
                                             _per_element(threshold, current[0]), _target(mem), _target(spk),
                                             block_size(mem[0].numel()))
    return spk, mem


def run_lif_backward(mem, grad_spk, grad_mem, beta, threshold, surrogate, reset, reset_path, tbptt, need_beta, need_th):
    """(dL/dI [T, *], dL/dbeta per element [B, *] or None, dL/dtheta per element or None)."""
    set_threads()
    u = _flat(mem)
    kind, p = surrogate_code(surrogate, u.dtype)
    grad_in = _empty(mem)
    acc_beta, acc_th = _accumulator(need_beta, u.shape[1], u.dtype), _accumulator(need_th, u.shape[1], u.dtype)
    lif_backward(kind, RESET_CODES[reset], reset_path, need_beta, need_th, grad_spk is not None, grad_mem is not None)(
        u, _optional(grad_spk, u), _optional(grad_mem, u), _per_element(beta, mem[0]), _per_element(threshold, mem[0]),
        p, tbptt, _target(grad_in), acc_beta, acc_th, block_size(u.shape[1]))
    shape = mem[0].shape
    return (grad_in, torch.from_numpy(acc_beta).reshape(shape) if need_beta else None,
            torch.from_numpy(acc_th).reshape(shape) if need_th else None)


def run_leaky_forward(current, alpha):
    set_threads()
    out = _empty(current)
    x = _flat(current)
    leaky_forward(x, x.dtype.type(alpha), _target(out), block_size(x.shape[1]))  # alpha in the data's dtype
    return out


def run_leaky_backward(grad, alpha, tbptt):
    set_threads()
    out = _empty(grad)
    g = _flat(grad)
    leaky_backward(g, g.dtype.type(alpha), tbptt, _target(out), block_size(g.shape[1]))
    return out


def _rows(x: torch.Tensor, n: int) -> np.ndarray:
    """Each element's sample, [B * n], for a projected kernel (x [T, B]); empty otherwise."""
    return np.repeat(np.arange(x.shape[1], dtype=np.int64), n) if x is not None else np.empty(0, dtype=np.int64)


def run_recurrent_forward(current, beta, threshold, weight, reset, rectify, rho, jump, projection=None):
    """(S, U, the adaptation at every CHECKPOINT-th step or None) of rlif/alif with one-to-one (``weight`` [n])
    or no recurrence (None). ``projection`` = (w_in, c_in), each [n]: ``current`` is then one input per sample and
    step, x [T, B], and the layer's current I = c_in + x w_in, computed in the kernel."""
    set_threads()
    x = current if projection is not None else None
    shape = (*current.shape, projection[0].shape[0]) if x is not None else current.shape
    mem, spk = torch.empty(shape, dtype=current.dtype), torch.empty(shape, dtype=current.dtype)
    like = mem[0]
    adapt_at = torch.empty(-(-shape[0] // CHECKPOINT), *shape[1:], dtype=current.dtype) if jump != 0 else None
    none = np.empty(0, dtype=_flat(current).dtype)
    w = _per_element(weight, like) if weight is not None else none
    w_in, c_in = (_per_element(v, like) for v in projection) if x is not None else (none, none)
    recurrent_forward(jump != 0, RESET_CODES[reset], rectify, weight is not None, x is not None)(
        _flat(current), _per_element(beta, like), _per_element(threshold, like), w, w_in, c_in, _rows(x, shape[-1]),
        *(w.dtype.type(v) for v in (rho, 1 - rho, jump)), _target(mem), _target(spk),
        _target(adapt_at) if adapt_at is not None else np.empty((0, 0), dtype=w.dtype), block_size(like.numel()))
    return spk, mem, adapt_at


def run_recurrent_backward(mem, adapt_at, grad_spk, grad_mem, beta, threshold, weight, surrogate, reset, detach_reset,
                           rho, jump, tbptt, need_beta, need_th, need_w, x=None):
    """(dL/dI, and per element [B, *]: dL/dbeta, dL/dtheta0, dL/dv, each None where not needed). Projected (``x``
    the forward pass's [T, B] input): (None, ..., dL/dw_in, dL/dc_in per element) instead, dL/dI never stored."""
    set_threads()
    u = _flat(mem)
    kind, p = surrogate_code(surrogate, u.dtype)
    projected = x is not None
    grad_in = torch.empty(1, *mem.shape[1:], dtype=mem.dtype) if projected else _empty(mem)
    wanted = (need_beta, need_th, need_w) + (projected, projected)
    accs = [_accumulator(need, u.shape[1], u.dtype) for need in wanted]
    w = _per_element(weight, mem[0]) if weight is not None else np.empty(0, dtype=u.dtype)
    recurrent_backward(kind, jump != 0, RESET_CODES[reset], detach_reset, weight is not None, need_beta, need_th,
                       need_w, grad_spk is not None, grad_mem is not None, projected)(
        u, _flat(adapt_at) if adapt_at is not None else np.empty((0, 0), dtype=u.dtype), _optional(grad_spk, u),
        _optional(grad_mem, u), _per_element(beta, mem[0]), _per_element(threshold, mem[0]), w, p,
        *(u.dtype.type(v) for v in (rho, 1 - rho, jump)), tbptt, _target(grad_in), *accs[:3],
        _flat(x) if projected else np.zeros((1, 1), dtype=u.dtype), _rows(x, mem.shape[-1]), *accs[3:],
        block_size(u.shape[1]))
    shape = mem[0].shape
    return (None if projected else grad_in, *(torch.from_numpy(a).reshape(shape) if need else None
                                              for a, need in zip(accs, wanted)))
