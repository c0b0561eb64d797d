"""The numba kernels against the torch fused ops: identical spikes, membranes within one rounding, and
every gradient within 1e-5 relative (float32) or 1e-10 (float64), for every option combination;
``neuron.backend`` from the config, its choices and its refusals."""

import subprocess
import sys

import pytest
import torch

from snnrun.core import backends, neurons, surrogates
from snnrun.core.recurrent import ALIF, RLIF
from snnrun.core.options import OptionError
from conftest import FAST, layer_grads

pytest.importorskip("numba")

T, B, SHAPE = 23, 3, (4, 5)


def both(make, dtype, shape=SHAPE, tbptt=0, scale=0.8, offset=0.3, seed=0):
    """The same layer on torch and on numba, forward and backward on the same input."""
    torch.manual_seed(seed)
    current = (torch.randn(T, B, *shape, dtype=torch.float64) * scale + offset).to(dtype)
    current[4] = 0  # exact zeros: U = 0 exactly at the rectifier
    weights = torch.randn(2, T, B, *shape, dtype=torch.float64).to(dtype)
    out = []
    for backend in ("torch", "numba"):
        torch.manual_seed(seed + 1)
        layer = make(backend).to(dtype)
        neurons.truncate(layer, tbptt)
        out.append(layer_grads(layer, current, weights))
        assert layer.last_backend == backend
    return out


def assert_equal_runs(ref, got, dtype):
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    assert torch.equal(ref[0], got[0]) and 0 < ref[0].mean() < 1  # identical spikes, some and not all
    ulp = 1e-12 if dtype == torch.float64 else 1e-6
    torch.testing.assert_close(got[1], ref[1], rtol=ulp, atol=ulp)
    torch.testing.assert_close(got[2], ref[2], rtol=tol, atol=tol * ref[2].abs().max().item())
    assert got[3].keys() == ref[3].keys()
    for name in ref[3]:
        assert ref[3][name].abs().sum() > 0, name
        torch.testing.assert_close(got[3][name], ref[3][name], rtol=tol, atol=tol * ref[3][name].abs().max().item())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cls", [neurons.LIF, neurons.Synaptic])
@pytest.mark.parametrize("reset", ["subtract", "zero", "none"])
@pytest.mark.parametrize("detach_reset", [True, False])
@pytest.mark.parametrize("rectify", [False, True])
@pytest.mark.parametrize("per_neuron", [False, True])
@pytest.mark.parametrize("tbptt", [0, 6])
def test_lif_kernels_equal_the_torch_op(dtype, cls, reset, detach_reset, rectify, per_neuron, tbptt):
    def make(backend):
        return cls(beta=0.8, threshold=0.7, reset=reset, detach_reset=detach_reset, rectify=rectify, learn_beta=True,
                   learn_threshold=True, per_neuron=per_neuron, shape=SHAPE, surrogate=surrogates.FastSigmoid(5.0),
                   backend=backend)

    assert_equal_runs(*both(make, dtype, tbptt=tbptt), dtype)


@pytest.mark.parametrize("surrogate", [surrogates.ATan(), surrogates.FastSigmoid(), surrogates.Sigmoid(),
                                       surrogates.Triangular(0.5), surrogates.MultiGaussian(),
                                       surrogates.StraightThrough(), surrogates.ATan(scale=0.3)])
def test_every_built_in_surrogate_runs_in_the_kernels(surrogate):
    def make(backend):
        return neurons.LIF(beta=0.9, learn_beta=True, learn_threshold=True, surrogate=surrogate, backend=backend)

    assert_equal_runs(*both(make, torch.float64), torch.float64)


