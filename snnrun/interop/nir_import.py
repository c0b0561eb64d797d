"""Read a NIR graph (snnrun's or another library's) as an snnrun network, or refuse it with the reason.

The inverse of ``snnrun.interop.nir_export``: a chain of weight layers, pooling and neurons
becomes an architecture string, a neuron config and the values to load. A recurrent layer is
a cycle through an Affine (all-to-all) or a diagonal Linear (one-to-one) node.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..core.neurons import Synaptic
from ..core.synops import weight_layer
from .nir_common import NIRError, _nir
from .nir_readers import NO_LEAK_TAU

@dataclass
class Layer:
    """One snnrun block read from a graph: a weight layer, its pooling, its neuron."""

    token: str
    weight: np.ndarray
    bias: np.ndarray
    neuron: object
    pool: int = 0
    recurrent: object = None  # the w_rec node of a recurrent layer
    gain: float | np.ndarray = 1.0  # one step's input gain r*dt/tau: one number, or one per output unit (row)

    def scaled(self, values: np.ndarray) -> np.ndarray:
        """``values`` (a weight, bias or recurrent weight of this layer, rows = output units) times the gain."""
        if np.ndim(self.gain) == 0:
            return values * self.gain
        return values * np.asarray(self.gain).reshape(-1, *[1] * (np.ndim(values) - 1))


@dataclass
class Imported:
    """A NIR graph as an snnrun network: the config it needs and the values to load into it."""

    arch: str
    input_shape: tuple
    neuron: dict
    readout_neuron: str
    layers: list = field(repr=False)
    dt: float = 1e-4
    dt_from_graph: bool = False  # the dt in the graph's snnrun metadata, which wins over export.dt

    def load_into(self, model) -> None:
        """Copy the graph's weights, decays, thresholds and recurrent weights into the built model."""
        with torch.no_grad():
            for layer, block in zip(self.layers, model.blocks):
                weight = weight_layer(block)
                weight.weight.copy_(torch.from_numpy(layer.scaled(layer.weight)).to(weight.weight))
                weight.bias.copy_(torch.from_numpy(layer.scaled(layer.bias)).to(weight.bias))
                _load_neuron(block.neuron, layer, self.dt)


def _load_neuron(neuron, layer: Layer, dt: float) -> None:
    node = layer.neuron
    shape = neuron.param_shape
    tau = getattr(node, "tau_mem", getattr(node, "tau", None))
    if tau is not None:
        beta = torch.from_numpy(np.asarray(1 - dt / np.asarray(tau, dtype=np.float64))).reshape(shape)
        target = neuron.beta_logit if hasattr(neuron, "beta_logit") else neuron.beta_value
        target.copy_(torch.logit(beta.double()) if hasattr(neuron, "beta_logit") else beta)
    if isinstance(node, _nir().I):  # an integrator readout: beta = 1
        if hasattr(neuron, "beta_logit"):
            raise NIRError("an I (integrator) readout into a learned-decay LI, whose beta = sigmoid(w) never reaches 1")
        neuron.beta_value.fill_(1.0)
    if hasattr(node, "v_threshold"):
        neuron.log_threshold.copy_(torch.from_numpy(np.log(np.asarray(node.v_threshold, dtype=np.float64))).reshape(shape))
    if isinstance(neuron, Synaptic) and hasattr(node, "tau_syn"):
        neuron.alpha = float(1 - dt / float(np.asarray(node.tau_syn).flat[0]))
    if layer.recurrent is not None:  # the loop's current enters through the same gain r*dt/tau as the layer's
        w = layer.scaled(np.asarray(layer.recurrent.weight, dtype=np.float64)).astype(np.float32)
        if neuron.recurrence == "one_to_one":
            neuron.recurrent_weight.copy_(torch.from_numpy(np.diag(w).copy()))
        else:
            neuron.recurrent_weight.copy_(torch.from_numpy(w))
            bias = getattr(layer.recurrent, "bias", None)
            neuron.recurrent_bias.copy_(torch.from_numpy(np.zeros(len(w), np.float32) if bias is None
                                                         else layer.scaled(np.asarray(bias, np.float64)).astype(np.float32)))


def read(path: str | Path, dt: float = 1e-4) -> Imported:
    """Read a NIR file (snnrun's or another library's) as an snnrun network, or refuse it."""
    nir = _nir()
    path = Path(path).expanduser()
    if not path.is_file():
        raise NIRError(f"nir_path={path}: no such file")
    try:
        graph = nir.read(path)
    except Exception as err:  # h5py, nir's own asserts: the file is not a NIR graph
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise NIRError(f"nir_path={path}: not a readable NIR file ({detail})") from None
    info = graph.metadata.get("snnrun") if isinstance(graph.metadata, dict) else None
    if info is not None:
        dt = float(json.loads(str(info)).get("dt", dt))
    try:
        imported = _interpret(graph, dt)
    except NIRError as err:
        raise NIRError(f"nir_path={path}: {err}") from None
    imported.dt_from_graph = info is not None
    return imported


