"""The fused ops: a neuron layer's whole time loop as one autograd op with a hand-written backward.

``backend`` selects who runs the loop: ``torch`` (a Python loop over T of in-place tensor ops,
each step's tensors staying in cache), ``numba`` or ``triton`` (one compiled kernel per sequence,
each way: ``snnrun.core.numba_ops``, ``snnrun.core.triton_ops``); all compute the same equations,
held equal by the tests (``snnrun.core.backends`` chooses).
``filter_scan`` is the no-reset LIF computed over all steps at once (GPUs).
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .backends import kernels


def sum_to(grad: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """Reduce a per-element gradient [B, *shape] to the parameter's shape (() or shape)."""
    return grad.sum().reshape(param.shape) if param.dim() == 0 else grad.sum(0).reshape(param.shape)


class LIFSequence(torch.autograd.Function):
    """``lif_step`` over all T steps as one autograd op: current [T, ...] -> (S, U).

    Forward runs the recurrence in place without building a graph. Backward is BPTT by hand,
    from t = T-1 down to 0, on the adjoint a[t] = dL/dU[t]:

        a[t] = dL/dU[t] (direct) + sigma'(U[t] - theta) * dL/dS[t] + K[t] * a[t+1]

    with K[t] = dU[t+1]/dU[t] (beta; beta*(1 - S[t]) for the zero reset) and dL/dS[t] including
    the reset's path R[t+1] = S[t] unless it is detached. Then dL/dI[t] = a[t]: the rectifier
    max(U, 0) is passed straight through (gradient 1), so a neuron held at 0 still learns.
    Only U is saved: S = U > theta is recomputed from it. Truncated BPTT (``tbptt`` = k > 0):
    where t+1 starts a chunk (a multiple of k) the state's terms from a[t+1] are cut; the
    parameters' terms of step t+1 (a[t+1]*U[t] for beta, a[t+1]*S[t] for theta) are kept, as
    when the step-by-step loop detaches U and S there.
    """

    @staticmethod
    def forward(ctx, current, beta, threshold, surrogate, reset, detach_reset, rectify, tbptt=0, backend="torch"):
        ctx.surrogate, ctx.reset, ctx.detach_reset, ctx.tbptt = surrogate, reset, detach_reset, tbptt
        ctx.backend = backend
        ctx.set_materialize_grads(False)
        if backend != "torch":
            spk, mem = kernels(backend).run_lif_forward(current, beta, threshold, reset, rectify)
            ctx.save_for_backward(mem, beta, threshold)
            return spk, mem
        mem, spk = torch.empty_like(current), torch.empty_like(current)
        for t in range(current.shape[0]):
            u = mem[t]
            if t == 0:
                u.copy_(current[0])
            else:
                torch.mul(mem[t - 1], beta, out=u)
                if reset == "zero":
                    u.addcmul_(u, spk[t - 1], value=-1)  # U*(1 - R), exact for R in {0, 1}
                u.add_(current[t])
                if reset == "subtract":
                    u.addcmul_(spk[t - 1], threshold, value=-1)  # R*theta is exact: rounds as U - R*theta
            if rectify:
                u.clamp_(min=0)
            torch.gt(u, threshold, out=spk[t])
        ctx.save_for_backward(mem, beta, threshold)
        return spk, mem

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_spk, grad_mem):
        mem, beta, threshold = ctx.saved_tensors
        reset, surrogate = ctx.reset, ctx.surrogate
        reset_path = not ctx.detach_reset and reset != "none"
        need_beta, need_th = ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        if ctx.backend != "torch":
            grad_in, acc_beta, acc_th = kernels(ctx.backend).run_lif_backward(
                mem, grad_spk, grad_mem, beta, threshold, surrogate, reset, reset_path, ctx.tbptt, need_beta, need_th)
            return (grad_in, sum_to(acc_beta, beta) if need_beta else None,
                    sum_to(acc_th, threshold) if need_th else None) + (None,) * 6
        grad_in = torch.empty_like(mem)
        acc_beta = torch.zeros_like(mem[0]) if need_beta else None
        acc_th = torch.zeros_like(mem[0]) if need_th else None
        nxt = None  # a[t+1]; per-step tensors stay in cache, which beats whole-sequence ops on CPU
        for t in reversed(range(mem.shape[0])):
            if nxt is not None and truncated(t + 1, ctx.tbptt):
                nxt = None  # the state's path from t+1 is cut; its parameter terms were taken at t+1
            u, a = mem[t], grad_in[t]
            g_s = None if grad_spk is None else grad_spk[t]
            if nxt is not None and reset_path:  # S[t] is R[t+1]
                g_r = nxt * threshold if reset == "subtract" else nxt * u * beta
                g_s = -g_r if g_s is None else g_s - g_r
            if g_s is None:
                a.zero_()
            else:
                torch.mul(surrogate.derivative(u - threshold), g_s, out=a)
                if need_th:
                    acc_th.sub_(a)
            if grad_mem is not None:
                a.add_(grad_mem[t])
            if nxt is not None:  # a[t+1] * dU[t+1]/dU[t]
                if reset == "zero":
                    a.add_((nxt * beta).masked_fill_(u > threshold, 0))
                else:
                    a.addcmul_(nxt, beta)
            if t > 0:
                prev = mem[t - 1]
                if need_beta:
                    acc_beta.addcmul_(a, prev.masked_fill(prev > threshold, 0) if reset == "zero" else prev)
                if need_th and reset == "subtract":
                    acc_th.sub_(a * (prev > threshold))
            nxt = a
        return (grad_in, sum_to(acc_beta, beta) if need_beta else None,
                sum_to(acc_th, threshold) if need_th else None) + (None,) * 6


