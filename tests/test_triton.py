"""The Triton kernels against the torch fused ops, on a GPU where there is one, else in Triton's interpreter
(``TRITON_INTERPRET=1``, CPU tensors, small shapes): identical spikes, membranes and gradients within
float rounding, for the options of each op."""

import os

import pytest
import torch

INTERPRET = not torch.cuda.is_available()
_before = os.environ.get("TRITON_INTERPRET")
if INTERPRET:
    os.environ["TRITON_INTERPRET"] = "1"  # before the kernels are defined: they run in the interpreter
pytest.importorskip("triton")

from conftest import layer_grads  # noqa: E402
from snnrun.core import backends, neurons, surrogates  # noqa: E402
from snnrun.core.recurrent import ALIF, RLIF  # noqa: E402

pytest.importorskip("snnrun.core.triton_ops")


@pytest.fixture(autouse=True, scope="module")
def _interpreter_for_this_module_only():
    yield
    if INTERPRET and _before is None:
        os.environ.pop("TRITON_INTERPRET", None)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
T, B, SHAPE = 11, 2, (3, 5)


def compare(make, dtype, shape=SHAPE, tbptt=0, offset=0.3, spiking=True):
    torch.manual_seed(0)
    current = (torch.randn(T, B, *shape, dtype=torch.float64) * 0.8 + offset).to(dtype).to(DEVICE)
    weights = torch.randn(2, T, B, *shape, dtype=torch.float64).to(dtype).to(DEVICE)
    out = []
    for backend in ("torch", "triton"):
        torch.manual_seed(1)
        layer = make(backend).to(dtype).to(DEVICE)
        neurons.truncate(layer, tbptt)
        out.append(layer_grads(layer, current, weights))
        assert layer.last_backend == backend
    (s1, m1, g1, p1), (s2, m2, g2, p2) = out
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    assert torch.equal(s1, s2) and (0 < s1.mean() < 1 or not spiking)
    torch.testing.assert_close(m2, m1, rtol=tol, atol=tol)
    torch.testing.assert_close(g2, g1, rtol=tol, atol=tol * g1.abs().max().item())
    assert p1.keys() == p2.keys()
    for name in p1:
        torch.testing.assert_close(p2[name], p1[name], rtol=tol, atol=tol * p1[name].abs().max().item())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reset, detach_reset, rectify, tbptt", [
    ("subtract", True, False, 0), ("zero", False, True, 4), ("none", True, False, 0), ("subtract", False, False, 3)])
@pytest.mark.parametrize("cls", [neurons.LIF, neurons.Synaptic])
def test_lif_kernels(cls, reset, detach_reset, rectify, tbptt, dtype):
    def make(backend):
        return cls(beta=0.8, threshold=0.7, reset=reset, detach_reset=detach_reset, rectify=rectify, learn_beta=True,
                   learn_threshold=True, per_neuron=True, shape=SHAPE, surrogate=surrogates.FastSigmoid(5.0),
                   backend=backend)

    compare(make, dtype, tbptt=tbptt)


@pytest.mark.parametrize("surrogate", [surrogates.ATan(), surrogates.Sigmoid(), surrogates.Triangular(0.5),
                                       surrogates.MultiGaussian(), surrogates.StraightThrough()])
def test_each_surrogate(surrogate):
    compare(lambda b: neurons.LIF(beta=0.9, learn_beta=True, surrogate=surrogate, backend=b), torch.float64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cls, recurrence, reset, detach_reset, tbptt", [
    (ALIF, "one_to_one", "subtract", True, 0), (ALIF, "one_to_one", "subtract", False, 4),
    (ALIF, None, "zero", True, 0), (RLIF, "one_to_one", "zero", False, 3), (ALIF, "one_to_one", "none", True, 5)])
def test_recurrent_kernels(cls, recurrence, reset, detach_reset, tbptt, dtype):
    extra = {"tau_adapt": 5.0, "adaptation": 0.7} if cls is ALIF else {}

    def make(backend):
        layer = cls(beta=0.8, reset=reset, recurrence=recurrence or "one_to_one", recurrent=recurrence is not None,
                    shape=(6,), learn_beta=True, learn_threshold=True, per_neuron=True, detach_reset=detach_reset,
                    backend=backend, **extra)
        if recurrence:
            with torch.no_grad():
                layer.recurrent_weight.uniform_(-1, 1)
        return layer

    compare(make, dtype, shape=(6,), tbptt=tbptt, offset=0.4)


@pytest.mark.parametrize("surrogate", [surrogates.StraightThrough(), surrogates.Heaviside()])
def test_infinite_membranes_take_the_constant_surrogates_as_torch_does(surrogate):
    """dS/dU of 1 (straight-through) or 0 (Heaviside) at U = +-inf, not inf * 0 = NaN."""
    current = torch.randn(5, 2, 3, dtype=torch.float64)
    current[4, 0, 1], current[4, 1, 2] = float("inf"), float("-inf")
    weights = torch.randn(2, 5, 2, 3, dtype=torch.float64)
    grads = [layer_grads(neurons.LIF(beta=0.9, surrogate=surrogate, backend=b).double().to(DEVICE),
                         current.to(DEVICE), weights.to(DEVICE))[2] for b in ("torch", "triton")]
    assert grads[0][4, 0, 1].isfinite()
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-10, atol=1e-10, equal_nan=True)


def test_the_constants_tensor_is_made_once():
    """A tensor made from host values waits for the GPU's stream: the kernels' constants are made once per values,
    dtype and device, and a layer's next call takes the same tensor."""
    from snnrun.core import triton_ops

    x = torch.zeros(3, dtype=torch.float64, device=DEVICE)
    first = triton_ops._constants([0.5, 0.25], x)
    assert triton_ops._constants([0.5, 0.25], x) is first and first.dtype == torch.float64
    assert triton_ops._constants([0.5, 0.25], x.float()) is not first  # another dtype, another tensor


def test_li_readout():
    compare(lambda b: neurons.LI(beta=0.85, learn_beta=True, per_neuron=True, shape=SHAPE, backend=b), torch.float64,
            spiking=False)


def test_auto_takes_triton_on_a_gpu_only():
    layer = neurons.LIF()
    layer(torch.randn(4, 2, 3))
    assert layer.last_backend != "triton"  # CPU tensors: numba or torch, even with the interpreter on
    if torch.cuda.is_available():
        layer(torch.randn(4, 2, 3, device="cuda"))
        assert layer.last_backend == "triton"
    assert backends.unavailable("triton") is None


@pytest.mark.slow  # about 15 s per dtype: CI runs it with the slow tests
@pytest.mark.parametrize("dtype", ["fp32", "fp64"])
def test_every_kernel_compiles_to_a_gpu_binary(dtype):
    """Triton's compiler, front end to ptxas, for an H100/H200 (sm_90), every option combination: no GPU needed."""
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = Path(__file__).with_name("triton_compile.py")
    out = subprocess.run([sys.executable, str(script), dtype], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert len([line for line in out.stdout.splitlines() if line.endswith("compiled")]) == 6
