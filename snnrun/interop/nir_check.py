"""``task=check_nir``: run a NIR graph through a named reader, unpatched, and compare it with NIR's
definition of the graph (snnrun's own simulation of it, ``nir_path=``), layer by layer.

Each reader is driven as its users drive it: snnTorch's ``import_from_nir`` module and Norse's
``from_nir(graph, dt)`` step by step with their state, Sinabs's ``from_nir`` on the whole
sequence at once. Forward hooks on their neuron modules record each layer's spikes (and the
membrane of a readout that never fires), in the order the layers run.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field

import torch

from .nir_common import NIRError

NEURONS = {  # the module classes whose outputs are a layer's spikes, per reader
    "snntorch": ("Leaky", "Synaptic", "RLeaky", "RSynaptic"),
    "norse": ("LIFBoxCell", "IAFCell", "LIFCell"),  # its CubaLIF is an LI synapse (not hooked) into a LIFBoxCell
    "sinabs": ("LIFSqueeze", "IAFSqueeze", "ExpLeakSqueeze", "LIF", "IAF", "ExpLeak"),
}


@dataclass
class Trace:
    """What one simulator computed: each spiking layer's spikes [T, B, ...] and the readout's membrane."""

    spikes: list = field(default_factory=list)  # per layer, in the order the layers run
    membrane: torch.Tensor | None = None  # the last layer's membrane [T, B, C] where it never fires


def import_graph(reader: str, graph, dt: float, steps: int):
    """The reader's module for ``graph``, built by the reader's own importer (its stdout chatter swallowed)."""
    with contextlib.redirect_stdout(io.StringIO()):
        if reader == "snntorch":
            from snntorch.import_nir import import_from_nir

            return import_from_nir(graph)
        if reader == "norse":
            from norse.torch import from_nir

            return from_nir(graph, dt=dt)
        if reader == "sinabs":
            import sinabs

            return sinabs.from_nir(graph, num_timesteps=steps)
    raise NIRError(f"export.reader={reader}: no reader to run (snntorch, norse or sinabs)")


def _hooks(net, reader: str, calls: list):
    def record(module, _, output):
        spikes = output[0] if isinstance(output, tuple) else output
        membrane = getattr(module, "mem", None)
        if isinstance(output, tuple) and hasattr(output[1], "v"):
            membrane = output[1].v
        if reader == "sinabs":  # its leaky integrator's output is the membrane; its state holds the last step only
            membrane = spikes if "ExpLeak" in type(module).__name__ else None
        calls.append((id(module), spikes.detach().clone(), None if membrane is None else membrane.detach().clone()))

    return [m.register_forward_hook(record) for m in net.modules() if type(m).__name__ in NEURONS[reader]]


def run_reader(reader: str, net, x: torch.Tensor) -> Trace:
    """The reader's module ``net`` on inputs ``x`` [T, B, *shape] -> its Trace."""
    steps, batch = x.shape[:2]
    calls: list = []
    handles = _hooks(net, reader, calls)
    try:
        with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
            if reader == "sinabs":
                import sinabs

                sinabs.reset_states(net)
                net(x.transpose(0, 1).reshape(batch * steps, *x.shape[2:]))
            else:
                for module in net.modules():
                    if hasattr(module, "reset_mem"):
                        module.reset_mem()
                state = None
                for t in range(steps):
                    _, state = net(x[t], state)
    finally:
        for handle in handles:
            handle.remove()
    order = list(dict.fromkeys(key for key, _, _ in calls))
    trace = Trace()
    for key in order:
        spikes = [s for k, s, _ in calls if k == key]
        membranes = [m for k, _, m in calls if k == key]
        if reader == "sinabs":  # one call on [B*T, ...], batch-major: back to [T, B, ...]
            spike, membrane = (None if v is None else v.reshape(batch, steps, *v.shape[1:]).transpose(0, 1)
                               for v in (spikes[0], membranes[0]))
        else:
            spike, membrane = torch.stack(spikes), None if membranes[0] is None else torch.stack(membranes)
        trace.spikes.append(spike)
        trace.membrane = membrane
    return trace


def compare(reference: Trace, names: list[str], theirs: Trace, readout_fires: bool) -> dict:
    """Output spike counts (or a silent readout's membrane) and each layer's spikes, reference against reader."""
    layers, first = [], None
    for i, name in enumerate(names):
        ours = reference.spikes[i]
        other = theirs.spikes[i] if i < len(theirs.spikes) else None
        same = other is not None and other.shape == ours.shape and torch.equal(other.float(), ours.float())
        if not readout_fires and i == len(names) - 1:
            same = other is not None and theirs.membrane is not None and theirs.membrane.shape == reference.membrane.shape \
                and torch.allclose(theirs.membrane.float(), reference.membrane.float(), rtol=1e-4, atol=1e-5)
        layers.append({"layer": name, "reference_spikes": int(ours.sum()),
                       "reader_spikes": None if other is None else int(other.sum()), "identical": bool(same)})
        if not same and first is None:
            first = name
    if readout_fires:
        ours = reference.spikes[-1].sum(0)
        other = theirs.spikes[len(names) - 1].sum(0) if len(theirs.spikes) >= len(names) else None
        differing = ours.numel() if other is None or other.shape != ours.shape else int((other != ours).sum())
        output = {"compared": "output spike counts", "differing": differing, "of": ours.numel()}
    else:
        ours, other = reference.membrane, theirs.membrane
        fits = other is not None and other.shape == ours.shape
        output = {"compared": "readout membranes", "max_abs_difference": float((other - ours).abs().max()) if fits
                  else None, "same_class": bool(fits and torch.equal(other.sum(0).argmax(-1), ours.sum(0).argmax(-1)))}
    return {"output": output, "layers": layers, "first_parting": first, "identical": first is None}