def test_the_kernels_know_every_built_in_surrogate():
    built_in = {c for c in vars(surrogates).values() if isinstance(c, type) and issubclass(c, surrogates.Surrogate)}
    assert set(backends.SURROGATES) == built_in - {surrogates.Surrogate}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("make", [
    lambda b: neurons.IF(backend=b, threshold=0.9),
    lambda b: neurons.IF(backend=b, rectify=True, alpha=0.5),
    lambda b: neurons.LIF(beta=1.0, reset="zero", backend=b),
], ids=["if", "if-rectify-synaptic", "lif-beta1"])
def test_if_kernels(make, dtype):
    assert_equal_runs(*both(make, dtype, scale=0.5, offset=0.2), dtype)


def test_li_readout_kernel():
    ref, got = both(lambda b: neurons.LI(beta=0.85, learn_beta=True, per_neuron=True, shape=SHAPE, backend=b),
                    torch.float64)
    assert ref[0].sum() == got[0].sum() == 0
    torch.testing.assert_close(got[1], ref[1], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got[2], ref[2], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got[3]["beta_logit"], ref[3]["beta_logit"], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cls, recurrence", [(RLIF, "one_to_one"), (ALIF, "one_to_one"), (ALIF, None)])
@pytest.mark.parametrize("reset", ["subtract", "zero", "none"])
@pytest.mark.parametrize("detach_reset", [True, False])
@pytest.mark.parametrize("rectify", [False, True])
@pytest.mark.parametrize("tbptt", [0, 5])
def test_recurrent_kernels_equal_the_torch_op(dtype, cls, recurrence, reset, detach_reset, rectify, tbptt):
    n = 7
    extra = {"tau_adapt": 5.0, "adaptation": 0.7} if cls is ALIF else {}

    def make(backend):
        layer = cls(beta=0.8, reset=reset, recurrence=recurrence or "one_to_one", recurrent=recurrence is not None,
                    shape=(n,), learn_beta=True, learn_threshold=True, per_neuron=True, detach_reset=detach_reset,
                    rectify=rectify, backend=backend, **extra)
        if recurrence:
            with torch.no_grad():
                layer.recurrent_weight.uniform_(-1, 1)
        return layer

    assert_equal_runs(*both(make, dtype, shape=(n,), tbptt=tbptt, offset=0.4), dtype)


@pytest.mark.parametrize("used", ["spikes", "membranes"])
@pytest.mark.parametrize("cls", [neurons.LIF, RLIF, ALIF])
def test_kernels_with_one_output_used(cls, used):
    """Only dL/dS comes from above (a hidden layer) or only dL/dU (a membrane readout): the kernels compile
    the missing one out, and the gradients still equal the torch op's."""
    torch.manual_seed(0)
    current = torch.randn(T, B, 6, dtype=torch.float64) * 0.8 + 0.4
    weight = torch.randn(T, B, 6, dtype=torch.float64)
    grads = []
    for backend in ("torch", "numba"):
        torch.manual_seed(1)
        common = dict(beta=0.8, shape=(6,), learn_beta=True, learn_threshold=True, per_neuron=True, backend=backend)
        if cls is neurons.LIF:
            layer = cls(**common).double()
        else:
            extra = {"tau_adapt": 5.0, "adaptation": 0.7} if cls is ALIF else {}
            layer = cls(recurrence="one_to_one", recurrent=True, **common, **extra).double()
            with torch.no_grad():
                layer.recurrent_weight.uniform_(-1, 1)
        x = current.clone().requires_grad_()
        spk, mem = layer(x)
        ((spk if used == "spikes" else mem) * weight).sum().backward()
        assert layer.last_backend == backend and 0 < spk.mean() < 1
        grads.append([x.grad] + [p.grad for _, p in sorted(layer.named_parameters())])
    for ref, got in zip(*grads):
        assert ref.abs().sum() > 0
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10 * ref.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cls, recurrence", [(RLIF, "one_to_one"), (ALIF, "one_to_one"), (ALIF, None)])
@pytest.mark.parametrize("reset, detach_reset, tbptt", [("subtract", True, 0), ("zero", False, 5)])
def test_a_projected_input_equals_the_linear_layer_then_the_torch_op(dtype, cls, recurrence, reset, detach_reset,
                                                                     tbptt):
    """One input per step (a pixel) projected in the numba kernel, I = c + x w, against torch's c + x w fed to
    the torch op: the same spikes and membranes, and the same gradients of w, c and the layer's parameters. (The
    projection touches only the current and its gradient: the options' other combinations are the kernels' own.)"""
    n = 7
    extra = {"tau_adapt": 5.0, "adaptation": 0.7} if cls is ALIF else {}
    g = torch.Generator().manual_seed(0)
    x = torch.rand(T, B, generator=g, dtype=torch.float64).to(dtype)
    x[x < 0.3] = 0  # dark pixels: the current is c alone
    upstream = torch.randn(2, T, B, n, generator=g, dtype=torch.float64).to(dtype)
    out = []
    for backend in ("torch", "numba"):
        torch.manual_seed(1)
        layer = cls(beta=0.8, reset=reset, recurrence=recurrence or "one_to_one", recurrent=recurrence is not None,
                    shape=(n,), learn_beta=True, learn_threshold=True, per_neuron=True, detach_reset=detach_reset,
                    backend=backend, **extra).to(dtype)
        neurons.truncate(layer, tbptt)
        w = (torch.randn(n, dtype=torch.float64) * 1.5).to(dtype).requires_grad_()
        c = (torch.randn(n, dtype=torch.float64) * 0.3 + 0.3).to(dtype).requires_grad_()
        if recurrence:
            with torch.no_grad():
                layer.recurrent_weight.uniform_(-1, 1)
        assert layer.takes_projection(x) == (backend == "numba")
        spk, mem = layer(x, projection=(w, c)) if backend == "numba" else layer(c + x[..., None] * w)
        ((spk * upstream[0]).sum() + (mem * upstream[1]).sum()).backward()
        grads = {"w": w.grad, "c": c.grad, **{k: p.grad for k, p in layer.named_parameters()}}
        out.append((spk.detach(), mem.detach(), grads))
    (spk_ref, mem_ref, ref), (spk, mem, got) = out
    assert torch.equal(spk, spk_ref) and 0 < spk.mean() < 1
    ulp = 1e-12 if dtype == torch.float64 else 1e-6
    torch.testing.assert_close(mem, mem_ref, rtol=ulp, atol=ulp)
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    assert got.keys() == ref.keys()
    for name in ref:
        assert ref[name].abs().sum() > 0, name
        torch.testing.assert_close(got[name], ref[name], rtol=tol, atol=tol * ref[name].abs().max().item())


def test_a_projection_is_refused_where_the_kernel_cannot_take_it():
    x = torch.rand(T, B)
    w, c = torch.randn(4), torch.zeros(4)
    for layer in (ALIF(shape=(4,), backend="torch"), RLIF(recurrence="all_to_all", recurrent=True, shape=(4,)),
                  ALIF(shape=(4,), fused=False)):
        assert not layer.takes_projection(x)
        with pytest.raises(ValueError, match="numba kernel only"):
            layer(x, projection=(w, c))
    layer = ALIF(shape=(4,))
    assert layer.takes_projection(x) and not layer.takes_projection(x.double().requires_grad_())
    assert not layer.takes_projection(x.requires_grad_())  # dL/dx is never computed by the kernel


def test_a_layer_of_neurons_in_several_blocks():
    """More neurons than one block of the kernel (512): the blocks split the work and meet nowhere."""
    def make(backend):
        return ALIF(beta=0.9, tau_adapt=10.0, adaptation=0.5, shape=(700,), per_neuron=True, learn_beta=True,
                    backend=backend)

    assert_equal_runs(*both(make, torch.float32, shape=(700,)), torch.float32)


def test_auto_takes_numba_for_float32_on_a_cpu_and_torch_otherwise():
    layer = neurons.LIF()
    x = torch.randn(5, 2, 3)
    layer(x)
    assert layer.last_backend == "numba" and backends.used(layer) == ["numba"]
    layer(x.double())
    assert layer.last_backend == "torch"
    layer(torch.randn(3, 2, 1 << 16))
    assert layer.last_backend == "numba"  # wide layers too: the kernel won at every size measured
    layer(torch.randn(3, 2, 4, 5, 6).permute(0, 1, 4, 2, 3))
    assert layer.last_backend == "torch"  # a channels-last conv current: the kernel would copy it
    custom = type("Mine", (surrogates.ATan,), {})()
    layer = neurons.LIF(surrogate=custom)
    layer(x)
    assert layer.last_backend == "torch"  # a surrogate of your own: the kernels do not know it
    rlif = RLIF(recurrent=True, shape=(3,))
    rlif(x)
    assert rlif.last_backend == "torch"  # all-to-all keeps its matrix product per step


@pytest.mark.parametrize("make, reason", [
    (lambda: RLIF(recurrent=True, shape=(3,), backend="numba"), "all-to-all"),
    (lambda: neurons.LIF(surrogate=type("Mine", (surrogates.ATan,), {})(), backend="numba"), "not Mine"),
    (lambda: neurons.LIF(backend="cupy"), "auto or torch or numba"),
])
def test_a_backend_that_cannot_run_is_refused(make, reason):
    with pytest.raises(OptionError, match=reason):
        make()


def test_numba_on_another_device_is_refused_at_the_call():
    with pytest.raises(RuntimeError, match="float32 or float64 on a CPU"):
        neurons.LIF(backend="numba")(torch.randn(4, 2, 3, dtype=torch.bfloat16))


def _train(compose, run_dir, *overrides):
    from omegaconf import OmegaConf

    from snnrun.run.assembly import assemble
    from snnrun.run.logger import RunLogger
    from snnrun.run.loop import Trainer

    cfg = compose(*FAST, "device=cpu", "trainer.curve_points=0", "trainer.max_steps=6", *overrides)
    a = assemble(cfg)
    trainer = Trainer(a.parts, a.data, a.options, run_dir=run_dir, logger=RunLogger(run_dir, {}),
                      config=OmegaConf.to_container(cfg, resolve=True))
    return trainer.fit(), backends.used(a.parts.model)


@pytest.mark.parametrize("overrides", [
    ["neuron=lif", "model.arch=FC32-FC10"],
    ["neuron=alif", "model.arch=FC16-RFC16-FC10", "neuron.recurrence=one_to_one", "model.readout_neuron=li",
     "loss=membrane_ce", "readout=membrane"],
    ["neuron=synaptic", "model.arch=8C3-MP2-FC10", "trainer.tbptt=3"],
], ids=["lif", "alif-one-to-one-li", "synaptic-conv-tbptt"])
def test_a_training_run_is_the_same_on_each_backend(compose, tmp_path, overrides):
    """Same seed, same data: the same losses and accuracy on torch and on numba (up to float32 rounding)."""
    ref, used_ref = _train(compose, tmp_path / "torch", *overrides, "neuron.backend=torch")
    got, used_got = _train(compose, tmp_path / "numba", *overrides, "neuron.backend=numba")
    assert used_ref == ["torch"] and used_got == ["numba"]
    assert got["test_acc"] == ref["test_acc"]
    assert got["test_loss"] == pytest.approx(ref["test_loss"], rel=1e-4)


def test_numba_runs_the_neurons_of_a_bf16_network(compose):
    """bf16 runs the weight layers in autocast; the neurons integrate their current in fp32, so an explicit
    neuron.backend=numba runs them, as auto does (it was refused while auto took it)."""
    from snnrun.run.assembly import assemble

    model = assemble(compose(*FAST, "device=cpu", "neuron.backend=numba", "model.precision=bf16")).parts.model
    model(torch.rand(8, 4, 1, 28, 28))
    assert backends.used(model) == ["numba"]


@pytest.mark.parametrize("make", [lambda b: neurons.Synaptic(alpha=0.8, backend=b),
                                  lambda b: ALIF(tau_adapt=4.0, adaptation=0.5, backend=b)], ids=["synaptic", "alif"])
def test_a_current_in_another_memory_layout(make):
    """A conv layer's current may come channels-last (dense, permuted strides): outputs are row-major all the same."""
    torch.manual_seed(0)
    base = torch.randn(9, 2, 5, 6, 3) * 0.8 + 0.4
    out = []
    for backend in ("torch", "numba"):
        x = base.clone().requires_grad_()
        spk, mem = make(backend)(x.permute(0, 1, 4, 2, 3))
        (spk.sum() + (mem * torch.arange(mem.numel()).reshape(mem.shape).sin()).sum()).backward()
        out.append((spk, mem, x.grad))
    assert torch.equal(out[0][0], out[1][0]) and 0 < out[0][0].mean() < 1
    torch.testing.assert_close(out[1][1], out[0][1], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out[1][2], out[0][2], rtol=1e-5, atol=1e-5)


def test_triton_without_a_gpu_is_refused(compose, monkeypatch):
    from snnrun.run.assembly import assemble
    from snnrun.run.rules import ConfigError

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ConfigError, match="neuron.backend='triton'.*on a GPU"):
        assemble(compose(*FAST, "device=cpu", "neuron.backend=triton"))


