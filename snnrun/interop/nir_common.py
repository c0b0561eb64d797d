"""What NIR export and import share: the error, the optional ``nir`` package, array conversions."""

from __future__ import annotations

import numpy as np
import torch

class NIRError(ValueError):
    """A network NIR cannot hold, or a file snnrun cannot read as a network."""


def _nir():
    try:
        import nir
    except ImportError:
        raise NIRError("NIR support needs the nir package: pip install 'snnrun[nir]'") from None
    return nir


def _array(value, shape) -> np.ndarray:
    """A neuron parameter (scalar or per neuron) as a float64 array of the layer's shape."""
    return np.broadcast_to(torch.as_tensor(value).detach().double().cpu().numpy(), shape).copy()


def _f32(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()
