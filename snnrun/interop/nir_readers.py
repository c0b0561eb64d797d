"""Reader profiles (``export.reader``): the graph each NIR reader computes as snnrun's network does.

``nir`` is the strict graph. The others rewrite it, node by node, into a graph that still means
the same network under NIR's own definition (forward Euler at the graph's dt) and that the
named reader's ``from_nir`` computes correctly, unpatched:

    snntorch  snnTorch 1.0 ``import_from_nir``: dt is 1e-4 (hard-coded there); Flatten(start_dim=-3);
              IF as LIF(tau=1e300, r=1e304) (its IF is a leaky neuron); LI as LIF(v_threshold=inf), the
              membrane read from the module; a recurrent bias folded into the Affine before the loop
              (nirtorch feeds the loop zeros at t=0); one threshold per layer
    norse     Norse 1.1 ``from_nir(graph, dt=dt)``: it ignores r, so LIF has r=1 and the gain moves to
              the threshold (theta*dt/tau) or, for an LI readout, to the weights (tau/dt); AvgPool2d
              (which it drops) as SumPool2d with the conv before it divided by k*k; Flatten(start_dim=-3);
              the recurrent bias folded as for snnTorch
    sinabs    Sinabs 3.x ``from_nir``: its LIF and IF fire several spikes per step at v >= theta and
              reset by subtraction, so no spiking layer is exact; with export.approximate its native
              graph (tau in steps, dt=1, r=1) is written and each change listed. No recurrence, no LIF
              after a convolution (its reader refuses their parameter arrays), no CubaLIF.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .nir_common import NIRError, _nir


@dataclass(frozen=True)
class Reader:
    name: str
    title: str
    dt: float | None  # the dt this reader assumes (None: export.dt, passed to it)
    call: str  # how to run the graph there


READERS = {
    "nir": Reader("nir", "NIR", None, "any reader that follows NIR's definition, at the metadata's dt"),
    "snntorch": Reader("snntorch", "snnTorch 1.0", 1e-4, "snntorch.import_nir.import_from_nir(graph) (dt 1e-4 fixed)"),
    "norse": Reader("norse", "Norse 1.1", None, "norse.torch.from_nir(graph, dt=<the metadata's dt>)"),
    "sinabs": Reader("sinabs", "Sinabs 3.x", 1.0, "sinabs.from_nir(graph, num_timesteps=T) (tau in steps)"),
}


def _layer(name: str) -> str:
    return name.split(".")[0]


def _padded(name: str, width: int) -> str:
    """``L9_FC64.neuron`` -> ``L09_FC64.neuron``: file readers list nodes alphabetically, and nirtorch
    needs the node feeding a subgraph listed before it."""
    return re.sub(r"^L(\d+)_", lambda m: f"L{int(m.group(1)):0{width}d}_", name)


def _flatten(node):
    nir = _nir()
    shape = np.asarray(node.input_type["input"])
    return nir.Flatten(input_type={"input": shape}, start_dim=-len(shape), end_dim=-1)


def _uniform(values) -> bool:
    flat = np.asarray(values, dtype=np.float64).ravel()
    return bool(np.all(flat == flat[0]))


NO_LEAK_TAU, NO_LEAK_R = 1e300, 1e304  # a LIF of tau = 1e300 s leaks nothing in float64; r*dt/tau = 1 at dt = 1e-4


def _no_leak(threshold, shape_like):
    """NIR's IF (or, with an infinite threshold, its integrator I) as a LIF of no leak, for snnTorch."""
    ones = np.ones_like(np.asarray(shape_like, np.float64))
    return _nir().LIF(tau=NO_LEAK_TAU * ones, r=NO_LEAK_R * ones, v_leak=0 * ones, v_threshold=threshold * ones,
                      v_reset=0 * ones)


def _sum_pool(rw, name: str, node):
    """AvgPool2d as SumPool2d of the conv before it divided by k*k (for readers that drop average pooling)."""
    nir = _nir()
    prev = rw.weight_before(name, (nir.Conv2d,))
    k = np.asarray(node.kernel_size)
    rw.nodes[prev] = _rescale(rw.nodes[prev], 1.0 / float(np.prod(k)))
    return nir.SumPool2d(kernel_size=k, stride=node.stride, padding=node.padding)


def _rescale(node, factor):
    """An Affine or Conv2d with each output's weight and bias times ``factor`` (a number or one per output)."""
    nir = _nir()
    factor = np.asarray(factor, dtype=np.float64)
    weight = np.asarray(node.weight, dtype=np.float64)
    rows = factor.reshape(-1, *[1] * (weight.ndim - 1)) if factor.ndim else factor
    bias = np.asarray(node.bias, dtype=np.float64) * (factor.reshape(-1) if factor.ndim else factor)
    f32 = {"weight": (weight * rows).astype(np.float32), "bias": bias.astype(np.float32)}
    if isinstance(node, nir.Conv2d):
        return nir.Conv2d(input_shape=node.input_shape, stride=node.stride, padding=node.padding,
                          dilation=node.dilation, groups=node.groups, **f32)
    return nir.Affine(**f32)


