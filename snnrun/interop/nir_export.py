"""NIR, the Neuromorphic Intermediate Representation: export an snnrun network, import a graph.

NIR's neurons are continuous-time; snnrun's step t is one forward-Euler step of length dt
(``export.dt``, default 1e-4 s, snnTorch's): v <- v + dt/tau*(v_leak - v + r*I) is
U[t] = beta*U[t-1] + I[t] when tau = dt/(1 - beta) and r = tau/dt.

    lif       LIF(tau=dt/(1-beta), r=tau/dt, v_leak=0, v_threshold=theta, v_reset=0)
    synaptic  CubaLIF(tau_syn=dt/(1-alpha), tau_mem=dt/(1-beta), r=tau_mem/dt, w_in=tau_syn/dt, ...)
    if        IF(r=1/dt, v_threshold=theta, v_reset=0)
    li        LI(tau=dt/(1-beta), r=tau/dt, v_leak=0); with beta = 1 (li of if) I(r=1/dt), the integrator
    rlif      a subgraph input -> lif <-> w_rec (Affine W, c, or Linear diag(v)) -> output
    FC / nCk  Affine(W, b) / Conv2d(stride s, padding p);  AP k  AvgPool2d(k, k, 0);  Flatten(start_dim=0)
    BN        folded into the weight layer before it: s*W, s*(b - mean) + shift, s = gamma/sqrt(var + eps)

NIR resets to v_reset, so only ``reset=zero`` exports exactly. Neuron parameters are written
in float64 (beta survives the round trip bit for bit), weights in the model's float32. A network
with batch norm exports its inference-time function (running statistics); the folded weights
differ from the unfolded computation by float rounding, and a re-imported network has no BN.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..core.neurons import IF, LI, Graded, Synaptic
from ..core.parallel import PSN, FilterLIF, SlidingPSN
from ..core.recurrent import ALIF, RLIF
from ..core.synops import weight_layer
from ..atomic import write_atomic
from .nir_common import NIRError, _array, _f32, _nir
from .nir_readers import READERS, adapt


def exactness(model, precision: str) -> list[str]:
    """What NIR cannot hold exactly, layer by layer, with what to train instead."""
    issues = []
    if precision == "bf16":
        issues.append("model.precision=bf16: the weight layers computed in bfloat16; NIR holds their float32 weights "
                      "(train with model.precision=fp32)")
    for block in model.blocks:
        for module in block.stateless:
            if isinstance(module, nn.MaxPool2d):
                issues.append(f"{block.name}: max pooling has no NIR node; exported as average pooling (train with AP"
                              f"{module.kernel_size} instead of MP{module.kernel_size})")
        neuron = block.neuron
        if isinstance(neuron, (Graded, LI)):
            continue
        if neuron.reset != "zero":
            retrain = "neuron=lif neuron.reset=zero" if isinstance(neuron, FilterLIF) else "neuron.reset=zero"
            issues.append(f"{block.name}: reset={neuron.reset} has no NIR form (NIR neurons reset to v_reset); "
                          f"exported as reset to zero (train with {retrain})")
        if neuron.rectify:
            issues.append(f"{block.name}: rectify (U clamped at 0) has no NIR form; exported without the clamp")
        if isinstance(neuron, ALIF) and neuron.jump:
            issues.append(f"{block.name}: alif's adaptive threshold has no NIR node; exported with the fixed threshold "
                          "theta0 (train with neuron=rlif or lif)")
    return issues


def check_exact(model, precision: str, approximate: bool) -> list[str]:
    """``exactness``, refused (``NIRError``) unless ``approximate``; graded and PSN neurons are refused always."""
    for block in model.blocks:
        if isinstance(block.neuron, Graded):
            raise NIRError(f"{block.name}: graded neurons have no NIR node, not even an approximate one (train with "
                           "neuron=lif neuron.reset=zero)")
        if isinstance(block.neuron, (PSN, SlidingPSN)):
            raise NIRError(f"{block.name}: {type(block.neuron).__name__} mixes its input over many steps with learned "
                           "weights per step (a T x T matrix or k taps); NIR's neurons are dynamical systems with "
                           "their own state, and NIR has no node for such a filter (train with neuron=filter_lif, "
                           "or neuron=lif neuron.reset=zero for an exact export)")
    approximations = exactness(model, precision)
    if approximations and not approximate:
        raise NIRError("NIR cannot represent this network exactly: " + "; ".join(approximations)
                       + ". Retrain as suggested, or write the nearest graph with export.approximate=true")
    return approximations


def _neuron_node(neuron, shape, dt: float, name: str):
    nir = _nir()
    zeros = np.zeros(shape)
    theta = _array(neuron.threshold, shape)
    beta = _array(neuron.beta, shape)
    if isinstance(neuron, LI):
        if np.all(beta == 1):  # no leak (an li readout of if neurons): NIR's integrator, not an LI with tau = inf
            return nir.I(r=np.full(shape, 1 / dt))
        tau = dt / (1 - beta)
        return nir.LI(tau=tau, r=tau / dt, v_leak=zeros)
    if isinstance(neuron, Synaptic) and neuron.alpha:
        if isinstance(neuron, IF) or np.any(beta == 1):
            raise NIRError(f"{name}: an integrate-and-fire neuron with a synaptic current (alpha > 0) has no NIR node "
                           "(train with neuron=synaptic, beta < 1)")
        tau_syn, tau_mem = dt / (1 - np.full(shape, neuron.alpha)), dt / (1 - beta)
        return nir.CubaLIF(tau_syn=tau_syn, tau_mem=tau_mem, r=tau_mem / dt, v_leak=zeros, v_threshold=theta,
                           v_reset=zeros, w_in=tau_syn / dt)
    if np.all(beta == 1):
        return nir.IF(r=np.full(shape, 1 / dt), v_threshold=theta, v_reset=zeros)
    tau = dt / (1 - beta)
    return nir.LIF(tau=tau, r=tau / dt, v_leak=zeros, v_threshold=theta, v_reset=zeros)


def export(model, dt: float = 1e-4, approximate: bool = False, precision: str = "fp32", metadata: dict | None = None,
           reader: str = "nir"):
    """The NIR graph of ``model`` -> (graph, approximations), in the form ``reader`` computes correctly
    (``nir_readers``; "nir": the strict graph). Refuses (``NIRError``) what NIR or the reader cannot
    hold exactly unless ``approximate``; the approximations made are listed in the graph's metadata."""
    nir = _nir()
    if reader not in READERS:
        raise NIRError(f"export.reader={reader!r}: one of {', '.join(READERS)}")
    dt = READERS[reader].dt or dt  # snnTorch assumes 1e-4 s, Sinabs counts tau in steps
    approximations = check_exact(model, precision, approximate)
    nodes = {"input": nir.Input(input_type=np.array(model.input_shape))}
    edges, previous, shape, folded = [], "input", tuple(model.input_shape), []
    for block in model.blocks:
        for module in block.stateless:
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                folded.append(block.name)
                continue
            if isinstance(module, nn.Conv2d):
                node = nir.Conv2d(input_shape=shape[1:], **_folded(block), stride=module.stride, padding=module.padding,
                                  dilation=1, groups=1)
            elif isinstance(module, nn.Flatten):
                node = nir.Flatten(input_type={"input": np.array(shape)}, start_dim=0, end_dim=-1)
            elif isinstance(module, nn.Linear):
                node = nir.Affine(**_folded(block))
            else:  # average pooling, or max pooling approximated by it
                k = module.kernel_size
                node = nir.AvgPool2d(kernel_size=np.array([k, k]), stride=np.array([k, k]), padding=np.array([0, 0]))
            name = f"{block.name}.{type(node).__name__.lower()}"
            nodes[name] = node
            edges.append((previous, name))
            previous = name
        shape = block.out_shape
        neuron = _neuron_node(block.neuron, shape, dt, block.name)
        name = f"{block.name}.neuron"
        if isinstance(block.neuron, RLIF) and block.neuron.recurrence is not None:
            neuron = _recurrent_subgraph(block.neuron, neuron, shape)
            name = f"{block.name}.rnn"
        nodes[name] = neuron
        edges.append((previous, name))
        previous = name
    nodes["output"] = nir.Output(output_type=np.array(shape))
    edges.append((previous, "output"))
    if reader != "nir":
        nodes, edges, changes = adapt(nodes, edges, reader, dt, approximate)
        approximations = approximations + changes
    info = {"producer": "snnrun", "dt": dt, "discretisation": "forward Euler, one step of dt per time step",
            "reader": reader, "read_with": READERS[reader].call,
            "approximations": approximations if approximate else [], "batch_norm_folded": folded, **(metadata or {})}
    graph = nir.NIRGraph(nodes=nodes, edges=edges, metadata={"snnrun": json.dumps(info)})
    return graph, (approximations if approximate else [])