def _chain(graph) -> list:
    """The nodes from the input to the output, in order; a recurrent neuron (its cycle through
    a weight node, flat or in a subgraph) becomes one ("rnn", neuron, w_rec) entry."""
    nir = _nir()
    nodes, edges = graph.nodes, list(graph.edges)
    succ: dict[str, list[str]] = {}
    for a, b in edges:
        succ.setdefault(a, []).append(b)
    pred: dict[str, list[str]] = {}
    for a, b in edges:
        pred.setdefault(b, []).append(a)
        if a == b:
            raise NIRError(f"node {a!r} feeds itself; snnrun reads a recurrence as a cycle through a weight node "
                           "(neuron -> Affine or Linear -> neuron)")
    loops = {}  # neuron name -> its recurrent weight node name: a weight node fed by the neuron alone, feeding it alone
    for a, b in edges:
        if ((b, a) in edges and isinstance(nodes[a], (nir.Affine, nir.Linear)) and pred.get(a) == [b]
                and succ.get(a) == [b]):
            loops[b] = a
    starts = [n for n, node in nodes.items() if isinstance(node, nir.Input)]
    if len(starts) != 1:
        raise NIRError(f"the graph has {len(starts)} input nodes; snnrun reads graphs with one input")
    order, current, seen = [], starts[0], set()
    while True:
        seen.add(current)
        node = nodes[current]
        if isinstance(node, nir.NIRGraph):
            inner = _chain(node)
            order.extend(e for e in inner if not isinstance(e, (nir.Input, nir.Output)))
        elif current in loops:
            order.append(("rnn", node, nodes[loops[current]]))
        elif not isinstance(node, nir.Input):
            order.append(node)
        back = [b for b in succ.get(current, []) if b in seen and b != loops.get(current)]
        if back:
            raise NIRError(f"an edge from {current!r} back to {back[0]!r} makes a cycle that is not a recurrent layer "
                           "(snnrun reads a cycle only between a neuron and a weight node that the neuron alone feeds)")
        nxt = [b for b in succ.get(current, []) if b not in seen and b != loops.get(current)]
        if isinstance(node, nir.Output) or not nxt:
            break
        if len(nxt) > 1:
            raise NIRError(f"node {current!r} feeds {len(nxt)} nodes; snnrun reads chains of layers (no branches)")
        current = nxt[0]
    if not isinstance(node, nir.Output):
        raise NIRError("the graph does not end in an output node")
    return order


def _names(graph, prefix: str = "") -> dict[int, str]:
    """Each node object's name in the file (a subgraph's nodes as ``outer.inner``), for the messages."""
    nir = _nir()
    names = {}
    for name, node in graph.nodes.items():
        names[id(node)] = prefix + name
        if isinstance(node, nir.NIRGraph):
            names.update(_names(node, f"{prefix}{name}."))
    return names


