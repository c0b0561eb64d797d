"""Neuron layers and the pixel-wise network on each backend, beside snnTorch and SpikingJelly, in one command.

    python bench/kernels.py [--workloads lif alif_pixels smnist_pixels on sweep network]
                            [--rounds 3] [--threads 2] [--on-neurons 512] [--device cpu|cuda]

Workloads (forward + backward; every variant of a workload gets the same input and the same
gradient on its spikes, and the variants take turns round after round; medians are reported):

    lif            one LIF layer [100, 64, 4096] (beta 0.9, atan), as in training (fresh outputs each
                   step); and on preallocated memory, the numba kernels alone beside the floor: copying
                   the bytes the op must move (forward reads I and writes S and U, backward reads U and
                   dL/dS and writes dL/dI: six tensors, as three copies)
    alif_pixels    one alif layer with one-to-one recurrence, RFC128, T = 784, batch 64
    smnist_pixels  the pixel-wise layers on [784, 64, 128]: snnrun's alif (one-to-one), rlif
                   (all-to-all) and causal psn beside snnTorch's RLeaky and SpikingJelly's PSN
    on             the Open Neuromorphic benchmark: Linear(n, n) + LIF, batch 16, T = 500
                   (n = 16,384 there, on GPUs; ``--on-neurons``, 512 by default here)
    sweep          alif_pixels on the fastest backend against batch size and width: samples/s
    network        training steps of experiment=smnist_pixels_alif, whole network, per backend, each in a
                   fresh process; ``--before PATH [PATH ...]`` adds earlier snnrun checkouts as the first rows

On ``--device cuda`` the kernel rows are Triton's (``neuron.backend=triton``) and SpikingJelly's LIF
runs once per CUDA implementation it has (its own CUDA kernel and its Triton kernel, chosen by
``SJ_LIF_CUDA_IMPLEMENTATION`` when it is imported, so each in a fresh process that times its rounds
in a row); ``on`` defaults to 16,384 neurons there; ``network`` is CPU-only (``bench/throughput.py
--device cuda`` times the networks on a GPU).

The first call of each variant is timed apart ("first call"): for numba it loads the kernels
from numba's on-disk cache, or compiles them when the cache is cold (Triton: the same with its
cache). Writes bench/results/kernels.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
LIF_SHAPE, PIXELS = (100, 64, 4096), (784, 64, 128)
DEVICE = torch.device("cpu")  # --device; every variant's tensors and modules live there
SJ_CUDA = ("cuda", "triton")  # SpikingJelly 2.0's CUDA implementations of its LIF


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def layer_step(run, shape, seed=0):
    """forward + backward of ``run`` on a fixed current, with a fixed gradient on its spikes."""
    g = torch.Generator().manual_seed(seed)
    current = (torch.randn(shape, generator=g) * 0.5 + 0.3).to(DEVICE)
    grad = torch.randn(shape, generator=g).to(DEVICE)

    def step():
        x = current.detach().requires_grad_()
        torch.autograd.backward(run(x), grad)

    return step


def snnrun_lif(backend):
    from snnrun.core.neurons import LIF
    from snnrun.core.surrogates import ATan

    layer = LIF(beta=0.9, surrogate=ATan(), backend=backend).to(DEVICE)
    return lambda x: layer(x)[0]


def snnrun_alif(backend, n, recurrence="one_to_one"):
    from snnrun.core.recurrent import ALIF, RLIF

    torch.manual_seed(0)
    if recurrence == "all_to_all":
        layer = RLIF(beta=0.9, recurrent=True, shape=(n,), backend=backend)
        with torch.no_grad():
            layer.recurrent_weight.mul_(0.5)
    else:
        layer = ALIF(beta=0.9, tau_adapt=200.0, adaptation=1.8, threshold=0.5, recurrent=True,
                     recurrence="one_to_one", shape=(n,), per_neuron=True, learn_beta=True, backend=backend)
    layer.to(DEVICE)
    return lambda x: layer(x)[0]


def snntorch_loop(layer, recurrent=False):
    """snnTorch's idiom at its fastest: the layer stepped over x.unbind(0)."""
    layer.to(DEVICE)

    def run(x):
        out = []
        if recurrent:
            spk, mem = layer.reset_mem()
        else:
            mem = layer.reset_mem()
        for x_t in x.unbind(0):
            if recurrent:
                spk, mem = layer(x_t, spk, mem)
            else:
                spk, mem = layer(x_t, mem)
            out.append(spk)
        return torch.stack(out)

    return run


