"""The CUDA paths: the fused neuron ops on the GPU against the CPU, a training step in fp32 and
bf16, and the snnrun command on device=cuda. Skipped on machines without a GPU."""

from functools import partial

import numpy as np
import pytest
import torch

from conftest import FAST, read_results, snnrun
from snnrun.core import neurons, surrogates
from snnrun.core.architectures import SpikingNetwork
from snnrun.core.parallel import PSN, FilterLIF, SlidingPSN
from snnrun.core.recurrent import ALIF, RLIF

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

LAYERS = {
    "lif": lambda: neurons.LIF(beta=0.9, learn_beta=True, learn_threshold=True, per_neuron=True, shape=(16,)),
    "synaptic_zero": lambda: neurons.Synaptic(alpha=0.8, beta=0.9, reset="zero", shape=(16,)),
    "rlif": lambda: RLIF(beta=0.9, recurrent=True, learn_beta=True, per_neuron=True, shape=(16,)),
    "alif_one_to_one": lambda: ALIF(tau_adapt=10.0, adaptation=0.5, recurrence="one_to_one", recurrent=True,
                                    learn_threshold=True, shape=(16,)),
    "li": lambda: neurons.LI(beta=0.8, learn_beta=True, per_neuron=True, shape=(16,)),
    "filter_lif_parallel": lambda: FilterLIF(tau=5.0, tau_std=2.0, scan="parallel", block=8, shape=(16,)),
    "filter_lif_auto": lambda: FilterLIF(tau=5.0, tau_std=2.0, shape=(16,)),  # the scan on the GPU, the loop on CPU
    "psn_masked": lambda: PSN(time_steps=30, window=6, shape=(16,)),
    "psn": lambda: PSN(time_steps=30, shape=(16,)),
    "sliding_psn": lambda: SlidingPSN(taps=5, shape=(16,)),
}


@pytest.mark.parametrize("name", LAYERS)
def test_fused_op_on_the_gpu_matches_the_cpu_in_float64(name):
    torch.manual_seed(0)
    layer = LAYERS[name]().double()
    if name == "alif_one_to_one":
        with torch.no_grad():
            layer.recurrent_weight.uniform_(-0.5, 0.5)
    current = torch.randn(30, 8, 16, dtype=torch.float64) + 0.3
    weights = torch.randn(2, 30, 8, 16, dtype=torch.float64)
    out = []
    for device in ("cpu", "cuda"):
        layer.to(device).zero_grad()
        x = current.to(device).detach().requires_grad_()
        spk, mem = layer(x)
        ((spk * weights[0].to(device)).sum() + (mem * weights[1].to(device)).sum()).backward()
        out.append([t.detach().cpu().clone() for t in (spk, mem, x.grad, *(p.grad for p in layer.parameters()))])
    assert torch.equal(out[0][0], out[1][0])
    for a, b in zip(out[0][1:], out[1][1:]):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_csnn_training_step_on_the_gpu(precision):
    torch.manual_seed(0)
    net = SpikingNetwork("8C5-MP2-16C5-MP2-FC10", (1, 28, 28), 10, precision=precision,
                         neuron=partial(neurons.LIF, beta=0.5), surrogate=surrogates.FastSigmoid()).cuda()
    x, y = torch.rand(32, 1, 28, 28, device="cuda"), torch.randint(0, 10, (32,), device="cuda")
    spk, mem = net(x, time_steps=10)
    loss = torch.nn.functional.cross_entropy(mem.mean(0), y)
    loss.backward()
    assert spk.device.type == "cuda" and mem.dtype == torch.float32 and torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


@pytest.mark.e2e
def test_the_command_trains_on_cuda_and_its_checkpoint_exports_on_any_machine(tmp_path):
    snnrun(*FAST, "device=cuda", "neuron.reset=zero", "trainer.max_steps=4", "hydra.run.dir=run", cwd=tmp_path)
    results = read_results(tmp_path / "run")
    assert results["status"] == "ok" and results["steps"] == 4
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert all(t.device.type == "cpu" for t in state["model"].values())
    nir = pytest.importorskip("nir")
    snnrun("task=export", "ckpt_path=run/checkpoints/last.pt", "hydra.run.dir=export", cwd=tmp_path)
    graph = nir.read(tmp_path / "run" / "checkpoints" / "model.nir")
    fc = [w for k, w in state["model"].items() if k.endswith("weight") and w.dim() == 2][-1]  # the readout's
    assert np.array_equal(graph.nodes["L2_FC10.affine"].weight, fc.numpy())


def test_batch_norm_is_synced_across_torchrun_ranks_on_gpus(compose):
    """Under torchrun on GPUs, BN layers become SyncBatchNorm: statistics over the whole global batch."""
    from snnrun.run.assembly import assemble
    from snnrun.run.distributed import World

    cfg = compose("data=synthetic", "data.num_train=64", "data.num_test=16", "data.batch_size=16", "time_steps=2",
                  "model.arch=4C5-BN-MP2-FC10", "device=cuda")
    model = assemble(cfg, World(rank=0, size=2)).parts.model
    assert sum(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules()) == 1
