"""Recurrent and adaptive LIF layers (``rlif``, ``alif``), time-first: current [T, B, n] -> (S, U).

rlif:  U[t] = beta*U[t-1] + I[t] + V(S[t-1]) - R[t]*theta
alif:  a[t] = rho*a[t-1] + (1 - rho)*S[t-1];  theta[t] = theta0 + b*a[t];  rho = exp(-1/tau_adapt)
       U[t] = beta*U[t-1] + I[t] (+ V(S[t-1])) - R[t]*theta[t-1];  S[t] = H(U[t] - theta[t])

V(S) = S W^T + c (``all_to_all``, snnTorch RLeaky's nn.Linear) or v*S (``one_to_one``); S[-1] = 0,
so the bias c enters at t = 0 as well. ``reset=zero`` is lif's: U[t] = beta*(1 - R[t])*U[t-1] + I[t]
+ V(S[t-1]). Only the layers of an ``RFC{n}`` token are recurrent; ``alif`` adapts in any layer.
The gradient flows through V(S[t-1]) and the adaptation a[t] (full BPTT); R[t] is detached
unless ``detach_reset=False``.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from . import backends
from .neurons import LIF, lif_step
from .backends import kernels
from .sequences import sum_to, truncated
from .options import non_negative, one_of, positive

RECURRENCES = ("all_to_all", "one_to_one")


def alif_step(current, mem, spk, adapt, beta, threshold, rho, jump, surrogate, reset="subtract", detach_reset=True,
              rectify=False):
    """One ALIF step on the previous (S, U, a); ``current`` already holds V(S[t-1]). Returns (S, U, a)."""
    previous_threshold = threshold + jump * adapt  # theta[t-1], the one S[t-1] crossed and its reset subtracts
    adapt = rho * adapt + (1 - rho) * spk
    spk, mem = lif_step(current, mem, spk, beta, threshold + jump * adapt, surrogate, reset, detach_reset, rectify,
                        reset_threshold=previous_threshold)
    return spk, mem, adapt


class _RecurrentSequence(torch.autograd.Function):
    """rlif/alif over all T steps as one autograd op: one matrix product per step for V.

    Backward is BPTT by hand on the adjoints g[t] = dL/dU[t] and e[t] = dL/da[t]:

        dL/dS[t] = dL/dS[t] (from above) + V^T g[t+1] + (1 - rho) e[t+1] (+ the reset path)
        g[t] = dL/dU[t] + sigma'(U[t] - theta[t]) dL/dS[t] + K[t] g[t+1]   (rectifier: straight through)
        e[t] = b * dL/dtheta[t] + rho e[t+1],  dL/dtheta[t] = -sigma' dL/dS[t] - S[t] g[t+1] (subtract)

    dL/dI[t] = g[t]; dL/dW = sum_t g[t]^T S[t-1] (one product after the loop); dL/dc = sum_t g[t].
    Saved: U and, for alif, theta[t] (the numba kernels keep a[t] every ``numba_ops.CHECKPOINT`` = 8 steps and
    recompute the rest); S = U > theta[t] is recomputed. Truncated BPTT (``tbptt`` = k):
    where t+1 starts a chunk, g[t+1] and e[t+1] reach no state of step t (U, S, a); the parameters'
    terms of step t+1 (beta's U[t], theta0's S[t] through the reset, W's S[t]) are kept.
    """

    @staticmethod
    def forward(ctx, current, beta, threshold, weight, bias, surrogate, reset, detach_reset, rectify, recurrence,
                rho, jump, tbptt=0, backend="torch", w_in=None, c_in=None):
        ctx.options = surrogate, reset, detach_reset, recurrence, rho, jump, tbptt, backend  # rectifier passes through
        ctx.set_materialize_grads(False)
        if w_in is not None:  # numba only (_Block.projects): current is x [T, B], the kernel computes c_in + x w_in
            spk, mem, kept = kernels(backend).run_recurrent_forward(current, beta, threshold, weight, reset, rectify,
                                                                    rho, jump, (w_in, c_in))
            ctx.save_for_backward(mem, kept, beta, threshold, weight, current, w_in, c_in)
            return spk, mem
        if backend != "torch":  # one-to-one or no recurrence (backends.check)
            spk, mem, kept = kernels(backend).run_recurrent_forward(current, beta, threshold, weight, reset, rectify,
                                                                    rho, jump)  # kept: what its backward needs of theta
            ctx.save_for_backward(mem, kept, beta, threshold, weight)
            return spk, mem
        mem, spk = torch.empty_like(current), torch.empty_like(current)
        adaptive = jump != 0
        thr = torch.empty_like(current) if adaptive else None
        adapt = torch.zeros_like(current[0])
        for t in range(current.shape[0]):
            u = mem[t]
            if t == 0:
                u.copy_(current[0])
            else:
                torch.mul(mem[t - 1], beta, out=u)
                if reset == "zero":
                    u.addcmul_(u, spk[t - 1], value=-1)
                u.add_(current[t])
            if recurrence == "all_to_all":  # V(S) as snnTorch computes it: (beta*U + I) + (S W^T + c)
                u.add_(torch.addmm(bias, spk[t - 1], weight.t()) if t > 0 else bias)
            elif recurrence == "one_to_one" and t > 0:
                u.addcmul_(spk[t - 1], weight)
            if t > 0 and reset == "subtract":
                u.addcmul_(spk[t - 1], thr[t - 1] if adaptive else threshold, value=-1)
            if rectify:
                u.clamp_(min=0)
            if adaptive:
                if t > 0:
                    adapt.mul_(rho).add_(spk[t - 1], alpha=1 - rho)
                torch.add(threshold, adapt, alpha=jump, out=thr[t])
            torch.gt(u, thr[t] if adaptive else threshold, out=spk[t])
        ctx.save_for_backward(mem, thr, beta, threshold, weight)
        return spk, mem

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_spk, grad_mem):
        mem, thr, beta, threshold, weight, *projection = ctx.saved_tensors
        surrogate, reset, detach_reset, recurrence, rho, jump, tbptt, backend = ctx.options
        adaptive = thr is not None
        need_beta, need_th = ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        if backend != "torch":
            grads = kernels(backend).run_recurrent_backward(
                mem, thr, grad_spk, grad_mem, beta, threshold, weight, surrogate, reset, detach_reset, rho, jump, tbptt,
                need_beta, need_th, ctx.needs_input_grad[3], **({"x": projection[0]} if projection else {}))
            grad_in, acc_beta, acc_th, acc_w, *acc_in = grads  # acc_in: dL/dw_in, dL/dc_in where projected
            grad_in_params = tuple(sum_to(acc, param) if need else None for acc, param, need in
                                   zip(acc_in, projection[1:], ctx.needs_input_grad[14:])) if projection else (None,) * 2
            return (grad_in, sum_to(acc_beta, beta) if need_beta else None,
                    sum_to(acc_th, threshold) if need_th else None,
                    acc_w.reshape(-1, weight.numel()).sum(0) if acc_w is not None else None, None) + (None,) * 9 \
                + grad_in_params
        acc_beta = torch.zeros_like(mem[0]) if need_beta else None
        acc_th = torch.zeros_like(mem[0]) if need_th else None
        grad_in = torch.empty_like(mem)
        nxt = nxt_adapt = None  # g[t+1], e[t+1]
        for t in reversed(range(mem.shape[0])):
            u, g = mem[t], grad_in[t]
            theta = thr[t] if adaptive else threshold
            s = u > theta
            g_s = torch.zeros_like(u) if grad_spk is None else grad_spk[t].clone()
            g_theta = None
            cut = nxt is not None and truncated(t + 1, tbptt)  # step t+1 reads a detached state
            if nxt is not None and not cut:
                if recurrence == "all_to_all":
                    g_s.addmm_(nxt, weight)
                elif recurrence == "one_to_one":
                    g_s.addcmul_(nxt, weight)
                if adaptive:
                    g_s.add_(nxt_adapt, alpha=1 - rho)
                if not detach_reset and reset == "subtract":
                    g_s.sub_(nxt * theta)
                elif not detach_reset and reset == "zero":
                    g_s.sub_(nxt * u * beta)
            torch.mul(surrogate.derivative(u - theta), g_s, out=g)
            if adaptive or need_th:
                g_theta = -g
                if nxt is not None and reset == "subtract":
                    g_theta = g_theta - nxt * s
                if need_th:
                    acc_th.add_(g_theta)
                if cut and reset == "subtract":
                    g_theta = -g  # theta[t] = theta0 + b*a[t]: a[t] is detached at t+1, theta0 is not
            if grad_mem is not None:
                g.add_(grad_mem[t])
            if nxt is not None:
                if need_beta:
                    acc_beta.addcmul_(nxt, u.masked_fill(s, 0) if reset == "zero" else u)
                if not cut:
                    g.add_((nxt * beta).masked_fill_(s, 0) if reset == "zero" else nxt * beta)
            if adaptive:
                e = g_theta * jump
                nxt_adapt = e if nxt_adapt is None or cut else e.add_(nxt_adapt, alpha=rho)
            nxt = g
        grad_weight = grad_bias = None
        if ctx.needs_input_grad[3]:
            n = mem.shape[-1]
            spk = (mem[:-1] > (thr[:-1] if adaptive else threshold)).to(mem.dtype).reshape(-1, n)
            later = grad_in[1:].reshape(-1, n)
            grad_weight = later.t() @ spk if recurrence == "all_to_all" else (later * spk).sum(0)
        if ctx.needs_input_grad[4]:
            grad_bias = grad_in.reshape(-1, mem.shape[-1]).sum(0)
        return (grad_in, sum_to(acc_beta, beta) if need_beta else None,
                sum_to(acc_th, threshold) if need_th else None, grad_weight, grad_bias) + (None,) * 11


class RLIF(LIF):
    """Recurrent LIF: U[t] = beta*U[t-1] + I[t] + V(S[t-1]) - R[t]*theta (snnTorch ``RLeaky``).

    ``recurrence``: ``all_to_all`` (V = a learned n x n linear map with bias, PyTorch's Linear
    initialisation) or ``one_to_one`` (a learned vector v, initialised to 0). The architecture
    passes ``recurrent=True`` to the layers of its ``RFC{n}`` tokens; other layers are plain lif.
    """

    supports_recurrence = True
    needs_recurrent_layer = True  # neuron=rlif without an RFC layer would silently be lif

    def __init__(self, recurrence: str = "all_to_all", recurrent: bool = False, shape=(), **kwargs):
        super().__init__(shape=shape, **kwargs)
        self.recurrence = one_of("recurrence", recurrence, RECURRENCES) if recurrent else None
        backends.check(self.backend, self.surrogate, one_to_one=self.recurrence != "all_to_all")
        self.rho, self.jump = 0.0, 0.0
        if recurrent:
            n = shape[-1]
            if recurrence == "all_to_all":
                linear = nn.Linear(n, n)
                self.recurrent_weight, self.recurrent_bias = linear.weight, linear.bias
            else:
                self.recurrent_weight = nn.Parameter(torch.zeros(n))

    @torch.no_grad()
    def initialise_recurrence(self, how: str, gain: float = 1.0) -> None:
        """``zeros``: V = 0; ``orthogonal``: all-to-all V a random orthogonal matrix times ``gain`` (bias 0),
        one-to-one v a random sign times ``gain`` per neuron (the diagonal orthogonal matrices)."""
        weight, bias = self.recurrent_weight, getattr(self, "recurrent_bias", None)
        if how == "zeros":
            weight.zero_()
        elif weight.dim() == 2:
            nn.init.orthogonal_(weight, gain=gain)
        else:
            weight.copy_(gain * (torch.randint(0, 2, weight.shape) * 2 - 1).to(weight))
        if bias is not None:
            bias.zero_()

    def recurrent_input(self, spk: torch.Tensor) -> torch.Tensor:
        """V(S[t-1])."""
        if self.recurrence == "all_to_all":
            return nn.functional.linear(spk, self.recurrent_weight, self.recurrent_bias)
        return spk * self.recurrent_weight

    def takes_projection(self, x: torch.Tensor) -> bool:
        """Whether ``forward(x, projection)`` can compute this layer's current from one input per step in its
        kernel: the fused op on numba, for x [T, B] that needs no gradient."""
        return ((self.recurrence is not None or self.jump != 0) and self.fused and not x.requires_grad
                and self.recurrence != "all_to_all" and backends.choose(self.backend, x, self.surrogate) == "numba")

    def forward(self, current, projection=None):
        """current [T, B, n] -> (S, U). ``projection`` = (w_in, c_in), each [n] (``takes_projection``): current is
        then one input per sample and step, x [T, B], and the layer's current I = c_in + x w_in."""
        if projection is not None and not self.takes_projection(current):
            raise ValueError("a projected current is computed in the numba kernel only (see takes_projection)")
        if self.recurrence is None and self.jump == 0:
            return super().forward(current)
        weight = getattr(self, "recurrent_weight", None)
        bias = getattr(self, "recurrent_bias", None)
        if self.fused:
            self.last_backend = backends.choose(self.backend, current, self.surrogate, self.recurrence != "all_to_all")
            like = projection[0] if projection is not None else current
            return _RecurrentSequence.apply(
                current, self.beta.to(like), self.threshold.to(like),
                None if weight is None else weight.to(like), None if bias is None else bias.to(like),
                self.surrogate, self.reset, self.detach_reset, self.rectify, self.recurrence, self.rho, self.jump,
                self.tbptt, self.last_backend, *(projection or ()))
        kwargs = self._step_kwargs()
        spk, mem, adapt = (torch.zeros_like(current[0]) for _ in range(3))
        spikes, mems = [], []
        for t, i_t in enumerate(current):
            if truncated(t, self.tbptt):
                spk, mem, adapt = spk.detach(), mem.detach(), adapt.detach()
            if self.recurrence is not None:
                i_t = i_t + self.recurrent_input(spk)
            if self.jump:
                spk, mem, adapt = alif_step(i_t, mem, spk, adapt, rho=self.rho, jump=self.jump, **kwargs)
            else:
                spk, mem = lif_step(i_t, mem, spk, **kwargs)
            spikes.append(spk)
            mems.append(mem)
        return torch.stack(spikes), torch.stack(mems)

    def step(self, current, state=None):
        """One step for streaming: current [B, n] -> (S[t], U[t], state = (S, U, a))."""
        if self.recurrence is None and self.jump == 0:
            return super().step(current, state)
        spk, mem, adapt = state if state is not None else (torch.zeros_like(current),) * 3
        if self.recurrence is not None:
            current = current + self.recurrent_input(spk)
        if self.jump:
            spk, mem, adapt = alif_step(current, mem, spk, adapt, rho=self.rho, jump=self.jump, **self._step_kwargs())
        else:
            spk, mem = lif_step(current, mem, spk, **self._step_kwargs())
        return spk, mem, (spk, mem, adapt)

    def extra_repr(self) -> str:
        return f"recurrence={self.recurrence}, " + super().extra_repr()


class ALIF(RLIF):
    """Adaptive LIF (LSNN): theta[t] = theta0 + b*a[t], a[t] = rho*a[t-1] + (1 - rho)*S[t-1].

    ``tau_adapt`` (tau_a in steps, rho = exp(-1/tau_a); default 200) and ``adaptation`` (b, default 1.8).
    Recurrent in ``RFC{n}`` layers, feed-forward adaptive elsewhere.
    """

    needs_recurrent_layer = False

    def __init__(self, tau_adapt: float = 200.0, adaptation: float = 1.8, **kwargs):
        super().__init__(**kwargs)
        self.rho = math.exp(-1.0 / positive("tau_adapt", tau_adapt, example=200.0))
        self.jump = non_negative("adaptation", adaptation, example=1.8)

    def extra_repr(self) -> str:
        return f"tau_adapt={-1 / math.log(self.rho):.4g}, adaptation={self.jump}, " + super().extra_repr()
