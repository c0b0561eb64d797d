"""Training throughput of snnrun against snnTorch on the same networks, measured side by side.

    python bench/throughput.py [--iters 20] [--rounds 3] [--threads 2] [--device cpu]
                               [--workloads dense csnn25 csnn50 lif rlif] [--data /path/to/datasets]

Both libraries train the same network (weights copied from snnrun's into snnTorch's, and their
outputs checked equal before timing) with the same neuron, surrogate, loss, optimiser, batch,
T and thread count. Variants take turns, round after round, so drift in the machine's speed
hits all of them alike; each figure is the median over rounds. Peak memory is measured per
variant in a fresh subprocess (growth of the peak RSS over three training steps on CPU,
``torch.cuda.max_memory_allocated`` on a GPU). The ``lif`` and ``rlif`` workloads time one neuron
layer alone (``rlif``: snnTorch's RLeaky with snnrun's all-to-all recurrent weights); snnTorch runs
its layer in a loop over ``x.unbind(0)``, its fastest idiom (indexing ``x[t]`` makes backward write
a full-size gradient at every step). SpikingJelly 2.0 (``pip install 'snnrun[bench]'``) runs the
same layers as its multi-step idiom: ``SeqToANNContainer`` over T*B and ``LIFNode(step_mode="m",
decay_input=False, v_reset=None)``, tau = 1/(1 - beta), the first weight layer computed once for a
static image; its soft reset subtracts theta within the step instead of at the next one, so its
spikes differ from snnTorch's and are not compared. Writes bench/results/throughput.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from kernels import cpu_name
from torch.nn import functional as F

HERE = Path(__file__).resolve().parent

# workload -> (snnrun preset, overrides)
WORKLOADS = {
    "dense": ("tutorial5_dense", ["time_steps=25"]),
    "csnn25": ("tutorial6_csnn", ["time_steps=25"]),
    "csnn50": ("tutorial6_csnn", ["time_steps=50"]),
}
# variant -> extra snnrun overrides (None: another library)
VARIANTS = {
    "snnTorch 1.0": None,
    "SpikingJelly 2.0": None,
    "snnrun step-by-step autograd": ["neuron.fused=false"],
    "snnrun fp32, torch loop": ["neuron.backend=torch"],
    "snnrun fp32": [],  # neuron.backend=auto: the numba kernels on a CPU where numba imports
    "snnrun bf16": ["model.precision=bf16"],
}
LIF_SHAPE = (100, 64, 4096)
RLIF_SHAPE = (100, 64, 512)
LAYERS = ("lif", "rlif")  # workloads that time one neuron layer alone


def compose(workload: str, overrides: list[str]):
    from hydra import compose as hydra_compose, initialize_config_dir
    from snnrun.run.cli import config_dir

    preset, extra = WORKLOADS[workload]
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return hydra_compose("config", overrides=[f"experiment={preset}", *extra, *overrides])


def snntorch_model(model, cfg):
    """The tutorial-style snnTorch network (a Python loop over T) with snnrun's weights."""
    import snntorch as snn
    from snntorch import surrogate

    spike_grad = (surrogate.atan(alpha=cfg.surrogate.alpha) if "alpha" in cfg.surrogate
                  else surrogate.fast_sigmoid(slope=cfg.surrogate.slope))
    beta, T = cfg.neuron.beta, cfg.time_steps
    layers = [block.stateless for block in model.blocks]

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weights = torch.nn.ModuleList([_copy(s) for s in layers])
            self.lifs = torch.nn.ModuleList([snn.Leaky(beta=beta, spike_grad=spike_grad) for _ in layers])

        def forward(self, x):
            mems = [lif.init_leaky() for lif in self.lifs]
            spk_rec, mem_rec = [], []
            for _ in range(T):
                h = x
                for i, (w, lif) in enumerate(zip(self.weights, self.lifs)):
                    h, mems[i] = lif(w(h), mems[i])
                spk_rec.append(h)
                mem_rec.append(mems[-1])
            return torch.stack(spk_rec), torch.stack(mem_rec)

    return Net().to(next(model.parameters()).device)


