import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose as hydra_compose, initialize_config_dir

from snnrun.run.cli import config_dir

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SNNRUN_DATA", REPO.parent / "shared" / "data"))
HAS_MNIST = (SHARED_DATA / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file()
needs_mnist = pytest.mark.skipif(not HAS_MNIST, reason=f"real MNIST not found in {SHARED_DATA}")

SNNRUN = shutil.which("snnrun", path=str(Path(sys.executable).parent)) or "snnrun"
FAST = ["data=synthetic", "data.num_train=256", "data.num_test=128", "data.batch_size=32", "time_steps=8",
        "model.arch=FC64-FC10", "trainer.raster_samples=0"]  # figures are drawn (and tested) in test_cli only


def pytest_xdist_auto_num_workers(config):
    """``-n auto`` (the default, pyproject.toml): one worker per core this process may use, at most four.
    Much of a cold run is numba compiling the kernels, one process at a time; two workers on two cores
    took the suite from 14.2 to 8.4 minutes (cold numba cache). The runs inside each worker use torch's
    default threads, one per core, so more workers than four would mostly oversubscribe."""
    return min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def snnrun(*args, cwd, env=None, timeout=300, check=True):
    """Run the installed ``snnrun`` console script in a subprocess."""
    inherited = {k: v for k, v in os.environ.items() if k not in ("SNNRUN_DEBUG", "HYDRA_FULL_ERROR")}
    full_env = {**inherited, "SNNRUN_DATA": str(SHARED_DATA), **(env or {})}
    proc = subprocess.run([SNNRUN, *map(str, args)], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"snnrun {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def read_results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="session")
def compose():
    """Compose the shipped config with Hydra, as the command line does: ``compose("neuron=if", "time_steps=4")``."""

    def composed(*overrides):
        with initialize_config_dir(config_dir=config_dir(), version_base=None):
            return hydra_compose(config_name="config", overrides=list(overrides))

    return composed


def scalars(run_dir) -> dict:
    """The TensorBoard scalars a run wrote, read back from its event files: {tag: [(step, value), ...]}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def layer_grads(layer, current, weights):
    """Spikes, membranes, input gradient and parameter gradients of sum(w0*S + w1*U) through ``layer``."""
    layer.zero_grad()
    x = current.clone().requires_grad_()
    spk, mem = layer(x)
    ((spk * weights[0]).sum() + (mem * weights[1]).sum()).backward()
    return spk.detach(), mem.detach(), x.grad, {n: p.grad.clone() for n, p in layer.named_parameters()}


def write_idx_dataset(root: Path, name: str = "MNIST", n_train: int = 40, n_test: int = 12, seed: int = 0) -> Path:
    """A small dataset in MNIST's IDX format (big-endian magic 0x0803 / 0x0801, the sizes, then
    uint8 bytes) in ``root/<name>/raw``, as torchvision reads it; returns ``root``."""
    rng = np.random.default_rng(seed)
    raw = root / name / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">4I", 0x0803, *images.shape) + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">2I", 0x0801, n) + labels.tobytes())
    return root
