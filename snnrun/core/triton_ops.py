"""The fused neuron ops as Triton kernels on the GPU: one kernel per layer per sequence, each way.

The same equations and the same bridge as ``snnrun.core.numba_ops`` (the tests hold both to the
torch op): the tensors are time-first and contiguous, [T, M]; each program takes a block of
``BLOCK`` neighbouring neurons through the whole time loop with their state in registers, and the
options (reset, rectifier, surrogate kind, recurrence, adaptation, which gradients are needed)
are compile-time constants. Parameters come expanded to [M]; their gradients come back per element
and are summed over the batch by the caller. ``TRITON_INTERPRET=1`` runs the kernels on CPU
tensors in Triton's interpreter (the tests do, where no GPU is present).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import triton
import triton.language as tl

from .backends import RESET_CODES, flat, per_element, surrogate_code

BLOCK = 128  # neurons per program; RESET codes: 0 subtract, 1 zero, 2 none (backends.RESET_CODES)


@triton.jit
def _derivative(KIND: tl.constexpr, p0, p1, p2, p3, p4, p5, x):
    """The surrogate's dS/dx before its scale (formulas in surrogates.py; constants as backends.SURROGATES)."""
    if KIND == 0:
        y = p1 * x
        d = p0 / (1.0 + y * y)
    elif KIND == 1:
        y = p0 * tl.abs(x) + 1.0
        d = 1.0 / (y * y)
    elif KIND == 2:
        y = 1.0 / (1.0 + tl.exp(-p0 * x))
        d = p0 * y * (1.0 - y)
    elif KIND == 3:
        d = tl.maximum(1.0 - tl.abs(x) / p0, 0.0) / p0
    elif KIND == 4:
        d = ((1.0 + p1) * tl.exp(-(x * x) / p2) / p4
             - p1 * (tl.exp(-((x - p0) * (x - p0)) / p3) / p5 + tl.exp(-((x + p0) * (x + p0)) / p3) / p5))
    elif KIND == 5:
        d = tl.zeros_like(x) + 1.0  # not x * 0.0: an infinite x would give NaN
    else:
        d = tl.zeros_like(x)
    return d


@triton.jit
def _block(m, BLOCK: tl.constexpr):
    """This program's neurons: their offsets in a row, the mask of those that exist, and M, all in 64 bits
    (rows are addressed as t * M + offset, which may pass 2^31). ``tl.cast``, not ``m.to``: Triton passes
    an integer argument equal to 1 as a compile-time constant, a plain int."""
    m64 = tl.cast(m, tl.int64)
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    return offs, offs < m64, m64


@triton.jit
def _surrogate_constants(consts):
    """The surrogate's constants p0..p5 and its scale, the first seven of ``consts``."""
    return (tl.load(consts + 0), tl.load(consts + 1), tl.load(consts + 2), tl.load(consts + 3), tl.load(consts + 4),
            tl.load(consts + 5), tl.load(consts + 6))


@triton.jit
def _linked(t, steps, tbptt):
    """Whether a[t+1] reaches step t's state: t+1 exists and does not start a chunk of truncated BPTT."""
    return (t < steps - 1) & ((tbptt == 0) | ((t + 1) % tl.maximum(tbptt, 1) != 0))


@triton.jit
def _lif_forward(cur, beta, thr, mem, spk, steps, m, RESET: tl.constexpr, RECTIFY: tl.constexpr,
                 BLOCK: tl.constexpr):
    offs, mask, m64 = _block(m, BLOCK)
    be = tl.load(beta + offs, mask=mask, other=0.0)
    th = tl.load(thr + offs, mask=mask, other=1.0)
    u = tl.zeros([BLOCK], dtype=be.dtype)
    s = tl.zeros([BLOCK], dtype=be.dtype)
    for t in range(0, steps):
        row = offs + t * m64
        x = u * be
        if RESET == 1:
            x = x - x * s
        x = x + tl.load(cur + row, mask=mask, other=0.0)
        if RESET == 0:
            x = x - s * th
        if RECTIFY:
            x = tl.where(x < 0.0, 0.0, x)  # torch's clamp(min=0): NaN kept
        y = (x > th).to(x.dtype)
        tl.store(mem + row, x, mask=mask)
        tl.store(spk + row, y, mask=mask)
        u = x
        s = y


