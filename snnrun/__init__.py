"""snnrun: spiking neural networks trained with surrogate-gradient BPTT.

Layers: ``snnrun.core`` (the spiking core, plain PyTorch), ``snnrun.data`` (datasets and event
recordings), ``snnrun.run`` (assembly, the loop, evaluation, checkpoints, logs, sweeps, the CLI)
and ``snnrun.interop`` (NIR graphs).
"""

__version__ = "0.1.0"
