"""snnrun: spiking neural networks trained with surrogate-gradient BPTT.

Layers: ``snnrun.core`` (the spiking core, plain PyTorch), ``snnrun.data`` (datasets and event
recordings), ``snnrun.run`` (assembly, the loop, evaluation, checkpoints, logs, sweeps, the CLI)
and ``snnrun.interop`` (NIR graphs). ``snnrun.train`` and ``snnrun.evaluate`` run the command's
work from Python.
"""

__version__ = "0.1.0"
__all__ = ["train", "evaluate"]


def __getattr__(name: str):
    """``snnrun.train``/``snnrun.evaluate``, imported on first use: ``import snnrun.core`` stays light."""
    if name in __all__:
        from .run import api

        return getattr(api, name)
    raise AttributeError(f"module 'snnrun' has no attribute {name!r}")