def _interpret(graph, dt: float) -> Imported:
    nir = _nir()
    chain = _chain(graph)
    names = _names(graph)
    source = next(node for node in graph.nodes.values() if isinstance(node, nir.Input))  # _chain checked: exactly one
    input_shape = tuple(int(v) for v in np.asarray(source.input_type["input"]))
    layers: list[Layer] = []
    pending = None
    for entry in chain:
        node = entry[1] if isinstance(entry, tuple) else entry
        kind = type(node).__name__
        where = f"{kind} node {names.get(id(node), '?')!r}"
        if isinstance(entry, nir.Output):
            break
        if isinstance(node, nir.Flatten):
            continue
        if isinstance(node, (nir.Affine, nir.Linear, nir.Conv2d)):
            if pending is not None:
                raise NIRError(f"two weight layers follow each other without a neuron between them ({where}); "
                               "snnrun's layers are weight -> pooling -> neuron")
            pending = _weight_layer(node)
        elif isinstance(node, (nir.AvgPool2d, nir.SumPool2d)):
            if pending is None or not pending.token[0].isdigit():
                raise NIRError(f"pooling must follow a convolution (snnrun's conv -> pool -> neuron): {where}")
            pending.pool = _pool_size(node)
            if isinstance(node, nir.SumPool2d):  # a sum of k*k values is k*k times their average
                pending.weight, pending.bias = pending.weight * pending.pool ** 2, pending.bias * pending.pool ** 2
        elif isinstance(node, (nir.LIF, nir.CubaLIF, nir.IF, nir.LI, nir.I)):
            if pending is None:
                raise NIRError(f"a neuron without a weight layer before it: {where}")
            pending.neuron, pending.gain = node, _input_gain(node, dt, len(pending.bias), where)
            if isinstance(entry, tuple):
                if not pending.token.startswith("FC"):
                    raise NIRError(f"a recurrent convolution ({where}); snnrun's recurrent layers (RFC) are fully "
                                   "connected")
                pending.recurrent, pending.token = entry[2], "R" + pending.token
            layers.append(pending)
            pending = None
        else:
            raise NIRError(f"unsupported node: {where}; snnrun reads Affine, Linear, Conv2d, AvgPool2d, Flatten and "
                           "LIF, CubaLIF, IF, LI and I (readout) neurons (recurrent ones as a cycle through Affine or "
                           "Linear)")
    if pending is not None or not layers:
        raise NIRError("the graph ends without a neuron layer")
    last = layers[-1].neuron
    if isinstance(last, (nir.LIF, nir.IF)) and np.all(np.isinf(np.asarray(last.v_threshold))):
        layers[-1].neuron = _never_fires(last)  # a LIF or IF that never fires is NIR's LI or I
    readout = "li" if isinstance(layers[-1].neuron, (nir.LI, nir.I)) else "same"
    hidden = {type(layer.neuron).__name__ for layer in (layers[:-1] if readout == "li" else layers)} or {"LIF"}
    if hidden & {"LI", "I"}:
        raise NIRError("an LI or I (non-spiking) node before the last layer; snnrun uses them only as the readout")
    if len(hidden) > 1:
        raise NIRError(f"neurons of several kinds ({', '.join(sorted(hidden))}); an snnrun network has one kind")
    kind = hidden.pop()
    for layer in layers:
        _check_neuron(layer.neuron, dt, names.get(id(layer.neuron), "?"))
    recurrent = [layer.recurrent for layer in layers if layer.recurrent is not None]
    target = {"LIF": "snnrun.core.neurons.LIF", "CubaLIF": "snnrun.core.neurons.Synaptic", "IF": "snnrun.core.neurons.IF"}[kind]
    neuron = {"_target_": target, "_partial_": True, "reset": "zero", "per_neuron": True}
    if recurrent:
        if kind != "LIF":
            raise NIRError(f"a recurrent {kind} layer; snnrun's recurrent layers are LIF (rlif)")
        one_to_one = [_is_diagonal(w) for w in recurrent]
        if len(set(one_to_one)) > 1:
            raise NIRError("recurrent layers of both kinds (all-to-all and one-to-one); snnrun uses one per network")
        neuron.update({"_target_": "snnrun.core.recurrent.RLIF", "recurrence": "one_to_one" if one_to_one[0] else "all_to_all"})
    arch = "-".join(layer.token + (f"-AP{layer.pool}" if layer.pool else "") for layer in layers)
    return Imported(arch, input_shape, neuron, readout, layers, dt)


def _never_fires(node):
    """A LIF (or IF) whose threshold is infinite as the LI (or I) it computes (readers without LI write these)."""
    nir = _nir()
    if isinstance(node, nir.IF) or np.all(np.asarray(node.tau, np.float64) >= NO_LEAK_TAU):
        return nir.I(r=np.asarray(node.r, np.float64) * (1.0 if isinstance(node, nir.IF) else
                                                         1 / np.asarray(node.tau, np.float64)))
    return nir.LI(tau=node.tau, r=node.r, v_leak=node.v_leak)


def _weight_layer(node) -> Layer:
    nir = _nir()
    weight = np.asarray(node.weight, dtype=np.float64)
    if isinstance(node, nir.Conv2d):
        k = weight.shape[-1]
        stride, padding = (np.broadcast_to(np.asarray(v), (2,)) if not isinstance(v, str) else v
                           for v in (node.stride, node.padding))
        square = (weight.shape[-2] == k and not isinstance(padding, str) and stride[0] == stride[1]
                  and padding[0] == padding[1] and int(padding[0]) < k)
        if not square or np.any(np.asarray(node.dilation) != 1) or int(node.groups) != 1:
            raise NIRError(f"a Conv2d with stride {node.stride}, padding {node.padding}, dilation {node.dilation}, groups "
                           f"{node.groups} and kernel {list(weight.shape[-2:])}; snnrun's {{n}}C{{k}}p{{p}}s{{s}} layers "
                           "are square, with the same stride and padding (< k) along both axes, no dilation or groups")
        bias = np.asarray(node.bias, dtype=np.float64) if node.bias is not None else np.zeros(weight.shape[0])
        token = f"{weight.shape[0]}C{k}" + (f"p{int(padding[0])}" if padding[0] else "") + (
            f"s{int(stride[0])}" if stride[0] != 1 else "")
        return Layer(token, weight, np.broadcast_to(bias, (weight.shape[0],)).copy(), None)
    bias = np.asarray(node.bias, dtype=np.float64) if isinstance(node, nir.Affine) else np.zeros(weight.shape[0])
    return Layer(f"FC{weight.shape[0]}", weight, bias, None)