def test_numba_keeps_the_thread_count_torch_was_given():
    """Numba's first call starts its OpenMP layer, which set OpenMP's thread count, torch's included, to all cores:
    trainer.num_threads=1 ran on two. A fresh process, as the layer starts once per process."""
    pytest.importorskip("numba")
    code = ("import torch; torch.set_num_threads(1); from snnrun.core import numba_ops; numba_ops.set_threads(); "
            "import numba; print(torch.get_num_threads(), numba.get_num_threads())")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.split() == ["1", "1"]


@pytest.mark.parametrize("cls", [neurons.LIF, ALIF])
@pytest.mark.parametrize("reset", ["subtract", "zero"])
def test_the_rectifier_treats_non_finite_currents_as_torch_does(cls, reset):
    """max(U, 0) as torch's clamp: -inf becomes 0, NaN stays NaN (a diverged run shows as one). The sign of a zero
    may differ (torch copies I[0] where a kernel adds it to U = 0: -0.0 becomes 0.0), as assert_close allows."""
    current = torch.tensor([[[-float("inf"), float("nan"), -0.0, 0.5]]]).expand(3, 1, 4).contiguous()
    out = []
    for backend in ("torch", "numba"):
        extra = {"recurrence": "one_to_one", "recurrent": True} if cls is ALIF else {}
        layer = cls(beta=0.9, reset=reset, rectify=True, shape=(4,), backend=backend, **extra)
        with torch.no_grad():
            out.append(layer(current))
    for ref, got in zip(*out):
        torch.testing.assert_close(got, ref, equal_nan=True, rtol=0, atol=0)
    assert out[0][1][-1, 0, 0] == 0 and out[0][1][-1, 0, 1].isnan()


@pytest.mark.parametrize("cls", [neurons.LIF, neurons.Synaptic])
def test_an_empty_sequence_gives_empty_outputs_on_every_backend(cls):
    """T = 0: the kernels' bridges reshaped [0, -1] and failed; the call now runs torch's op (nothing to loop)."""
    layer = cls(beta=0.9, backend="numba")
    x = torch.randn(0, 2, 4, requires_grad=True)
    spk, mem = layer(x)
    (spk.sum() + mem.sum()).backward()
    assert spk.shape == mem.shape == x.grad.shape == (0, 2, 4) and layer.last_backend == "torch"
