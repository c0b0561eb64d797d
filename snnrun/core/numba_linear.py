"""A linear layer driven by its input's non-zero values, as numba kernels on the CPU.

y[n] = b + sum_q x[n, q] W[:, q] over the rows n of [N, K] = [T*B, K]: each row gathers the indices of
its non-zero inputs and adds only their columns of W, so the work scales with the spikes (a dense
product does K*O multiply-adds per row, spikes or not). Its gradients in one pass over the rows:

    dL/dW[:, q] = sum_n x[n, q] g[n],   dL/db = sum_n g[n]   (g = dL/dy, gathered the same way)
    dL/dx = g W                          (dense: a matrix product, or with few outputs the same kernel)

Spike trains of a hidden layer are mostly zeros (an alif layer on pixel-wise MNIST fires at 1-3 %),
and a layer with one or a few inputs (a pixel) gathers them all at the cost of reading them. The
rows are split into chunks that run in parallel; each chunk of the weight gradient sums into its own
accumulator and the chunks are added in a fixed order, so a result depends only on the thread count.
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from numba import njit, prange

from .numba_ops import set_threads


@njit(parallel=True, cache=True)
def gathered_rows(x, wt, bias, out, chunks):
    """out[n] = bias + sum over the non-zero x[n, q] of x[n, q] * wt[q]; x [N, K], wt [K, O], out [N, O]."""
    n, k = x.shape
    size = (n + chunks - 1) // chunks
    for c in prange(chunks):
        idx = np.empty(k, dtype=np.int64)
        for i in range(c * size, min(n, (c + 1) * size)):
            xi, row = x[i], out[i]
            m = 0
            for q in range(k):  # branch-free gather: idx[m] is overwritten until x[i, q] is non-zero
                idx[m] = q
                m += xi[q] != 0
            row[:] = bias
            for r in range(m):
                v, wr = xi[idx[r]], wt[idx[r]]
                for j in range(row.shape[0]):
                    row[j] += v * wr[j]


@njit(parallel=True, cache=True)
def gathered_weight_grad(x, g, acc):
    """acc[c, q] = sum over chunk c's rows of x[n, q] g[n] (non-zero x only), acc[c, K] = their sum of g[n]."""
    chunks = acc.shape[0]
    n, k = x.shape
    size = (n + chunks - 1) // chunks
    for c in prange(chunks):
        a = acc[c]
        a[:] = 0
        idx = np.empty(k, dtype=np.int64)
        for i in range(c * size, min(n, (c + 1) * size)):
            xi, gi = x[i], g[i]
            m = 0
            for q in range(k):
                idx[m] = q
                m += xi[q] != 0
            ab = a[k]
            for j in range(gi.shape[0]):
                ab[j] += gi[j]
            for r in range(m):
                v, aq = xi[idx[r]], a[idx[r]]
                for j in range(gi.shape[0]):
                    aq[j] += v * gi[j]


ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def product(grad: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """g W for g [N, O], W [O, K]: oneDNN's matrix product in float32 where torch has it, else torch's (MKL's
    sgemm, 9.0 ms against oneDNN's 3.7 on [50176, 128] x [128, 128], two threads of an AVX-512 AMD EPYC, where
    oneDNN runs AVX-512 code); both gave the same result to the bit there."""
    if grad.dtype == torch.float32 and ONEDNN:
        return torch.ops.mkldnn._linear_pointwise(grad, weight.t().contiguous(), None, "none", [], "")
    return grad.mm(weight)


FEW_OUTPUTS = 16  # dL/dx = g W by the gathering kernel below this many outputs (a readout), else a matrix product


def _chunks() -> int:
    return 4 * numba.get_num_threads()


class GatheredLinear(torch.autograd.Function):
    """y = x W^T + b on [N, K] rows; see the module docstring."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        set_threads()
        x = x.detach().contiguous()
        out = torch.empty(x.shape[0], weight.shape[0], dtype=x.dtype)
        gathered_rows(x.numpy(), weight.detach().t().contiguous().numpy(), bias.detach().numpy(), out.numpy(),
                      _chunks())
        ctx.save_for_backward(x, weight)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        set_threads()
        grad = grad.contiguous()
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            if weight.shape[0] <= FEW_OUTPUTS:
                grad_x = torch.empty_like(x)
                gathered_rows(grad.numpy(), weight.detach().contiguous().numpy(), np.zeros(x.shape[1], x.numpy().dtype),
                              grad_x.numpy(), _chunks())
            else:
                grad_x = product(grad, weight.detach())
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            acc = torch.empty(numba.get_num_threads(), x.shape[1] + 1, weight.shape[0], dtype=x.dtype)
            gathered_weight_grad(x.numpy(), grad.numpy(), acc.numpy())
            total = acc.sum(0)
            grad_w, grad_b = total[:-1].t().contiguous(), total[-1]
        return grad_x, grad_w, grad_b


def linear(x: torch.Tensor, layer: torch.nn.Linear) -> torch.Tensor:
    """``layer`` applied to x [N, K] by the gathering kernels."""
    return GatheredLinear.apply(x, layer.weight, layer.bias)