@triton.jit
def _lif_backward(mem, grad_spk, grad_mem, beta, thr, grad_in, acc_beta, acc_th, consts, steps, m, tbptt,
                  RESET: tl.constexpr, RESET_PATH: tl.constexpr, KIND: tl.constexpr, HAS_GS: tl.constexpr,
                  HAS_GM: tl.constexpr, NEED_BETA: tl.constexpr, NEED_TH: tl.constexpr, BLOCK: tl.constexpr):
    offs, mask, m64 = _block(m, BLOCK)
    p0, p1, p2, p3, p4, p5, scale = _surrogate_constants(consts)
    be = tl.load(beta + offs, mask=mask, other=0.0)
    th = tl.load(thr + offs, mask=mask, other=1.0)
    nxt = tl.zeros([BLOCK], dtype=be.dtype)
    ab = tl.zeros([BLOCK], dtype=be.dtype)
    at = tl.zeros([BLOCK], dtype=be.dtype)
    for i in range(0, steps):
        t = steps - 1 - i
        row = offs + t * m64
        nx = tl.where(_linked(t, steps, tbptt), nxt, 0.0)
        u = tl.load(mem + row, mask=mask, other=0.0)
        gs = tl.zeros([BLOCK], dtype=be.dtype)
        if HAS_GS:
            gs = tl.load(grad_spk + row, mask=mask, other=0.0)
        if RESET_PATH:
            if RESET == 0:
                gs = gs - nx * th
            else:
                gs = gs - nx * u * be
        a = scale * _derivative(KIND, p0, p1, p2, p3, p4, p5, u - th) * gs
        if NEED_TH:
            at = at - a
        if HAS_GM:
            a = a + tl.load(grad_mem + row, mask=mask, other=0.0)
        if RESET == 1:
            a = a + tl.where(u > th, 0.0, nx * be)
        else:
            a = a + nx * be
        prev = tl.load(mem + row - m, mask=mask & (t > 0), other=0.0)  # U[t-1], 0 at t = 0
        if NEED_BETA:
            if RESET == 1:
                ab = ab + tl.where(prev > th, 0.0, a * prev)
            else:
                ab = ab + a * prev
        if NEED_TH:
            if RESET == 0:
                at = at - tl.where(prev > th, a, 0.0)
        tl.store(grad_in + row, a, mask=mask)
        nxt = a
    if NEED_BETA:
        tl.store(acc_beta + offs, ab, mask=mask)
    if NEED_TH:
        tl.store(acc_th + offs, at, mask=mask)


@triton.jit
def _leaky_forward(cur, out, consts, steps, m, BLOCK: tl.constexpr):
    offs, mask, m64 = _block(m, BLOCK)
    alpha = tl.load(consts)
    j = tl.zeros([BLOCK], dtype=tl.load(cur + offs, mask=mask, other=0.0).dtype)
    for t in range(0, steps):
        row = offs + t * m64
        j = tl.load(cur + row, mask=mask, other=0.0) + j * alpha
        tl.store(out + row, j, mask=mask)


@triton.jit
def _leaky_backward(grad, out, consts, steps, m, tbptt, BLOCK: tl.constexpr):
    offs, mask, m64 = _block(m, BLOCK)
    alpha = tl.load(consts)
    nxt = tl.zeros([BLOCK], dtype=tl.load(grad + offs, mask=mask, other=0.0).dtype)
    for i in range(0, steps):
        t = steps - 1 - i
        row = offs + t * m64
        x = tl.load(grad + row, mask=mask, other=0.0) + tl.where(_linked(t, steps, tbptt), nxt * alpha, 0.0)
        tl.store(out + row, x, mask=mask)
        nxt = x