def _pool_size(node) -> int:
    k, s, p = (np.atleast_1d(np.asarray(v)).astype(int) for v in (node.kernel_size, node.stride, node.padding))
    if len(set(k.tolist())) != 1 or not np.array_equal(np.broadcast_to(s, k.shape), k) or np.any(p != 0):
        raise NIRError(f"{type(node).__name__}(kernel {k.tolist()}, stride {s.tolist()}, padding {p.tolist()}); snnrun's AP{{k}} "
                       "pools k x k with stride k and no padding")
    return int(k[0])


def _input_gain(node, dt: float, units: int, where: str) -> float | np.ndarray:
    """How much one step scales the input current: r*dt/tau (1 for snnTorch-style graphs); folded into the
    weights before the neuron: one number, or one per output unit of the weight layer (a row of an Affine, a
    channel of a Conv2d, where the gain is the same over the channel's pixels)."""
    nir = _nir()
    if isinstance(node, (nir.IF, nir.I)):
        gain = np.asarray(node.r, dtype=np.float64) * dt
    elif isinstance(node, nir.CubaLIF):
        gain = (np.asarray(node.r, np.float64) * dt / np.asarray(node.tau_mem, np.float64)
                * np.asarray(node.w_in, np.float64) * dt / np.asarray(node.tau_syn, np.float64))
    else:
        gain = np.asarray(node.r, dtype=np.float64) * dt / np.asarray(node.tau, dtype=np.float64)
    gain = np.broadcast_to(gain, np.shape(gain) or (1,))
    if np.allclose(gain, gain.flat[0], rtol=1e-9, atol=0):
        g = float(gain.flat[0])
        return 1.0 if math.isclose(g, 1.0, rel_tol=1e-9) else g
    rows = gain.reshape(units, -1) if gain.size % units == 0 else None  # [C, H, W] -> a row per channel
    if rows is None or not np.allclose(rows, rows[:, :1], rtol=1e-9, atol=0):
        raise NIRError(f"{where}: an input gain r*dt/tau that differs within one output unit of the weight layer "
                       "before it (a conv channel's pixels); snnrun folds the gain into that layer's rows")
    return rows[:, 0].copy()


def _check_neuron(node, dt: float, where: str) -> None:
    nir = _nir()
    name = f"{type(node).__name__} ({where!r})"
    if np.any(np.asarray(getattr(node, "v_leak", 0)) != 0):
        raise NIRError(f"a {name} with v_leak != 0; snnrun's neurons leak towards 0")
    if np.any(np.asarray(getattr(node, "v_reset", 0)) != 0):
        raise NIRError(f"a {name} with v_reset != 0; snnrun's neurons reset to 0")
    tau = getattr(node, "tau_mem", getattr(node, "tau", None))
    if tau is not None and np.any(np.asarray(tau, np.float64) <= dt):
        raise NIRError(f"a {name} with tau {float(np.min(tau)):g} s <= dt {dt:g} s: one step would give beta = 1 - dt/tau "
                       "<= 0 (an unstable, sign-flipping membrane); read it at the graph's own time step (export.dt)")
    if isinstance(node, nir.CubaLIF) and np.any(np.asarray(node.tau_syn, np.float64) <= dt):
        raise NIRError(f"a {name} with tau_syn <= dt {dt:g} s: the synaptic decay 1 - dt/tau_syn would be <= 0")
    threshold = getattr(node, "v_threshold", None)
    if threshold is not None and np.any(np.asarray(threshold, np.float64) <= 0):
        raise NIRError(f"a {name} with v_threshold {float(np.min(threshold)):g} <= 0; snnrun's thresholds are positive "
                       "(a neuron at rest would fire at every step)")
    if isinstance(node, nir.CubaLIF) and len(np.unique(np.asarray(node.tau_syn))) > 1:
        raise NIRError("a CubaLIF whose tau_syn differs between neurons; snnrun's synaptic decay alpha is one per layer")


def _is_diagonal(node) -> bool:
    w = np.asarray(node.weight)
    return getattr(node, "bias", None) is None and w.ndim == 2 and np.count_nonzero(w - np.diag(np.diag(w))) == 0