def spikingjelly_lif():
    from spikingjelly.activation_based import neuron, surrogate

    layer = neuron.LIFNode(tau=10.0, decay_input=False, v_reset=None, surrogate_function=surrogate.ATan(),
                           detach_reset=True, step_mode="m").to(DEVICE)

    def run(x):
        layer.reset()
        return layer(x)

    return run


def preallocated(shape):
    """The floor and the kernels alone, on preallocated memory (no allocation, no autograd): the copy moves
    the six tensors a LIF op must read and write (forward I -> U, S; backward U, dL/dS -> dL/dI)."""
    import numpy as np

    from snnrun.core import numba_ops, surrogates

    g = np.random.default_rng(0)
    cur = (g.standard_normal(shape, dtype=np.float32) * 0.5 + 0.3).reshape(shape[0], -1)
    grad = g.standard_normal(cur.shape, dtype=np.float32)
    mem, spk, grad_in = (np.empty_like(cur) for _ in range(3))
    beta, thr = np.full(cur.shape[1], 0.9, np.float32), np.ones(cur.shape[1], np.float32)
    kind, p = numba_ops.surrogate_code(surrogates.ATan(), np.float32)
    forward = numba_ops.lif_forward(numba_ops.SUBTRACT, False)
    backward = numba_ops.lif_backward(kind, numba_ops.SUBTRACT, False, False, False, True, False)
    none, no_acc = np.zeros((1, cur.shape[1]), np.float32), np.empty(0, np.float32)

    def copies():
        np.copyto(mem, cur)
        np.copyto(spk, grad)
        np.copyto(grad_in, mem)

    def kernels():
        block = numba_ops.block_size(cur.shape[1])
        forward(cur, beta, thr, mem, spk, block)
        backward(mem, grad, none, beta, thr, p, 0, grad_in, no_acc, no_acc, block)

    return {"copy of the bytes, preallocated (floor)": copies, "snnrun numba kernels alone, preallocated": kernels}


def linear_lif(lif_run, n):
    torch.manual_seed(0)
    linear = torch.nn.Linear(n, n).to(DEVICE)
    return lambda x: lif_run(linear(x))


def kernel_backend() -> str:
    return "triton" if DEVICE.type == "cuda" else "numba"