@triton.jit
def _recurrent_forward(cur, beta, th0, weight, mem, spk, thr, consts, steps, m, RESET: tl.constexpr,
                       RECTIFY: tl.constexpr, ONE_TO_ONE: tl.constexpr, ADAPTIVE: tl.constexpr, BLOCK: tl.constexpr):
    offs, mask, m64 = _block(m, BLOCK)
    rho, rho_c, jump = tl.load(consts + 0), tl.load(consts + 1), tl.load(consts + 2)
    be = tl.load(beta + offs, mask=mask, other=0.0)
    th = tl.load(th0 + offs, mask=mask, other=1.0)
    w = tl.zeros([BLOCK], dtype=be.dtype)
    if ONE_TO_ONE:
        w = tl.load(weight + offs, mask=mask, other=0.0)
    u = tl.zeros([BLOCK], dtype=be.dtype)
    s = tl.zeros([BLOCK], dtype=be.dtype)
    adapt = tl.zeros([BLOCK], dtype=be.dtype)
    theta_prev = tl.zeros([BLOCK], dtype=be.dtype)
    for t in range(0, steps):
        row = offs + t * m64
        x = u * be
        if RESET == 1:
            x = x - x * s
        x = x + tl.load(cur + row, mask=mask, other=0.0)
        if ONE_TO_ONE:
            x = x + s * w
        if RESET == 0:
            if ADAPTIVE:
                x = x - s * theta_prev
            else:
                x = x - s * th
        if RECTIFY:
            x = tl.where(x < 0.0, 0.0, x)
        theta = th
        if ADAPTIVE:
            adapt = adapt * rho + rho_c * s
            theta = th + jump * adapt
            theta_prev = theta
            tl.store(thr + row, theta, mask=mask)
        y = (x > theta).to(x.dtype)
        tl.store(mem + row, x, mask=mask)
        tl.store(spk + row, y, mask=mask)
        u = x
        s = y


@triton.jit
def _recurrent_backward(mem, thr, grad_spk, grad_mem, beta, th0, weight, grad_in, acc_beta, acc_th, acc_w,
                        consts, steps, m, tbptt, RESET: tl.constexpr,
                        DETACH_RESET: tl.constexpr, KIND: tl.constexpr, ONE_TO_ONE: tl.constexpr,
                        ADAPTIVE: tl.constexpr, HAS_GS: tl.constexpr, HAS_GM: tl.constexpr, NEED_BETA: tl.constexpr,
                        NEED_TH: tl.constexpr, NEED_W: tl.constexpr, BLOCK: tl.constexpr):
    offs, mask, m64 = _block(m, BLOCK)
    p0, p1, p2, p3, p4, p5, scale = _surrogate_constants(consts)
    rho, rho_c, jump = tl.load(consts + 7), tl.load(consts + 8), tl.load(consts + 9)
    be = tl.load(beta + offs, mask=mask, other=0.0)
    th = tl.load(th0 + offs, mask=mask, other=1.0)
    w = tl.zeros([BLOCK], dtype=be.dtype)
    if ONE_TO_ONE:
        w = tl.load(weight + offs, mask=mask, other=0.0)
    nxt = tl.zeros([BLOCK], dtype=be.dtype)
    e_next = tl.zeros([BLOCK], dtype=be.dtype)
    ab = tl.zeros([BLOCK], dtype=be.dtype)
    at = tl.zeros([BLOCK], dtype=be.dtype)
    aw = tl.zeros([BLOCK], dtype=be.dtype)
    for i in range(0, steps):
        t = steps - 1 - i
        row = offs + t * m64
        has_next = t < steps - 1
        linked = _linked(t, steps, tbptt)
        u = tl.load(mem + row, mask=mask, other=0.0)
        theta = th
        if ADAPTIVE:
            theta = tl.load(thr + row, mask=mask, other=1.0)
        spiked = u > theta
        nl = tl.where(linked, nxt, 0.0)
        gs = tl.zeros([BLOCK], dtype=be.dtype)
        if HAS_GS:
            gs = tl.load(grad_spk + row, mask=mask, other=0.0)
        if ONE_TO_ONE:
            gs = gs + nl * w
        if ADAPTIVE:
            gs = gs + tl.where(linked, rho_c * e_next, 0.0)
        if not DETACH_RESET:
            if RESET == 0:
                gs = gs - nl * theta
            elif RESET == 1:
                gs = gs - nl * u * be
        g = scale * _derivative(KIND, p0, p1, p2, p3, p4, p5, u - theta) * gs
        g_theta = -g
        if RESET == 0:
            g_theta = g_theta - tl.where(spiked & has_next, nxt, 0.0)
        if NEED_TH:
            at = at + g_theta
        if RESET == 0:
            g_theta = tl.where(has_next & (linked == 0), -g, g_theta)  # a[t] detached at a chunk start; theta0 not
        if HAS_GM:
            g = g + tl.load(grad_mem + row, mask=mask, other=0.0)
        through, from_beta = nxt * be, nxt * u  # K[t] g[t+1] and beta's term; none after a zero reset
        if RESET == 1:
            through = tl.where(spiked, 0.0, through)
            from_beta = tl.where(spiked, 0.0, from_beta)
        if NEED_BETA:
            ab = ab + tl.where(has_next, from_beta, 0.0)
        if NEED_W:
            aw = aw + tl.where(spiked & has_next, nxt, 0.0)
        g = g + tl.where(linked, through, 0.0)
        if ADAPTIVE:
            e = g_theta * jump
            e_next = tl.where(linked, e + rho * e_next, e)
        tl.store(grad_in + row, g, mask=mask)
        nxt = g
    if NEED_BETA:
        tl.store(acc_beta + offs, ab, mask=mask)
    if NEED_TH:
        tl.store(acc_th + offs, at, mask=mask)
    if NEED_W:
        tl.store(acc_w + offs, aw, mask=mask)


