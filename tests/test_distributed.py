"""Data-parallel training with torchrun: same result as one process, one run folder."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import FAST, read_results, snnrun
from snnrun.run.assembly import assemble
from snnrun.run.rules import ConfigError
from snnrun.run.distributed import World

TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
ARGS = [*FAST, "trainer.max_steps=6", "trainer.eval_every=3", "encoder=poisson", "device=cpu"]


def weights(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]


@pytest.mark.e2e
@pytest.mark.parametrize("arch", ["model.arch=FC64-FC10", "model.arch=FC64-DO0.3-FC10"])
def test_two_processes_equal_one_process_and_write_one_folder(tmp_path, arch):
    """Dropout too: each sample gets the mask it gets in one process (drawn for the whole batch)."""
    env = {k: v for k, v in os.environ.items() if k != "SNNRUN_DEBUG"}
    proc = subprocess.run([TORCHRUN, "--standalone", "--nproc-per-node=2", "-m", "snnrun", *ARGS, arch],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (day,) = (tmp_path / "outputs").iterdir()
    (ddp,) = day.iterdir()  # both ranks resolved the same folder; nothing else was created
    assert sorted(p.name for p in ddp.iterdir()) == [
        ".hydra", "checkpoints", *sorted(p.name for p in ddp.glob("events.out.tfevents.*")),
        "metrics.jsonl", "results.json", "snnrun.log"]
    assert len(list(ddp.glob("events.out.tfevents.*"))) == 1

    snnrun(*ARGS, arch, "hydra.run.dir=single", cwd=tmp_path)
    single = tmp_path / "single"
    r1, r2 = read_results(single), read_results(ddp)
    assert r2["processes"] == 2 and r1["processes"] == 1
    assert r1["test_acc"] == r2["test_acc"] and abs(r1["test_loss"] - r2["test_loss"]) < 1e-4
    w1, w2 = weights(single), weights(ddp)
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], rtol=1e-4, atol=1e-5)


@pytest.mark.e2e
def test_batch_must_split_evenly_over_processes(tmp_path):
    proc = subprocess.run([TORCHRUN, "--standalone", "--nproc-per-node=2", "-m", "snnrun", *ARGS, "data.batch_size=33"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "data.batch_size=33 is not allowed" in proc.stderr and "multiple of the 2 torchrun processes" in proc.stderr
    assert proc.stderr.count("snnrun: error:") == 1  # said once, by rank 0; both ranks exit 2
    assert not (tmp_path / "outputs").exists()  # refused before any rank created the run folder


def test_shards_cover_every_row_once():
    from snnrun.run.distributed import World

    for batch in (6, 7, 1000, 2):
        rows = [i for r in range(3) for i in range(batch)[World(r, 3).shard(batch)]]
        assert rows == list(range(batch))


def test_sharded_evaluation_sums_to_the_single_process_figures():
    """Each rank's share of the sums (before the all-reduce) adds up to one process's figures."""
    import functools

    from snnrun.core import encoders, losses, neurons
    from snnrun.core.architectures import SpikingNetwork
    from snnrun.data.datasets import synthetic
    from snnrun.run.distributed import World
    from snnrun.run.evaluation import evaluate
    from snnrun.run.records import Parts

    torch.manual_seed(0)
    model = SpikingNetwork("FC32-FC10", (1, 12, 12), 10, functools.partial(neurons.LIF, beta=0.8))
    test = synthetic(num_train=8, num_test=70, image_size=12).test
    run = Parts(model, encoders.Poisson(), losses.MembraneCE(), losses.spike_count, optimizer=None)
    options = dict(batch_size=32, time_steps=6, seed=0)
    whole = evaluate(run, test, **options)
    parts = [evaluate(run, test, **options, world=World(rank, 3)) for rank in range(3)]
    for key in ("test_loss", "test_acc"):
        assert sum(p[key] for p in parts) == pytest.approx(whole[key], rel=1e-6)
    for layer, rate in whole["firing_rates"].items():
        assert sum(p["firing_rates"][layer] for p in parts) == pytest.approx(rate, rel=1e-5)


def test_batch_norm_under_torchrun_on_cpu_is_refused_before_work(compose):
    """torch syncs BN statistics across ranks on GPUs only; on CPU each rank would normalise its shard."""
    cfg = compose("data=synthetic", "data.num_train=64", "data.num_test=16", "data.batch_size=16", "time_steps=2",
                  "model.arch=4C5-BN-MP2-FC10", "device=cpu")
    with pytest.raises(ConfigError) as err:
        assemble(cfg, World(rank=0, size=2))
    assert err.value.key == "model.arch" and "GPUs only" in str(err.value)
    assert assemble(cfg, World()).parts.model.arch == "4C5-BN-MP2-FC10"  # one process: fine


def _rank_enters(rank: int, size: int, init: str, log_dir: str) -> None:
    import time
    from pathlib import Path

    import torch.distributed as dist

    from snnrun.run.distributed import World, main_rank_first

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=size)
    try:
        with main_rank_first(World(rank, size)):
            Path(log_dir, f"{rank}.enter").write_text(repr(time.time()))
            time.sleep(0.5 if rank == 0 else 0.0)  # rank 0 bins and caches the data meanwhile
            Path(log_dir, f"{rank}.leave").write_text(repr(time.time()))
    finally:
        dist.destroy_process_group()


def test_the_main_rank_goes_first_and_the_others_wait_for_it(tmp_path):
    """main_rank_first, which prepare wraps around loading the data (rank 0 bins and caches an event
    dataset alone; the others then read its cache): the other ranks enter only once rank 0 has left."""
    import torch.multiprocessing as mp

    mp.spawn(_rank_enters, args=(3, f"file://{tmp_path / 'rendezvous'}", str(tmp_path)), nprocs=3)
    times = {name: float((tmp_path / name).read_text()) for name in ("0.enter", "0.leave", "1.enter", "2.enter")}
    assert times["0.leave"] <= times["1.enter"] and times["0.leave"] <= times["2.enter"]
