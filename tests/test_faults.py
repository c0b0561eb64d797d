"""Bad input is refused before any work, faults during a run lose nothing (SPEC section 9)."""

import os
import re
import signal
import subprocess
import time

import pytest
import torch

from conftest import FAST, SHARED_DATA, SNNRUN, read_metrics, read_results, snnrun
from snnrun.run.checkpoints import CheckpointError, load as load_checkpoint, save as save_checkpoint

BAD_DEVICE = "cuda:99" if torch.cuda.is_available() else "cuda"


def refused(tmp_path, *args, key, base=FAST):
    proc = snnrun(*base, *args, "hydra.run.dir=run", cwd=tmp_path, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr  # a refusal, not a crash (1)
    assert "Traceback" not in proc.stderr + proc.stdout
    assert key in proc.stderr, proc.stderr
    assert not (tmp_path / "run").exists(), "a refused run must not write its folder"
    return proc.stderr


@pytest.mark.e2e
@pytest.mark.parametrize("args, key", [
    (["time_steps=0"], "time_steps"),
    (["time_steps=-3"], "time_steps"),
    (["neuron.beta=1.5"], "neuron.beta"),
    (["neuron.beta=0"], "neuron.beta"),
    (["neuron.threshold=0"], "neuron.threshold"),
    (["optimizer.lr=0"], "optimizer.lr"),
    (["optimizer.lr=-0.1"], "optimizer.lr"),
    (["data.batch_size=0"], "data.batch_size"),
    (["trainer.epochs=-1"], "trainer.epochs"),
    (["trainer.max_steps=-1"], "trainer.max_steps"),
    (["surrogate=fast_sigmoid", "surrogate.slope=0"], "surrogate.slope"),
    (["encoder=poisson", "encoder.gain=-1"], "encoder.gain"),
    (["model.arch=12X5-FC10"], "12X5"),
    (["model.arch=64C30-FC10"], "64C30"),
    ([f"device={BAD_DEVICE}"], "device"),
    (["task=eval"], "ckpt_path"),
    (["ckpt_path=/no/such/file.pt"], "ckpt_path"),
    (["neuron.learn_beta=maybe"], "neuron.learn_beta"),  # a switch takes true or false, not any truthy string
    (["data.num_test=0"], "data.num_test"),
    (["data.num_train=-5"], "data.num_train"),
    (["data.noise=-1"], "data.noise"),
    (["data.input_shape=12"], "data.input_shape"),  # a number where a list belongs: refused, no TypeError
    (["scheduler=cosine", "scheduler.eta_min=-1"], "scheduler.eta_min"),
    (["trainer.augment_shift=14"], "trainer.augment_shift"),
    (["model.arch=FC100000000-FC10"], "model.arch"),  # 313 GB of weights: refused, not a traceback
    (["data.num_classes=${nosuch.key}"], "data.num_classes"),  # an override that does not resolve
])
def test_bad_value_is_refused(tmp_path, args, key):
    message = refused(tmp_path, *args, key=key)
    assert "For example: snnrun" in message


@pytest.mark.e2e
def test_snnrun_debug_shows_the_traceback_of_a_refusal(tmp_path):
    proc = snnrun(*FAST, "time_steps=0", "hydra.run.dir=run", cwd=tmp_path, env={"SNNRUN_DEBUG": "1"}, check=False)
    assert proc.returncode == 2 and "Traceback" in proc.stderr and "rules.py" in proc.stderr, proc.stderr
    assert "time_steps=0 is not allowed" in proc.stderr and not (tmp_path / "run").exists()


@pytest.mark.e2e
def test_unknown_group_option_lists_the_valid_ones(tmp_path):
    proc = snnrun(*FAST, "surrogate=fastsigmoid", "hydra.run.dir=run", cwd=tmp_path, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "surrogate" in proc.stderr and "fast_sigmoid" in proc.stderr and "atan" in proc.stderr


@pytest.mark.e2e
def test_a_mode_the_dataset_has_not_is_refused_before_the_config_resolves(tmp_path):
    """data.mode picks data.modes.<mode>: an unknown one named the interpolation in a traceback."""
    message = refused(tmp_path, "data.mode=foo", key="data.mode", base=["data=smnist", "data.download=false"])
    assert "rows or pixels" in message and "For example: snnrun data.mode=" in message


@pytest.mark.e2e
def test_an_unknown_preset_is_refused_not_skipped(tmp_path):
    """experiment= and hparams_search= were optional groups: a mistyped preset trained the default config."""
    for group in ("experiment", "hparams_search"):
        proc = snnrun(*FAST, f"{group}=nosuch", "hydra.run.dir=run", cwd=tmp_path, check=False)
        assert proc.returncode != 0 and f"Could not find '{group}/nosuch'" in proc.stderr, proc.stderr
        assert not (tmp_path / "run").exists()


@pytest.mark.e2e
def test_missing_dataset_offline(tmp_path):
    stderr = refused(tmp_path, f"data.root={tmp_path / 'empty'}", "data.download=false", key="data.root", base=[])
    assert str(tmp_path / "empty" / "MNIST" / "raw") in stderr and "SNNRUN_DATA" in stderr


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("ckpt")
    snnrun(*FAST, "trainer.max_steps=2", "hydra.run.dir=run", cwd=cwd)
    return cwd / "run" / "checkpoints" / "last.pt"


@pytest.mark.e2e
def test_not_a_checkpoint(tmp_path):
    bad = tmp_path / "notes.pt"
    bad.write_text("these are my notes, not a checkpoint")
    refused(tmp_path, f"ckpt_path={bad}", key="ckpt_path")


@pytest.mark.e2e
def test_truncated_checkpoint(tmp_path, checkpoint):
    cut = tmp_path / "cut.pt"
    cut.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    refused(tmp_path, f"ckpt_path={cut}", key="ckpt_path")


@pytest.mark.e2e
def test_checkpoint_of_another_architecture(tmp_path, checkpoint):
    stderr = refused(tmp_path, f"ckpt_path={checkpoint}", "model.arch=FC32-FC10", key="ckpt_path")
    assert "FC64-FC10" in stderr


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.e2e
def test_malicious_pickle_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "snnrun-checkpoint-1", "model": _Exploit(str(marker))}, evil)
    message = refused(tmp_path, f"ckpt_path={evil}", key="ckpt_path")
    assert not marker.exists()
    assert "never unpickles" in message and "weights_only" not in message  # not torch's advice to load it anyway
    with pytest.raises(CheckpointError):
        load_checkpoint(evil)
    assert not marker.exists()