# -- the bridge from torch (the same functions as numba_ops') ---------------------------------------

def _grid(m: int):
    return (triton.cdiv(m, BLOCK),)


def _on(x: torch.Tensor):
    """Launch on ``x``'s GPU: Triton launches on the current device, which need not be the tensors' (cuda:1)."""
    return torch.cuda.device(x.device) if x.is_cuda else nullcontext()


_CONSTANTS: dict = {}


def _constants(values, like: torch.Tensor) -> torch.Tensor:
    """Scalars as a small tensor of the data's dtype (a Python float would reach the kernel as float32),
    made once per values, dtype and device: a copy from the host waits for the GPU's stream."""
    key = (tuple(float(v) for v in values), like.dtype, like.device)
    if key not in _CONSTANTS:
        if len(_CONSTANTS) >= 256:  # the values are the config's; bounded all the same
            _CONSTANTS.clear()
        _CONSTANTS[key] = torch.tensor(key[0], dtype=like.dtype, device=like.device)
    return _CONSTANTS[key]


def _surrogate(surrogate, like, *more) -> tuple[int, torch.Tensor]:
    kind, p = surrogate_code(surrogate, "float64")
    return kind, _constants([*p, *more], like)


def run_lif_forward(current, beta, threshold, reset, rectify):
    cur = flat(current)
    mem, spk = torch.empty_like(cur), torch.empty_like(cur)
    with _on(cur):
        _lif_forward[_grid(cur.shape[1])](cur, per_element(beta, current[0]), per_element(threshold, current[0]), mem,
                                         spk, cur.shape[0], cur.shape[1], RESET=RESET_CODES[reset], RECTIFY=rectify,
                                         BLOCK=BLOCK)
    return spk.view(current.shape), mem.view(current.shape)