def _folded(block) -> dict:
    """The block's weight and bias as float32 arrays, its batch norm (if any) folded in with the
    running statistics: BN(Wx + b) = (s*W)x + s*(b - mean) + shift, s = gamma / sqrt(var + eps)."""
    layer = weight_layer(block)
    weight, bias = layer.weight.detach().double(), layer.bias.detach().double()
    bn = next((m for m in block.stateless if isinstance(m, nn.modules.batchnorm._BatchNorm)), None)
    if bn is not None:
        scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
        weight = weight * scale.reshape(-1, *[1] * (weight.dim() - 1))
        bias = (bias - bn.running_mean.double()) * scale + bn.bias.detach().double()
    return {"weight": _f32(weight), "bias": _f32(bias)}


def _recurrent_subgraph(neuron, node, shape):
    nir = _nir()
    if neuron.recurrence == "all_to_all":
        w_rec = nir.Affine(weight=_f32(neuron.recurrent_weight), bias=_f32(neuron.recurrent_bias))
    else:
        w_rec = nir.Linear(weight=np.diag(_f32(neuron.recurrent_weight)))
    return nir.NIRGraph(nodes={"input": nir.Input(input_type=np.array(shape)), "lif": node, "w_rec": w_rec,
                               "output": nir.Output(output_type=np.array(shape))},
                        edges=[("input", "lif"), ("lif", "w_rec"), ("w_rec", "lif"), ("lif", "output")])


def write(graph, path: Path) -> None:
    """Write the graph through snnrun's atomic writer: a failed write never leaves a partial file."""
    nir = _nir()
    write_atomic(path, lambda tmp: nir.write(tmp, graph))