def truncated(t: int, tbptt: int) -> bool:
    """Whether step t starts a chunk of truncated BPTT: the state it reads is detached."""
    return tbptt > 0 and t > 0 and t % tbptt == 0


class LeakyIntegral(torch.autograd.Function):
    """J[t] = alpha*J[t-1] + I[t] over all steps; backward dL/dI[t] = dL/dJ[t] + alpha*dL/dI[t+1]
    (the second term cut where t+1 starts a chunk of truncated BPTT)."""

    @staticmethod
    def forward(ctx, current, alpha: float, tbptt: int = 0, backend: str = "torch"):
        ctx.alpha, ctx.tbptt, ctx.backend = alpha, tbptt, backend
        if backend != "torch":
            return kernels(backend).run_leaky_forward(current, alpha)
        out = current.clone()
        for t in range(1, out.shape[0]):
            out[t].add_(out[t - 1] * alpha)  # not add_(alpha=): no fused multiply-add, same rounding as the reference
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        if ctx.backend != "torch":
            return kernels(ctx.backend).run_leaky_backward(grad, ctx.alpha, ctx.tbptt), None, None, None
        grad = grad.clone()
        for t in reversed(range(grad.shape[0] - 1)):
            if not truncated(t + 1, ctx.tbptt):
                grad[t].add_(grad[t + 1], alpha=ctx.alpha)
        return grad, None, None, None


def filter_scan(current: torch.Tensor, beta: torch.Tensor, block: int) -> torch.Tensor:
    """U[t] = beta*U[t-1] + I[t] from U[-1] = 0 over current [T, B, *shape]; beta () or broadcastable to shape.

    Within a block of L steps starting at s: U[s+j] = beta^j * cumsum_i(beta^-i I[s+i]) + beta^(j+1) U[s-1],
    elementwise and a cumulative sum, in float64 (beta^-L must not overflow: beta >= 1e-9 for L = 32).
    Every term of the sum is at most beta^-j |I|, so rounding stays relative to U itself."""
    t_total = len(current)
    length = min(block, t_total)
    b = beta.to(torch.float64).clamp(min=1e-300 ** (1 / length))
    shape = (length + 1,) + (1,) * (current.dim() - 1)
    exponent = torch.arange(length + 1, device=current.device, dtype=torch.float64).reshape(shape)
    up, down = b ** exponent, b ** -exponent  # beta^j, beta^-j: [L+1, 1, *shape]
    x = current.to(torch.float64)
    out, carry = [], None
    for chunk in x.split(length):  # split, not slices: one gradient buffer for all blocks in backward
        n = len(chunk)
        u = up[:n] * torch.cumsum(down[:n] * chunk, dim=0)
        if carry is not None:
            u = u + up[1:n + 1] * carry
        out.append(u)
        carry = u[-1]
    return torch.cat(out).to(current.dtype)