def run_lif_backward(mem, grad_spk, grad_mem, beta, threshold, surrogate, reset, reset_path, tbptt, need_beta, need_th):
    u = flat(mem)
    kind, consts = _surrogate(surrogate, u)
    grad_in = torch.empty_like(u)
    acc_beta, acc_th = torch.empty_like(u[0]), torch.empty_like(u[0])
    with _on(u):
        _lif_backward[_grid(u.shape[1])](
            u, flat(grad_spk) if grad_spk is not None else u, flat(grad_mem) if grad_mem is not None else u,
            per_element(beta, mem[0]), per_element(threshold, mem[0]), grad_in, acc_beta, acc_th, consts, u.shape[0],
            u.shape[1], tbptt, RESET=RESET_CODES[reset], RESET_PATH=reset_path, KIND=kind, HAS_GS=grad_spk is not None,
            HAS_GM=grad_mem is not None, NEED_BETA=need_beta, NEED_TH=need_th, BLOCK=BLOCK)
    shape = mem[0].shape
    return (grad_in.view(mem.shape), acc_beta.view(shape) if need_beta else None,
            acc_th.view(shape) if need_th else None)


def run_leaky_forward(current, alpha):
    cur = flat(current)
    out = torch.empty_like(cur)
    with _on(cur):
        _leaky_forward[_grid(cur.shape[1])](cur, out, _constants([alpha], cur), cur.shape[0], cur.shape[1], BLOCK=BLOCK)
    return out.view(current.shape)


def run_leaky_backward(grad, alpha, tbptt):
    g = flat(grad)
    out = torch.empty_like(g)
    with _on(g):
        _leaky_backward[_grid(g.shape[1])](g, out, _constants([alpha], g), g.shape[0], g.shape[1], tbptt, BLOCK=BLOCK)
    return out.view(grad.shape)


def run_recurrent_forward(current, beta, threshold, weight, reset, rectify, rho, jump):
    cur = flat(current)
    mem, spk = torch.empty_like(cur), torch.empty_like(cur)
    thr = torch.empty_like(cur) if jump != 0 else mem
    w = per_element(weight, current[0]) if weight is not None else cur[0]
    with _on(cur):
        _recurrent_forward[_grid(cur.shape[1])](
            cur, per_element(beta, current[0]), per_element(threshold, current[0]), w, mem, spk, thr,
            _constants([rho, 1 - rho, jump], cur), cur.shape[0], cur.shape[1], RESET=RESET_CODES[reset],
            RECTIFY=rectify, ONE_TO_ONE=weight is not None, ADAPTIVE=jump != 0, BLOCK=BLOCK)
    return spk.view(current.shape), mem.view(current.shape), thr.view(current.shape) if jump != 0 else None


def run_recurrent_backward(mem, thr, grad_spk, grad_mem, beta, threshold, weight, surrogate, reset, detach_reset,
                           rho, jump, tbptt, need_beta, need_th, need_w):
    u = flat(mem)
    kind, consts = _surrogate(surrogate, u, rho, 1 - rho, jump)
    grad_in = torch.empty_like(u)
    accs = [torch.empty_like(u[0]) for _ in range(3)]
    with _on(u):
        _recurrent_backward[_grid(u.shape[1])](
            u, flat(thr) if thr is not None else u, flat(grad_spk) if grad_spk is not None else u,
            flat(grad_mem) if grad_mem is not None else u, per_element(beta, mem[0]), per_element(threshold, mem[0]),
            per_element(weight, mem[0]) if weight is not None else u[0], grad_in, *accs, consts, u.shape[0], u.shape[1],
            tbptt, RESET=RESET_CODES[reset], DETACH_RESET=detach_reset, KIND=kind, ONE_TO_ONE=weight is not None,
            ADAPTIVE=jump != 0, HAS_GS=grad_spk is not None, HAS_GM=grad_mem is not None, NEED_BETA=need_beta,
            NEED_TH=need_th, NEED_W=need_w, BLOCK=BLOCK)
    shape = mem[0].shape
    return (grad_in.view(mem.shape), *(a.view(shape) if need else None
                                        for a, need in zip(accs, (need_beta, need_th, need_w))))