def spikingjelly_model(model, cfg):
    """SpikingJelly's multi-step network with snnrun's weights: each weight layer over all T*B
    samples at once (SeqToANNContainer), then a multi-step LIFNode (a torch loop over T on CPU)."""
    from spikingjelly.activation_based import layer, neuron, surrogate

    spike_grad = (surrogate.ATan(alpha=cfg.surrogate.alpha) if "alpha" in cfg.surrogate
                  else surrogate.SuperSpike(alpha=cfg.surrogate.slope))  # SuperSpike's is the fast sigmoid's
    tau, T = 1 / (1 - cfg.neuron.beta), cfg.time_steps
    layers = [block.stateless for block in model.blocks]

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.first = _copy(layers[0])
            self.weights = torch.nn.ModuleList([layer.SeqToANNContainer(*_copy(s)) for s in layers[1:]])
            self.lifs = torch.nn.ModuleList([  # only the output layer keeps its membranes (for the loss)
                neuron.LIFNode(tau=tau, decay_input=False, v_reset=None, surrogate_function=spike_grad,
                               detach_reset=True, step_mode="m", store_v_seq=i == len(layers) - 1)
                for i in range(len(layers))])

        def forward(self, x):
            h = self.first(x)  # static image: the first weight layer once, its current repeated over T
            h = self.lifs[0](h.unsqueeze(0).repeat(T, *[1] * h.dim()))
            for w, lif in zip(self.weights, self.lifs[1:]):
                h = lif(w(h))
            mem = self.lifs[-1].v_seq
            for lif in self.lifs:
                lif.reset()  # functional.reset_net: the next batch starts from rest
            return h, mem

    return Net().to(next(model.parameters()).device)


def _copy(stateless):
    """A plain NCHW copy of one weight layer and its pooling (snnTorch's tutorials use no channels_last)."""
    layer = copy.deepcopy(stateless)
    return layer.to(memory_format=torch.contiguous_format)


def snntorch_loss(cfg):
    """The tutorials' losses: sum_t CE(U[t], y) (tutorial 5), snnTorch's ce_rate_loss (tutorial 6)."""
    from snntorch import functional as SF

    if cfg.loss._target_.endswith("MembraneCE"):
        return lambda spk, mem, y: sum(F.cross_entropy(m, y) for m in mem)
    rate = SF.ce_rate_loss()
    return lambda spk, mem, y: rate(spk, y)


def same_network(workload: str, variant: str, spikes: torch.Tensor, reference: torch.Tensor, device) -> None:
    """Refuse to time a variant that is not snnTorch's network: on a CPU its spikes are snnTorch's to the bit; on
    a GPU a spike may flip where a membrane sits within a rounding of the threshold (Triton fuses U*beta + I into
    one multiply-add, cuDNN picks its own algorithms), so one in 10,000 may differ."""
    differ = (spikes != reference).float().mean().item()
    if differ > (1e-4 if device.type == "cuda" else 0.0):
        raise SystemExit(f"{workload}: {variant} and snnTorch disagree before training on {differ:.2%} of the spikes; "
                         "not the same network")
    if differ:
        print(f"{workload}: {variant}: {differ:.5%} of the spikes differ from snnTorch's (roundings)", file=sys.stderr)


