"""Checkpoints: the format, the atomic write, the safe read, and the check that one fits a model.

A checkpoint is a plain dict of tensors and containers saved with ``torch.save``: the model,
optimiser and scheduler states, the step, the RNG states, the architecture, the input shape
and the run's config, marked with ``format``. It is read with ``weights_only=True``, so a
file can never run code, and refused with a ``CheckpointError`` that names the file when it
is not a readable snnrun checkpoint or does not fit the configured model.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import torch

FORMAT = "snnrun-checkpoint-1"


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, or does not fit the configured model."""


def save(path: Path, state: dict) -> None:
    """Write via a temporary file, fsync and rename: a crash mid-write leaves the previous file intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": FORMAT, **state}, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load(path: str | Path) -> dict:
    """Load with ``weights_only=True``: tensors and plain containers only, never code."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"ckpt_path={path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"ckpt_path={path}: not a readable snnrun checkpoint ({first})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"ckpt_path={path}: not an snnrun checkpoint (no '{FORMAT}' marker)")
    return state


def check_fits(state: dict, model, path) -> None:
    """Refuse a checkpoint of another architecture, input shape or set of parameters."""
    if state.get("arch") != model.arch or tuple(state.get("input_shape", ())) != model.input_shape:
        raise CheckpointError(f"ckpt_path={path} holds a {state.get('arch')} network for "
                              f"{state.get('input_shape')} inputs, but the config builds {model.arch} for "
                              f"{list(model.input_shape)}; use the same model, e.g. model.arch={state.get('arch')}")
    differ = set(model.state_dict()) ^ set(state["model"])
    if differ:
        raise CheckpointError(f"ckpt_path={path} does not fit this configuration's model "
                              f"(parameters that differ: {', '.join(sorted(differ)[:5])}); "
                              "use the neuron options it was trained with")


def check_data(state: dict, dataset, path) -> None:
    """Refuse a checkpoint trained on other data tensors (e.g. another pixel permutation)."""
    saved = state.get("data", {})
    for key, tensor in dataset.meta.items():
        if key in saved and not torch.equal(saved[key], tensor):
            seed = state.get("config", {}).get("data", {}).get("permutation_seed")
            raise CheckpointError(f"ckpt_path={path} was trained with another data {key} than this configuration's"
                                  + (f"; use the one it was trained with: data.permutation_seed={seed}"
                                     if key == "permutation" else ""))


@contextmanager
def restoring(path):
    """Turn a state that fails to load into the model, optimiser or scheduler into a CheckpointError."""
    try:
        yield
    except (RuntimeError, KeyError, ValueError) as err:
        raise CheckpointError(f"ckpt_path={path} does not fit this configuration: "
                              f"{str(err).splitlines()[0]}") from None
