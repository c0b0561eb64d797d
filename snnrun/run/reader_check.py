"""``snnrun task=check_nir nir_path=... export.reader=...``: does a reader compute what the graph says?

The graph is run two ways on the first ``export.check_samples`` test samples, encoded as a run
would encode them: by snnrun, which follows NIR's definition (the network ``nir_path=`` builds),
and by the reader's own importer, unpatched. It reports whether the reader imports the graph,
the output spike counts (or a silent readout's membranes) against the definition, and the first
layer where the two part; results.json holds the same. Exit 0 when they agree, 1 when not.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from ..data.datasets import batches
from ..interop import nir_check
from ..interop.nir_common import _nir
from ..interop.nir_readers import READERS
from .evaluation import evaluating, generator_for

log = logging.getLogger("snnrun")


class ReaderMismatch(RuntimeError):
    """The reader does not import the graph, or computes something else."""


def _steps(encoder, x: torch.Tensor, time_steps: int, generator) -> torch.Tensor:
    """The network's input at each step, [T, B, ...], as a run feeds it (a static encoder's as its broadcast)."""
    return x.transpose(0, 1) if encoder is None else encoder(x, time_steps, generator)


def _failed(result: dict, status: str, what: str, err: Exception, title: str, path) -> dict:
    detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    result.update(status=status, imports=status != "not_imported", runs=False, error=f"{type(err).__name__}: {detail}")
    log.error("%s %s %s: %s", title, what, path, result["error"])
    return result


def check(cfg, assembly) -> dict:
    """Run the graph through snnrun and through ``export.reader`` -> the comparison (also logged)."""
    nir = _nir()
    reader = READERS[cfg.export.reader]
    graph = nir.read(Path(str(cfg.nir_path)).expanduser())
    info = json.loads(str(graph.metadata.get("snnrun", "{}"))) if isinstance(graph.metadata, dict) else {}
    dt = float(info.get("dt", cfg.export.dt))
    model = assembly.parts.model.cpu()
    x, _ = next(batches(assembly.data.test, cfg.export.check_samples))
    x = x.cpu()
    inputs = _steps(assembly.parts.encoder, x, cfg.time_steps, generator_for(cfg.seed, x.device))
    with evaluating(model, record=True):
        _, membrane = model(inputs)
        recorded = dict(zip(model.layer_names, model.recorded))
    names = [n for n in model.layer_names if n in model.spiking_layers]
    fires = getattr(model, "readout_neuron", "same") != "li"
    if not fires:
        names.append(model.layer_names[-1])
    reference = nir_check.Trace([recorded.get(n, torch.zeros(0)) for n in names], membrane)
    result = {"status": "ok", "task": "check_nir", "nir_path": str(cfg.nir_path), "reader": reader.name,
              "written_for": info.get("reader", "unknown (not written by snnrun)"), "dt": dt,
              "samples": len(x), "time_steps": cfg.time_steps}
    try:
        net = nir_check.import_graph(reader.name, graph, dt, cfg.time_steps)
    except ImportError as err:
        raise ReaderMismatch(f"{reader.title} is not installed here ({err}); pip install 'snnrun[nir-readers]'") from None
    except Exception as err:  # the reader's own failure, whatever it raises, is the finding
        return _failed(result, "not_imported", "does not import", err, reader.title, cfg.nir_path)
    try:
        theirs = nir_check.run_reader(reader.name, net, inputs)
    except Exception as err:
        return _failed(result, "not_run", "imports but cannot run", err, reader.title, cfg.nir_path)
    result.update(imports=True, runs=True, **nir_check.compare(reference, names, theirs, fires))
    if not result["identical"]:
        result["status"] = "differs"
    for layer in result["layers"]:
        log.info("%-24s snnrun %8s spikes   %s %8s   %s", layer["layer"], layer["reference_spikes"], reader.title,
                 layer["reader_spikes"], "same" if layer["identical"] else "DIFFERENT")
    out = result["output"]
    log.info("%s imports %s; %s: %s; %s", reader.title, cfg.nir_path, out["compared"],
             f"{out['differing']} of {out['of']} differ" if "differing" in out else
             f"max |difference| {out['max_abs_difference']}, same class: {out['same_class']}",
             "identical to NIR's definition" if result["identical"] else f"first parts at {result['first_parting']}")
    return result