def spikingjelly_rows(workload, args):
    """SpikingJelly's LIF on each of its CUDA implementations, each in a fresh process:
    name -> (first call, [seconds per round])."""
    rows = {}
    for impl in SJ_CUDA if DEVICE.type == "cuda" and args.spikingjelly and workload in ("lif", "on") else ():
        cmd = [sys.executable, __file__, "--probe-spikingjelly", workload, "--workloads", workload, "--device", "cuda",
               "--rounds", str(args.rounds), "--iters", str(args.iters), "--on-neurons", str(args.on_neurons)]
        env = {**os.environ, "SJ_LIF_CUDA_IMPLEMENTATION": impl}
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if out.returncode:
            print(f"SpikingJelly {impl}: {out.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
            continue
        got = json.loads(out.stdout.strip().splitlines()[-1])
        rows[f"SpikingJelly 2.0 LIFNode ({impl})"] = got["first"], got["seconds"]
    return rows


def probe_spikingjelly(args):
    run = spikingjelly_lif()
    step = (layer_step(run, LIF_SHAPE) if args.probe_spikingjelly == "lif"
            else layer_step(linear_lif(run, args.on_neurons), (500, 16, args.on_neurons)))
    first = timed(step, 1)
    print(json.dumps({"first": first, "seconds": [timed(step, args.iters) for _ in range(args.rounds)]}))


def variants(workload, args):
    """name -> (step, shape of one sample batch for samples/s)."""
    out = {}
    if workload == "lif":
        if args.snntorch:
            import snntorch as snn
            from snntorch import surrogate

            out["snnTorch 1.0 Leaky"] = snntorch_loop(snn.Leaky(beta=0.9, spike_grad=surrogate.atan()))
        if args.spikingjelly and DEVICE.type == "cpu":
            out["SpikingJelly 2.0 LIFNode (torch)"] = spikingjelly_lif()
        out["snnrun lif, torch loop"] = snnrun_lif("torch")
        out[f"snnrun lif, {kernel_backend()} kernel"] = snnrun_lif(kernel_backend())
        floor = preallocated(LIF_SHAPE) if DEVICE.type == "cpu" else {}
        return {**floor, **{k: layer_step(v, LIF_SHAPE) for k, v in out.items()}}
    if workload == "alif_pixels":
        return {f"snnrun alif RFC128 one-to-one, {b}": layer_step(snnrun_alif(b, 128), PIXELS)
                for b in ("torch", kernel_backend())}
    if workload == "smnist_pixels":
        from snnrun.core.parallel import PSN

        out[f"snnrun alif one-to-one, {kernel_backend()}"] = snnrun_alif(kernel_backend(), 128)
        out["snnrun rlif all-to-all, torch"] = snnrun_alif("torch", 128, "all_to_all")
        if args.snntorch:
            import snntorch as snn
            from snntorch import surrogate

            torch.manual_seed(0)
            rleaky = snn.RLeaky(beta=0.9, linear_features=128, spike_grad=surrogate.atan())
            out["snnTorch 1.0 RLeaky all-to-all"] = snntorch_loop(rleaky, recurrent=True)
        psn = PSN(time_steps=784, window=784).to(DEVICE)
        out["snnrun psn causal (window 784)"] = lambda x: psn(x)[0]
        if args.spikingjelly:
            from spikingjelly.activation_based import neuron

            sj = neuron.PSN(T=784).to(DEVICE)
            out["SpikingJelly 2.0 PSN (T 784)"] = lambda x: sj(x.flatten(1)).reshape(x.shape)
        return {k: layer_step(v, PIXELS) for k, v in out.items()}
    if workload == "on":
        shape = (500, 16, args.on_neurons)
        if args.snntorch:
            import snntorch as snn
            from snntorch import surrogate

            out["snnTorch 1.0"] = linear_lif(snntorch_loop(snn.Leaky(beta=0.9, spike_grad=surrogate.atan())),
                                             args.on_neurons)
        if args.spikingjelly and DEVICE.type == "cpu":
            out["SpikingJelly 2.0 (torch)"] = linear_lif(spikingjelly_lif(), args.on_neurons)
        out["snnrun torch loop"] = linear_lif(snnrun_lif("torch"), args.on_neurons)
        out[f"snnrun {kernel_backend()} kernel"] = linear_lif(snnrun_lif(kernel_backend()), args.on_neurons)
        return {k: layer_step(v, shape) for k, v in out.items()}
    raise ValueError(workload)


def network_rows(args):
    """Training steps of smnist_pixels_alif, each variant timed in its own process (``--before``: earlier
    snnrun checkouts, the first the baseline), variants taking turns round after round."""
    trees = [("before: " + _describe(tree), tree, None) for tree in args.before or ()] + [
        ("now, neuron.backend=torch", str(HERE.parent), "torch"), ("now, neuron.backend=numba", str(HERE.parent), "numba")]
    times = {label: [] for label, _, _ in trees}
    first = {}
    for _ in range(args.rounds):
        for label, tree, backend in trees:
            cmd = [sys.executable, __file__, "--probe-network", backend or "default", "--iters", str(args.iters),
                   "--threads", str(args.threads)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": tree})
            got = json.loads(out.stdout.strip().splitlines()[-1])
            first.setdefault(label, got["first"])
            times[label].append(got["seconds"])
    return first, {label: statistics.median(t) for label, t in times.items()}


def _describe(tree: str) -> str:
    rev = subprocess.run(["git", "-C", tree, "log", "-1", "--format=%h %cs"], capture_output=True, text=True).stdout
    return rev.strip() or tree


WARM_UP = 3  # untimed steps after the first call of the network workload


def probe_network(args):
    step = network_step(None if args.probe_network == "default" else args.probe_network)
    first = timed(step, 1)
    timed(step, WARM_UP)  # the heap grows to its steady size (keep_freed_memory) over the first steps
    print(json.dumps({"first": first, "seconds": timed(step, args.iters)}))


def pixels_network(backend=None):
    """experiment=smnist_pixels_alif's config and network, built as the snnrun command builds them (seed 0)."""
    from hydra import compose, initialize_config_dir

    from snnrun.run.assembly import _part
    from snnrun.run.cli import config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=smnist_pixels_alif"]
                      + ([f"neuron.backend={backend}"] if backend else []))
    torch.manual_seed(0)
    return cfg, _part(cfg, "model", input_shape=(1,), num_classes=10, neuron=_part(cfg, "neuron"),
                      surrogate=_part(cfg, "surrogate"))


def network_step(backend):
    """One training step of experiment=smnist_pixels_alif (its network, loss and optimiser) on a fixed batch
    of 784-step sequences."""
    from snnrun.run.assembly import _part

    cfg, model = pixels_network(backend)
    loss_fn, optimizer = _part(cfg, "loss"), _part(cfg, "optimizer")(model.parameters())
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(784, 64, 1, generator=g), torch.randint(0, 10, (64,), generator=g)

    def step():
        spk, mem = model(x)
        loss = loss_fn(spk, mem, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def timed(step, iters):
    sync()
    tic = time.perf_counter()
    for _ in range(iters):
        step()
    sync()
    return (time.perf_counter() - tic) / iters


def sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def measure(steps, args, external=None):
    """Medians of ``steps`` taking turns round after round; ``external``: rows timed elsewhere, merged in."""
    first = {name: timed(step, 1) for name, step in steps.items()}
    times = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            times[name].append(timed(step, args.iters))
    for name, (once, seconds) in (external or {}).items():
        first[name], times[name] = once, seconds
    return first, {name: statistics.median(t) for name, t in times.items()}


def sweep(args):
    rows = ["| batch \\ width | " + " | ".join(str(w) for w in args.widths) + " |",
            "|---" * (len(args.widths) + 1) + "|"]
    for batch in args.batches:
        cells = []
        for width in args.widths:
            step = layer_step(snnrun_alif(kernel_backend(), width), (784, batch, width))
            step()
            cells.append(f"{batch / statistics.median(timed(step, args.iters) for _ in range(args.rounds)):,.0f}")
        rows.append(f"| {batch} | " + " | ".join(cells) + " |")
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", nargs="+", help="default: all of them (on --device cuda: all but network)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iters", type=int, default=3, help="steps per timing")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--on-neurons", type=int, help="default 512 on the CPU, 16,384 on a GPU")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--widths", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--before", nargs="+", help="earlier snnrun checkouts: the network workload's first rows "
                        "(the first is the baseline)")
    parser.add_argument("--probe-network", help=argparse.SUPPRESS)
    parser.add_argument("--probe-spikingjelly", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(HERE / "results" / "kernels.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    global DEVICE
    DEVICE = torch.device(args.device)
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    if args.workloads is None:
        args.workloads = ["lif", "alif_pixels", "smnist_pixels", "on", "sweep"] + (["network"] if DEVICE.type == "cpu"
                                                                                 else [])
    if DEVICE.type == "cuda" and "network" in args.workloads:
        parser.error("the network workload runs on the CPU; bench/throughput.py --device cuda times the networks")
    args.on_neurons = args.on_neurons or (16384 if DEVICE.type == "cuda" else 512)
    from snnrun.run.cli import keep_freed_memory

    keep_freed_memory()  # as the snnrun command does, for every variant alike
    if args.probe_network:
        return probe_network(args)
    args.spikingjelly = _imports("spikingjelly.activation_based.neuron")
    if args.probe_spikingjelly:
        return probe_spikingjelly(args)
    args.snntorch = _imports("snntorch")
    lines = [f"{time.strftime('%Y-%m-%d')}, {machine(args)}; {args.iters} steps per timing x {args.rounds} "
             "alternating rounds, median.", ""]
    for workload in args.workloads:
        if workload == "sweep":
            lines += ["", f"alif_pixels (one-to-one alif, T = 784) on {kernel_backend()}, training samples/s "
                      "(forward + backward):",
                      "", *sweep(args)]
            continue
        first, median = (network_rows(args) if workload == "network" else
                         measure(variants(workload, args), args, spikingjelly_rows(workload, args)))
        base = next(iter(median.values()))
        batch = {"lif": 64, "alif_pixels": 64, "smnist_pixels": 64, "on": 16, "network": 64}[workload]
        lines += ["", f"**{workload}**", "", "| variant | first call (s) | ms per step | samples/s | vs first row |",
                  "|---|---|---|---|---|"]
        for name, sec in median.items():
            lines.append(f"| {name} | {first[name]:.2f} | {1000 * sec:.1f} | {batch / sec:,.0f} | {base / sec:.2f}x |")
        print("\n".join(lines[-len(median) - 2:]), flush=True)
    text = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


def machine(args) -> str:
    where = (f"{cpu_name()} (torch CPU capability {torch.backends.cpu.get_cpu_capability()}), "
             f"{args.threads} threads")
    if DEVICE.type == "cuda":
        import triton

        return f"{torch.cuda.get_device_name()} ({where}); torch {torch.__version__}, Triton {triton.__version__}"
    import numba

    return f"{where}; torch {torch.__version__}, numba {numba.__version__}"


def _imports(module: str) -> bool:
    try:
        __import__(module)
        return True
    except ImportError:
        return False


if __name__ == "__main__":
    main()