class _Rewrite:
    """The strict graph's chain, rewritten in place for one reader."""

    def __init__(self, nodes: dict, edges: list, reader: str, approximate: bool):
        self.nodes, self.edges = dict(nodes), list(edges)
        self.before = {b: a for a, b in self.edges}
        self.reader, self.approximate = reader, approximate
        self.approximations: list[str] = []
        self.title = READERS[reader].title

    def refuse(self, name: str, why: str, fix: str):
        raise NIRError(f"export.reader={self.reader}: {_layer(name)}: {why} ({self.title}); {fix}")

    def approximation(self, name: str, what: str) -> None:
        if not self.approximate:
            self.refuse(name, what, "there is no exact graph for this reader; export.approximate=true writes the "
                                    "nearest one and lists what changes")
        self.approximations.append(f"{_layer(name)}: {what}")

    def weight_before(self, name: str, kinds: tuple) -> str:
        prev = self.before.get(name)
        if prev is None or not isinstance(self.nodes[prev], kinds):
            self.refuse(name, f"a {type(self.nodes[name]).__name__} that does not follow a weight layer",
                        "export with export.reader=nir")
        return prev

    def fold_recurrent_bias(self, name: str, sub):
        """A loop's Affine(W, c) -> Linear(W), with c added to the bias of the Affine before the loop."""
        nir = _nir()
        w_rec = sub.nodes["w_rec"]
        if isinstance(w_rec, nir.Affine):
            prev = self.weight_before(name, (nir.Affine,))
            node = self.nodes[prev]
            self.nodes[prev] = nir.Affine(weight=node.weight, bias=(np.asarray(node.bias, np.float64)
                                                                    + np.asarray(w_rec.bias, np.float64)).astype(np.float32))
            w_rec = nir.Linear(weight=w_rec.weight)
        return w_rec

    def padded(self) -> tuple[dict, list]:
        """The nodes and edges named so that alphabetical order is the chain's: zero-padded block numbers, and a
        block's weight, flatten and pooling nodes numbered in their order (``L01_FC32.0_flatten`` before
        ``L01_FC32.1_affine``; snnTorch's importer needs a recurrent layer's inputs listed before it)."""
        width = max(2, len(str(sum(1 for n in self.nodes if n.endswith((".neuron", ".rnn"))))))
        after = {a: b for a, b in self.edges}
        renamed, node, count = {}, "input", {}
        while node in after:
            node = after[node]
            block, _, kind = node.partition(".")
            if kind and kind not in ("neuron", "rnn"):
                count[block] = count.get(block, -1) + 1
                renamed[node] = f"{block}.{count[block]}_{kind}"
        def name(n: str) -> str:
            return _padded(renamed.get(n, n), width)

        return {name(n): node for n, node in self.nodes.items()}, [(name(a), name(b)) for a, b in self.edges]


def _snntorch(rw: _Rewrite, name: str, node):
    nir = _nir()
    if isinstance(node, (nir.LIF, nir.IF)) and not _uniform(node.v_threshold):
        rw.refuse(name, "per-neuron thresholds; its importer takes one threshold per layer (the first neuron's)",
                  "train with one threshold per layer (neuron.per_neuron=false)")
    if isinstance(node, (nir.IF, nir.I)):  # snnTorch reads IF as a leaky neuron with subtract reset: a LIF of no leak
        if not np.allclose(np.asarray(node.r, np.float64) * 1e-4, 1.0):
            rw.refuse(name, f"an {type(node).__name__} whose input gain r*dt is not 1", "export with export.reader=nir")
        return _no_leak(np.asarray(node.v_threshold, np.float64) if isinstance(node, nir.IF) else np.inf, node.r)
    if isinstance(node, nir.LI):  # no LI node in its importer: a LIF that never fires is the same neuron
        tau = np.asarray(node.tau, np.float64)
        return nir.LIF(tau=tau, r=node.r, v_leak=node.v_leak, v_threshold=np.full(tau.shape, np.inf),
                       v_reset=np.zeros(tau.shape))
    return node