@pytest.mark.e2e
def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    proc = snnrun(*FAST, "model.arch=FC32-FC10", "optimizer=sgd", "optimizer.lr=1e36", "trainer.eval_every=1",
                  "trainer.max_steps=20", "hydra.run.dir=run", cwd=tmp_path, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert re.search(r"the loss is (nan|inf) at step 2", proc.stderr), proc.stderr
    results = read_results(tmp_path / "run")
    assert results["status"] == "failed" and "step 2" in results["error"]
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert state["progress"]["step"] == 1 and all(torch.isfinite(v).all() for v in state["model"].values())


def test_atomic_checkpoint_write_survives_a_crash(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"step": 1})

    def crash(obj, f):
        with open(f, "wb") as fh:
            fh.write(b"PK\x03\x04 half a file")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError):
        save_checkpoint(path, {"step": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1


@pytest.mark.e2e
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_saves_checkpoint_and_resumes(tmp_path, sig, code):
    env = {**os.environ, "SNNRUN_DATA": str(SHARED_DATA)}
    proc = subprocess.Popen([SNNRUN, *FAST, "trainer.max_steps=100000", "trainer.eval_every=5", "hydra.run.dir=run"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 120
    while not metrics.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert metrics.exists(), "the run never evaluated"
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert "Traceback" not in err and "Resume with" in err and "ckpt_path=" in err
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert 5 <= state["progress"]["step"] < 100000
    results = read_results(tmp_path / "run")
    assert results["status"] == "interrupted" and results["steps"] == state["progress"]["step"]
    snnrun(*FAST, f"trainer.max_steps={state['progress']['step'] + 3}", f"ckpt_path={tmp_path / 'run/checkpoints/last.pt'}",
           "hydra.run.dir=resumed", cwd=tmp_path)
    assert read_results(tmp_path / "resumed")["steps"] == state["progress"]["step"] + 3


@pytest.mark.e2e
def test_resume_is_exact(tmp_path):
    """Interrupted after 6 steps and resumed == uninterrupted, with a random encoder, random
    shifts and shuffling."""
    common = [*FAST, "encoder=poisson", "trainer.augment_shift=2", "trainer.eval_every=4",
              "data.num_train=96"]  # 3 steps per epoch
    snnrun(*common, "trainer.max_steps=12", "hydra.run.dir=straight", cwd=tmp_path)
    snnrun(*common, "trainer.max_steps=6", "hydra.run.dir=first", cwd=tmp_path)
    snnrun(*common, "trainer.max_steps=12", f"ckpt_path={tmp_path / 'first/checkpoints/last.pt'}",
           "hydra.run.dir=second", cwd=tmp_path)
    a, b = read_results(tmp_path / "straight"), read_results(tmp_path / "second")
    assert (a["test_acc"], a["test_loss"], a["steps"]) == (b["test_acc"], b["test_loss"], b["steps"])
    ma, mb = read_metrics(tmp_path / "straight")[-1], read_metrics(tmp_path / "second")[-1]
    assert ma["step"] == mb["step"] == 12 and ma["train_loss"] == mb["train_loss"]
    wa = load_checkpoint(tmp_path / "straight/checkpoints/last.pt")["model"]
    wb = load_checkpoint(tmp_path / "second/checkpoints/last.pt")["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def earlier(tmp_path_factory):
    """A finished run and an export of its best checkpoint (checkpoints/model.nir)."""
    cwd = tmp_path_factory.mktemp("earlier")
    snnrun(*FAST, "trainer.max_steps=2", "hydra.run.dir=run", cwd=cwd)
    snnrun("task=export", "ckpt_path=run/checkpoints/best.pt", "export.approximate=true", "hydra.run.dir=export", cwd=cwd)
    (cwd / "a_file").write_text("mine")
    return cwd


def _files(folder):
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.e2e
@pytest.mark.parametrize("args, key", [
    ([*FAST, "hydra.run.dir=run"], "hydra.run.dir"),
    (["task=eval", "ckpt_path=run/checkpoints/best.pt", "hydra.run.dir=run"], "hydra.run.dir"),
    (["-m", *FAST, "optimizer.lr=1e-3,2e-3", "hydra.sweep.dir=run"], "hydra.sweep.dir"),
    ([*FAST, "hydra.run.dir=a_file"], "hydra.run.dir"),
    (["task=export", "ckpt_path=run/checkpoints/last.pt", "export.approximate=true", "hydra.run.dir=new"],
     "export.path"),  # the default path, checkpoints/model.nir, holds best.pt's graph
    (["task=export", "ckpt_path=run/checkpoints/last.pt", "export.approximate=true",
      "export.path=run/checkpoints/best.pt", "hydra.run.dir=new"], "export.path"),
    (["task=export", "ckpt_path=run/checkpoints/last.pt", "export.approximate=true", "export.path=a_file/graph.nir",
      "hydra.run.dir=new"], "export.path"),
])
def test_nothing_an_earlier_run_wrote_is_written_over(earlier, args, key):
    """A run, an evaluation or a sweep into a folder that holds a run (or is a file), and an export onto an
    existing file or below a file, are refused before anything is written: every file keeps its bytes."""
    before = _files(earlier)
    proc = snnrun(*args, cwd=earlier, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert key in proc.stderr and "For example: snnrun" in proc.stderr, proc.stderr
    assert _files(earlier) == before  # nothing changed, nothing new (no folder for the refused run)


@pytest.mark.e2e
@pytest.mark.parametrize("args, key, fix", [
    (["neuron=alif"], "neuron._target_", "neuron=lif"),
    (["optimizer=sgd"], "optimizer._target_", "optimizer=adam"),
    (["encoder=poisson"], "encoder._target_", "encoder=direct"),
    (["data.seed=3"], "data.seed", "data.seed=0"),
    (["time_steps=9"], "time_steps", "time_steps=8"),
    (["data.batch_size=16"], "data.batch_size", "data.batch_size=32"),  # the epoch's position is counted in batches
    (["seed=5"], "seed", "seed=0"),
    (["trainer.max_steps=1"], "trainer.max_steps=2", "trainer.max_steps=2"),  # the plan ends before the step reached
])
def test_a_resume_must_continue_the_same_run(earlier, args, key, fix):
    """A resume continues the checkpoint's run: another network, input, data or optimiser, or a plan that ends
    before the step it reached, is refused, naming what the run was trained with."""
    named = {a.split("=")[0] for a in args}
    base = [a for a in [*FAST, "trainer.max_steps=4"] if a.split("=")[0] not in named]
    proc = snnrun(*base, "ckpt_path=run/checkpoints/last.pt", *args, "hydra.run.dir=resumed", cwd=earlier, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert key in proc.stderr and fix in proc.stderr, proc.stderr
    assert not (earlier / "resumed").exists()