def make_variant(workload: str, variant: str, device: torch.device, batch: tuple[torch.Tensor, torch.Tensor]):
    """-> (one training step, the output spike counts on ``batch`` before training)."""
    from snnrun.run.assembly import assemble

    extra = VARIANTS[variant]
    x, y = batch
    # snnrun assembles the network as the snnrun command does (seed 0); the data it trains on is ``batch``
    cfg = compose(workload, [*(extra or []), "data=synthetic", f"data.num_train={len(y)}", "data.num_test=1",
                             f"data.batch_size={len(y)}", f"device={device}", "seed=0"])
    parts = assemble(cfg).parts
    model, loss_fn, T = parts.model, parts.loss, cfg.time_steps
    if extra is None:
        model = (spikingjelly_model if variant.startswith("SpikingJelly") else snntorch_model)(model, cfg)
        loss_fn = snntorch_loss(cfg)
        forward = model
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optimizer.lr)
    else:
        forward = lambda x: model(x, time_steps=T)  # noqa: E731  (direct input: static)
        optimizer = parts.optimizer

    def step():
        spk, mem = forward(x)
        loss = loss_fn(spk, mem, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    with torch.no_grad():
        spikes = forward(x)[0].sum(0)
    return step, spikes


def make_layer(workload: str, variant: str, device: torch.device):
    """One neuron layer alone, forward + backward on [T, B, N]: ``lif`` (LIF_SHAPE) or ``rlif``
    (RLIF_SHAPE, all-to-all recurrent weights copied from snnrun's into snnTorch's RLeaky)."""
    if variant == "snnrun bf16" or (variant.startswith("SpikingJelly") and workload == "rlif"):
        return None, None  # SpikingJelly has no recurrent LIF layer of RLeaky's form
    shape = LIF_SHAPE if workload == "lif" else RLIF_SHAPE
    gen = torch.Generator().manual_seed(0)
    current = (torch.randn(shape, generator=gen) * 0.5 + 0.3).to(device)
    weights = torch.randn(shape, generator=gen).to(device)
    from snnrun.core.neurons import LIF
    from snnrun.core.recurrent import RLIF
    from snnrun.core.surrogates import ATan

    fused = VARIANTS[variant] is None or "neuron.fused=false" not in VARIANTS[variant]
    backend = "torch" if VARIANTS[variant] and "neuron.backend=torch" in VARIANTS[variant] else "auto"
    if workload == "lif":
        ours = LIF(beta=0.9, surrogate=ATan(), fused=fused, backend=backend).to(device)
    else:
        torch.manual_seed(0)
        ours = RLIF(beta=0.9, surrogate=ATan(), recurrent=True, shape=shape[-1:], fused=fused,
                    backend=backend).to(device)
        with torch.no_grad():
            ours.recurrent_weight.mul_(0.5)  # keeps the layer's firing moderate
    if variant.startswith("SpikingJelly"):
        from spikingjelly.activation_based import neuron, surrogate

        layer = neuron.LIFNode(tau=10.0, decay_input=False, v_reset=None, surrogate_function=surrogate.ATan(),
                               detach_reset=True, step_mode="m").to(device)  # beta = 1 - 1/tau = 0.9

        def run(x):
            layer.reset()
            return layer(x)
    elif VARIANTS[variant] is None:
        import snntorch as snn
        from snntorch import surrogate

        if workload == "lif":
            layer = snn.Leaky(beta=0.9, spike_grad=surrogate.atan()).to(device)
        else:
            layer = snn.RLeaky(beta=0.9, linear_features=shape[-1], spike_grad=surrogate.atan()).to(device)
            with torch.no_grad():
                layer.recurrent.weight.copy_(ours.recurrent_weight)
                layer.recurrent.bias.copy_(ours.recurrent_bias)

        def run(x):  # the loop over x.unbind(0): backward writes one step's gradient, not a full-size one per step
            out = []
            if workload == "lif":
                mem = layer.reset_mem()
                for x_t in x.unbind(0):
                    spk, mem = layer(x_t, mem)
                    out.append(spk)
            else:
                spk, mem = layer.reset_mem()
                for x_t in x.unbind(0):
                    spk, mem = layer(x_t, spk, mem)
                    out.append(spk)
            return torch.stack(out)
    else:
        def run(x):
            return ours(x)[0]

    def step():
        x = current.detach().requires_grad_()
        (run(x) * weights).sum().backward()

    with torch.no_grad():
        spikes = run(current).sum(0)
    return step, spikes


def numba_version() -> str:
    try:
        import numba
    except ImportError:
        return "no numba (neuron.backend=auto runs torch)"
    return f"numba {numba.__version__}"


def timed(step, iters: int, device: torch.device) -> float:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    tic = time.perf_counter()
    for _ in range(iters):
        step()
    sync()
    return time.perf_counter() - tic


def batch_for(args, device):
    g = torch.Generator().manual_seed(0)
    if args.data:
        from snnrun.data.datasets import torchvision_dataset

        train = torchvision_dataset("MNIST", args.data, download=False).train
        idx = torch.randperm(len(train), generator=g)[: args.batch]
        return (train.inputs[idx].float() / 255).to(device), train.labels[idx].to(device)
    return (torch.rand(args.batch, 1, 28, 28, generator=g).to(device),
            torch.randint(0, 10, (args.batch,), generator=g).to(device))


def peak_memory(workload: str, variant: str, args) -> float:
    """MiB a few training steps add on top of what the built model and data hold (fresh process)."""
    cmd = [sys.executable, __file__, "--probe", workload, variant, "--device", args.device,
           "--threads", str(args.threads), "--batch", str(args.batch)] + (["--data", args.data] if args.data else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_mib"]


def probe(args) -> None:
    device = torch.device(args.device)
    workload, variant = args.probe
    if workload in LAYERS:
        step = make_layer(workload, variant, device)[0]
    else:
        step = make_variant(workload, variant, device, batch_for(args, device))[0]
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: reset the peak RSS (VmHWM) to the current RSS
        base = _status_kib("VmRSS")
    for _ in range(3):
        step()
    if device.type == "cuda":
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak = (_status_kib("VmHWM") - base) / 1024
    print(json.dumps({"peak_mib": peak}))


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status (peak memory on CPU needs Linux)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", nargs="+", default=["dense", "csnn25", "csnn50", "lif", "rlif"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--iters", type=int, default=20, help="training steps per timing")
    parser.add_argument("--lif-iters", type=int, default=3, help="steps per timing of the LIF layer alone")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; the median is reported")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--data", default=None, help="folder holding MNIST/raw (default: random images)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--probe", nargs=2, metavar=("WORKLOAD", "VARIANT"), help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(HERE / "results" / "throughput.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.device == "cpu":
        from snnrun.run.cli import keep_freed_memory

        keep_freed_memory()  # as the snnrun command does; the same process setting for every variant
    if args.probe:
        return probe(args)
    device = torch.device(args.device)
    batch = batch_for(args, device)
    rows = [f"Device: {device.type}"
            + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else f" ({cpu_name()}, torch capability "
               f"{torch.backends.cpu.get_cpu_capability()}), {args.threads} threads")
            + f"; torch {torch.__version__}; {numba_version()}; batch {args.batch}; {args.iters} steps (LIF: {args.lif_iters}) x "
            f"{args.rounds} rounds, median.",
            "", "| workload | variant | samples/s (LIF: ms/step) | vs snnTorch | peak memory (MiB) |", "|---|---|---|---|---|"]
    for workload in args.workloads:
        steps, reference = {}, None
        for variant in args.variants:
            if workload in LAYERS:
                step, spikes = make_layer(workload, variant, device)
                if step is None:
                    continue
            else:
                step, spikes = make_variant(workload, variant, device, batch)
            if variant == "snnTorch 1.0":
                reference = spikes
            elif variant.startswith("snnrun") and variant != "snnrun bf16" and reference is not None:
                same_network(workload, variant, spikes, reference, device)
            step()  # warm-up
            steps[variant] = step
        seconds = {v: [] for v in steps}
        for _ in range(args.rounds):
            for variant, step in steps.items():
                iters = args.lif_iters if workload in LAYERS else args.iters
                seconds[variant].append(timed(step, iters, device) / iters)
        median = {v: statistics.median(s) for v, s in seconds.items()}
        base = median.get("snnTorch 1.0")
        for variant, sec in median.items():
            speed = f"{1000 * sec:.1f} ms" if workload in LAYERS else f"{args.batch / sec:.0f}"
            ratio = f"{base / sec:.2f}x" if base else "-"
            mem = "-" if args.no_memory else f"{peak_memory(workload, variant, args):.0f}"
            rows.append(f"| {workload} | {variant} | {speed} | {ratio} | {mem} |")
            print(rows[-1], flush=True)
    table = "\n".join(rows)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
