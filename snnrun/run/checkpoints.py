"""Checkpoints: the format, the atomic write, the safe read, and the check that one fits a model.

A checkpoint is a plain dict of tensors and containers saved with ``torch.save``: the model and
optimiser states, the run's progress (``snnrun.run.records.Progress``), the RNG states, the
architecture, the input shape and the run's config, marked with ``format``. The learning-rate
schedule is not saved: a resume rebuilds it for its own plan. Checkpoints of the first format
are read too (``_upgrade``). It is read with ``weights_only=True``, so a
file can never run code, and refused with a ``CheckpointError`` that names the file when it
is not a readable snnrun checkpoint or does not fit the configured model.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch

from ..atomic import write_atomic

FORMAT = "snnrun-checkpoint-2"
# where configs of the first format name snnrun's modules, and where those live now
MOVED = {"snnrun.neurons.": "snnrun.core.neurons.", "snnrun.recurrent.": "snnrun.core.recurrent.",
         "snnrun.surrogates.": "snnrun.core.surrogates.", "snnrun.encoders.": "snnrun.core.encoders.",
         "snnrun.architectures.": "snnrun.core.architectures.", "snnrun.losses.": "snnrun.core.losses.",
         "snnrun.data.": "snnrun.data.datasets.", "snnrun.events.": "snnrun.data.events.",
         "snnrun.training.": "snnrun.run.schedules."}


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, or does not fit the configured model."""


def save(path: Path, state: dict) -> None:
    """Write atomically (``snnrun.atomic``): a crash mid-write leaves the previous file intact."""
    write_atomic(path, lambda tmp: torch.save({"format": FORMAT, **state}, tmp))


def random_state(generator: torch.Generator) -> dict:
    """The random streams a run draws from: torch's, CUDA's (where there is CUDA) and the encoder's."""
    rng = {"torch": torch.get_rng_state(), "encoder": generator.get_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def set_random_state(rng: dict, generator: torch.Generator) -> bool:
    """Restore the streams a run drew from; False where the encoder's was saved on another kind of device (a
    CUDA generator's state is not a CPU one's), which the caller then seeds afresh. CUDA's streams are restored
    for the GPUs both machines have."""
    torch.set_rng_state(rng["torch"])
    if torch.cuda.is_available():
        for index, state in enumerate(rng.get("cuda", [])[:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(state, index)
    if rng["encoder"].numel() != generator.get_state().numel():
        return False
    generator.set_state(rng["encoder"])
    return True


def _moved(node):
    """A first-format config with its ``_target_`` paths where the modules live now."""
    if isinstance(node, dict):
        return {k: _moved(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_moved(v) for v in node]
    if isinstance(node, str):
        for old, new in MOVED.items():
            if node.startswith(old) and not node.startswith(new):
                return new + node[len(old):]
    return node


def _upgrade(state: dict) -> dict:
    """A first-format checkpoint as the current format: its bookkeeping gathered into ``progress``
    (its time to accuracy was not saved, its clock starts at 0) and its config's module paths moved."""
    progress = {"step": state.pop("step"), "best_test_acc": state.pop("best_test_acc", -1.0),
                "best": dict(state.pop("best", {})), "reached": {}, "window": dict(state.pop("window")), "wall_s": 0.0}
    state.pop("scheduler", None)
    if progress["best"]:
        split = "val" if "val_acc" in progress["best"] else "test"
        progress["best"] = {"split": split, **progress["best"]}
    return {**state, "format": FORMAT, "progress": progress, "config": _moved(state.get("config") or {})}


def load(path: str | Path) -> dict:
    """Load with ``weights_only=True``: tensors and plain containers only, never code."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"ckpt_path={path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "weights_only" in str(err) or "Weights only" in first:  # torch's advice to load it anyway is not for us
            first = "it holds Python objects other than tensors and plain containers, which snnrun never unpickles"
        raise CheckpointError(f"ckpt_path={path}: not a readable snnrun checkpoint ({first})") from None
    if isinstance(state, dict) and state.get("format") == "snnrun-checkpoint-1":
        return _upgrade(state)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"ckpt_path={path}: not an snnrun checkpoint (no '{FORMAT}' marker)")
    return state


def saved_config(state: dict, path) -> dict:
    """The run config saved in a checkpoint, with the groups its network is built from."""
    saved = state.get("config") or {}
    if not {"model", "neuron", "surrogate", "data"} <= set(saved):
        raise CheckpointError(f"ckpt_path={path} holds no run config to rebuild its network from")
    return saved


def check_fits(state: dict, model, path) -> None:
    """Refuse a checkpoint of another architecture, input shape or set of parameters."""
    if state.get("arch") is None:
        raise CheckpointError(f"ckpt_path={path} names no architecture: it was not written by an snnrun run")
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
            raise CheckpointError(f"ckpt_path={path} was trained with another data {key.replace('_', ' ')} than this "
                                  "configuration's" + (f"; use the one it was trained with: data.permutation_seed={seed}"
                                                       if key == "permutation" else "; resume with the files it was "
                                                       "trained on (data.train_path, data.val_path)"
                                                       if key.startswith("training") else ""))


@contextmanager
def restoring(path):
    """Turn a state that fails to load into the model, optimiser or scheduler into a CheckpointError."""
    try:
        yield
    except (RuntimeError, KeyError, ValueError) as err:
        raise CheckpointError(f"ckpt_path={path} does not fit this configuration: "
                              f"{str(err).splitlines()[0]}") from None


def check_progress(state: dict, total_steps: int, path) -> None:
    """Refuse a resume whose plan ends before the step the checkpoint has reached."""
    done = (state.get("progress") or {}).get("step", 0)
    if total_steps < done:
        raise CheckpointError(f"ckpt_path={path} has trained {done} steps, past the {total_steps} of this run's plan: "
                              f"a resume continues the run to the end of its plan; give it one at least that long, "
                              f"e.g. trainer.max_steps={done} (or trainer.epochs)")


def check_split(state: dict, val_size: int, path) -> None:
    """Refuse a resume that holds out another number of training samples: its training set would change."""
    saved = (state.get("config") or {}).get("data", {}).get("val_size", 0) or 0
    if saved != val_size:
        raise CheckpointError(f"ckpt_path={path} was trained with data.val_size={saved}, but this run holds out "
                              f"data.val_size={val_size}: the training and validation sets would change under the "
                              f"resumed run; use data.val_size={saved}")
