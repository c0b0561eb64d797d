"""snnrun: spiking neural networks trained with surrogate-gradient BPTT."""

from . import architectures, encoders, losses, neurons, surrogates

__all__ = ["architectures", "encoders", "losses", "neurons", "surrogates"]
__version__ = "0.1.0"