def _norse(rw: _Rewrite, name: str, node, dt: float):
    nir = _nir()
    if isinstance(node, nir.LIF):  # Norse reads r as 1: the gain dt/tau lands on the input, so scale the threshold
        tau = np.asarray(node.tau, np.float64)
        return nir.LIF(tau=tau, r=np.ones_like(tau), v_leak=node.v_leak,
                       v_threshold=np.asarray(node.v_threshold, np.float64) * dt / tau, v_reset=node.v_reset)
    if isinstance(node, (nir.LI, nir.I)):  # dropped by Norse's reader: a LIF that never fires, gain in the weights
        prev = rw.weight_before(name, (nir.Affine,))
        if isinstance(node, nir.I):
            ones = np.ones_like(np.asarray(node.r, np.float64))
            return nir.IF(r=node.r, v_threshold=np.inf * ones, v_reset=0 * ones)
        tau = np.asarray(node.tau, np.float64)  # Norse's step adds dt/tau*I: the weights carry r, NIR's gain r*dt/tau
        rw.nodes[prev] = _rescale(rw.nodes[prev], np.asarray(node.r, np.float64))
        return nir.LIF(tau=tau, r=np.ones_like(tau), v_leak=node.v_leak, v_threshold=np.full(tau.shape, np.inf),
                       v_reset=np.zeros(tau.shape))
    if isinstance(node, nir.AvgPool2d):  # dropped by Norse's reader
        return _sum_pool(rw, name, node)
    return node


def _sinabs(rw: _Rewrite, name: str, node, dt: float):
    nir = _nir()
    if isinstance(node, nir.CubaLIF):
        rw.refuse(name, "a CubaLIF (synaptic) layer, which its reader drops", "train with neuron=lif")
    if isinstance(node, (nir.LIF, nir.IF)):
        if np.asarray(node.v_threshold).ndim > 1:
            rw.refuse(name, "spiking neurons after a convolution: its reader refuses their [C, H, W] parameter arrays",
                      "export a dense network, or use export.reader=snntorch or norse")
        rw.approximation(name, "its LIF/IF fire several spikes per step at v >= theta and reset by subtraction "
                               "(MultiSpike, MembraneSubtract), and its IF clamps v at -theta, where snnrun fires one "
                               "spike at U > theta and resets to 0")
    # its decay is exp(-1/tau) per step and it adds the input unscaled: tau = -1/ln(beta) steps; r = tau, which its
    # reader ignores, keeps NIR's meaning of the file (input gain r*dt/tau = 1, decay 1 - 1/tau ~ beta)
    if isinstance(node, nir.LIF):
        tau = -1 / np.log(1 - dt / np.asarray(node.tau, np.float64))
        rw.approximation(name, "its decay exp(-1/tau) per step is beta, where NIR's Euler step of the same tau "
                               "decays by 1 - 1/tau (a reader that follows NIR leaks slightly more)")
        return nir.LIF(tau=tau, r=tau, v_leak=node.v_leak, v_threshold=node.v_threshold, v_reset=node.v_reset)
    if isinstance(node, nir.LI):
        tau = -1 / np.log(1 - dt / np.asarray(node.tau, np.float64))
        return nir.LI(tau=tau, r=tau, v_leak=node.v_leak)
    if isinstance(node, nir.I):
        rw.refuse(name, "an integrator (I) readout, which its reader has no node for", "use model.readout_neuron=li "
                  "with beta < 1")
    if isinstance(node, nir.AvgPool2d):
        return _sum_pool(rw, name, node)
    return node


def adapt(nodes: dict, edges: list, reader: str, dt: float, approximate: bool) -> tuple[dict, list, list[str]]:
    """The strict graph's ``nodes`` and ``edges`` (written at ``dt``) rewritten for ``reader`` -> (nodes,
    edges, approximations); refuses (NIRError) what the reader cannot hold."""
    nir = _nir()
    rw = _Rewrite(nodes, edges, reader, approximate)
    rewrite = {"snntorch": lambda n, node: _snntorch(rw, n, node), "norse": lambda n, node: _norse(rw, n, node, dt),
               "sinabs": lambda n, node: _sinabs(rw, n, node, dt)}[reader]
    for name in list(rw.nodes):
        node = rw.nodes[name]
        if isinstance(node, nir.Flatten):
            rw.nodes[name] = _flatten(node)
        elif isinstance(node, nir.NIRGraph):  # a recurrent layer: input -> lif <-> w_rec -> output
            if reader == "sinabs":
                rw.refuse(name, "a recurrent layer: its layers compute all steps in one call, so a loop never "
                                "feeds back", "train a feed-forward network, or use export.reader=snntorch or norse")
            w_rec = rw.fold_recurrent_bias(name, node)
            lif = rewrite(name, node.nodes["lif"])  # Norse: the loop's current passes the layer's gain too
            rw.nodes[name] = nir.NIRGraph(nodes={**node.nodes, "lif": lif, "w_rec": w_rec}, edges=list(node.edges))
        elif not isinstance(node, (nir.Input, nir.Output)):
            rw.nodes[name] = rewrite(name, node)
    return (*rw.padded(), rw.approximations)
