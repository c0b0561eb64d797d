"""data=tensors: a user's .pt/.npz files, read (memory-mapped), described, checked and trained on
through the command and through snnrun.train; every refusal names the file, the index or field, and the fix."""

import io
import logging
import zipfile

import numpy as np
import pytest
import torch
import yaml
from omegaconf import OmegaConf

import snnrun
from snnrun.data import tensors
from snnrun.data.datasets import DataError
from snnrun.run.assembly import assemble
from snnrun.run.checkpoints import CheckpointError
from snnrun.run.rules import ConfigError
from tests.conftest import read_results, snnrun as run_cli

NET = ["model.arch=FC16-FC3", "data.batch_size=20", "trainer.raster_samples=0", "trainer.curve_points=0"]


def features(n: int, seed: int = 0, classes: int = 3, width: int = 12):
    """A learnable feature task: class c shifts every feature by c."""
    g = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    return (g.normal(size=(n, width)) + labels[:, None]).astype(np.float32), labels.astype(np.int64)


def sequences(n: int, steps: int = 6, seed: int = 0, classes: int = 3):
    g = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    return (g.random((n, steps, 4)) < 0.1 + 0.25 * labels[:, None, None]).astype(np.uint8), labels


def save(path, inputs, labels, compressed=False):
    if path.suffix == ".pt":
        torch.save({"inputs": torch.as_tensor(inputs), "labels": torch.as_tensor(labels)}, path)
    else:
        (np.savez_compressed if compressed else np.savez)(path, inputs=inputs, labels=labels)
    return path


@pytest.fixture
def files(tmp_path):
    return {"train": save(tmp_path / "train.npz", *features(120)), "test": save(tmp_path / "test.npz", *features(30, 1))}


def paths(train, test, *more):
    return ["data=tensors", f"data.train_path={train}", f"data.test_path={test}", *more]


def test_npz_members_are_memory_mapped_and_compressed_ones_read(tmp_path):
    x, y = features(50)
    stored, packed = save(tmp_path / "a.npz", x, y), save(tmp_path / "b.npz", x, y, compressed=True)
    with zipfile.ZipFile(stored) as archive:
        assert isinstance(tensors._npz_member(stored, archive, "inputs"), np.memmap)
    with zipfile.ZipFile(packed) as archive:
        assert not isinstance(tensors._npz_member(packed, archive, "inputs"), np.memmap)
    for path in (stored, packed, save(tmp_path / "c.pt", x, y)):
        inputs, labels = tensors.read(path, "data.train_path")
        assert torch.equal(inputs, torch.from_numpy(x)) and torch.equal(labels, torch.from_numpy(y))


def test_the_files_describe_the_run_and_the_split_reaches_the_network_as_stored(files, compose):
    cfg = compose(*paths(files["train"], files["test"]), *NET)
    assembly = assemble(cfg)
    assert cfg.data.input_shape == [12] and cfg.data.num_classes == 3 and "time_steps" not in cfg.data
    assert assembly.spec.input_shape == (12,) and assembly.spec.num_classes == 3 and cfg.time_steps == 25
    from snnrun.data.datasets import batches

    x, y = next(batches(assembly.data.train, 5))
    assert torch.equal(x, torch.from_numpy(features(120)[0][:5])) and y.tolist() == [0, 1, 2, 0, 1]


def test_temporal_files_bring_their_own_time_steps_and_uint8_inputs_keep_their_counts(tmp_path, compose):
    train = save(tmp_path / "train.pt", *sequences(60))
    test = save(tmp_path / "test.pt", *sequences(15, seed=1))
    cfg = compose(*paths(train, test, "data.temporal=true"), *NET)
    assembly = assemble(cfg)
    assert cfg.data.time_steps == 6 and cfg.time_steps == 6 and cfg.data.input_shape == [4]
    assert assembly.data.train.unit == 1.0  # uint8 sequences are counts; static uint8 inputs are pixels
    cfg = compose(*paths(train, test, "data.temporal=true", "data.unit=4"), *NET)
    assert assemble(cfg).data.train.unit == 4.0
    images = save(tmp_path / "images.npz", (np.arange(60 * 16) % 256).astype(np.uint8).reshape(60, 16), np.arange(60) % 3)
    assert assemble(compose(*paths(images, images), *NET)).data.train.unit == 255.0


def test_a_validation_file_is_the_validation_split(files, tmp_path, compose):
    val = save(tmp_path / "val.npz", *features(24, 2))
    assembly = assemble(compose(*paths(files["train"], files["test"], f"data.val_path={val}"), *NET))
    assert len(assembly.data.val) == 24 and len(assembly.data.train) == 120
    with pytest.raises(ConfigError, match="data.val_size.*brings its own validation split"):
        assemble(compose(*paths(files["train"], files["test"], f"data.val_path={val}", "data.val_size=10"), *NET))


def test_a_declared_value_that_contradicts_the_files_is_refused_naming_both(files, compose):
    with pytest.raises(ConfigError, match=r"data.num_classes=5.*must be 3, what the data files hold"):
        assemble(compose(*paths(files["train"], files["test"], "data.num_classes=5"), *NET))


def bad_inputs(tmp_path):
    x, y = features(40)
    nan = x.copy()
    nan[17, 3] = np.nan
    inf = x.copy()
    inf[5, 0] = -np.inf
    fractional = y.astype(np.float32)
    fractional[9] = 1.5
    negative = y.copy()
    negative[4] = -1
    gap = np.where(y == 1, 2, y)
    return {
        "nan": ((nan, y), r"inputs\[17\] holds nan at position \[3\]"),
        "inf": ((inf, y), r"inputs\[5\] holds -inf at position \[0\]"),
        "fractional": ((x, fractional), r"labels\[9\] is 1.5, not an integer"),
        "negative": ((x, negative), r"labels\[4\] is -1"),
        "empty class": ((x, gap), r"classes \[1\] have no training sample"),
        "length": ((x, y[:-3]), r"40 inputs but labels of shape \[37\]"),
        "one class": ((x, np.zeros_like(y)), "at least 2 classes"),
    }


@pytest.mark.parametrize("case", ["nan", "inf", "fractional", "negative", "empty class", "length", "one class"])
def test_bad_training_files_are_refused_naming_the_file_and_the_index(tmp_path, files, compose, case):
    (x, y), message = bad_inputs(tmp_path)[case]
    train = save(tmp_path / "bad.npz", x, y)
    with pytest.raises(DataError, match=message) as err:
        assemble(compose(*paths(train, files["test"]), *NET))
    assert str(train) in str(err.value)


def test_splits_that_disagree_are_refused(tmp_path, files, compose):
    wide = save(tmp_path / "wide.npz", *features(30, width=13))
    with pytest.raises(DataError, match=r"wide.npz: its samples are \[13\] but those of .*train.npz are \[12\]"):
        assemble(compose(*paths(files["train"], wide), *NET))
    long = save(tmp_path / "long.pt", *sequences(15, steps=7))
    short = save(tmp_path / "short.pt", *sequences(60, steps=6))
    with pytest.raises(DataError, match=r"\[7, 4\] but those of .*short.pt are \[6, 4\].*T and the shape"):
        assemble(compose(*paths(short, long, "data.temporal=true"), *NET))
    unseen = save(tmp_path / "unseen.npz", features(30)[0], np.full(30, 3))
    with pytest.raises(DataError, match=r"labels\[0\] is 3, which is not a class of the training set"):
        assemble(compose(*paths(files["train"], unseen), *NET))
    flat = save(tmp_path / "flat.npz", *features(30))
    with pytest.raises(DataError, match=r"not \[N, T, \*features\] \(data.temporal=true\)"):
        assemble(compose(*paths(flat, flat, "data.temporal=true"), *NET))


class Anything:  # pickled into a .pt file: weights_only loading must refuse it, never run it
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_files_that_cannot_be_read_are_refused_without_unpickling(tmp_path, files, capsys):
    x, y = features(10)
    cases = {}
    torch.save({"inputs": torch.tensor(x), "labels": Anything()}, tmp_path / "object.pt")
    cases["object.pt"] = r"holds \S+, which snnrun never unpickles \(.pt files are loaded with weights_only=True\)"
    torch.save({"inputs": x, "labels": y}, tmp_path / "numpy.pt")  # numpy arrays, not tensors
    cases["numpy.pt"] = r"holds numpy\S+, which snnrun never unpickles .* torch.as_tensor\(x\)"
    whole = (tmp_path / "object.pt").read_bytes()
    save(tmp_path / "full.pt", x, y)
    (tmp_path / "cut.pt").write_bytes((tmp_path / "full.pt").read_bytes()[:300])
    cases["cut.pt"] = "truncated or not a dict of tensors"
    (tmp_path / "text.npz").write_text("inputs,labels\n1,2\n")
    cases["text.npz"] = "truncated or not an archive written by np.savez"
    save(tmp_path / "full.npz", x, y)
    (tmp_path / "cut.npz").write_bytes((tmp_path / "full.npz").read_bytes()[:-200])
    cases["cut.npz"] = "truncated or not an archive"
    np.savez(tmp_path / "keys.npz", x=x, y=y)
    cases["keys.npz"] = r"has no array 'inputs' \(it holds \['x', 'y'\]\)"
    torch.save([torch.tensor(x)], tmp_path / "list.pt")
    cases["list.pt"] = "must hold a dict with tensors 'inputs' and 'labels'"
    np.save(tmp_path / "array.npy", x)
    cases["array.npy"] = "snnrun reads .pt files"
    cases["missing.npz"] = "no such file"
    for name, message in cases.items():
        with pytest.raises(DataError, match=message) as err:
            tensors.tensor_dataset(tmp_path / name, files["test"])
        assert f"data.train_path={tmp_path / name}" in str(err.value)
    assert "unpickled!" not in capsys.readouterr().out and len(whole) > 0


def test_a_file_bigger_than_memory_that_cannot_be_mapped_is_refused(tmp_path, files, monkeypatch):
    x, y = features(200)
    packed = save(tmp_path / "packed.npz", x, y, compressed=True)
    legacy = tmp_path / "legacy.pt"
    torch.save({"inputs": torch.tensor(x), "labels": torch.tensor(y)}, legacy, _use_new_zipfile_serialization=False)
    stored = save(tmp_path / "stored.npz", x, y)
    monkeypatch.setattr(tensors, "available_memory", lambda device: 4096)
    with pytest.raises(DataError, match=r"compressed \(np.savez_compressed\), so it cannot be memory-mapped.*np.savez"):
        tensors.tensor_dataset(packed, files["test"])
    with pytest.raises(DataError, match="legacy format, which cannot be memory-mapped"):
        tensors.tensor_dataset(legacy, files["test"])
    assert len(tensors.tensor_dataset(stored, files["test"]).train) == 200  # mapped: no memory needed up front


@pytest.mark.e2e
def test_the_command_trains_on_npz_files_and_records_what_they_hold(files, tmp_path):
    run_dir = tmp_path / "run"
    run_cli(*paths(files["train"], files["test"]), *NET, "time_steps=4", "trainer.epochs=4", "optimizer.lr=5e-3", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    saved = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())["data"]
    assert saved["input_shape"] == [12] and saved["num_classes"] == 3
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)
    assert state["config"]["data"]["input_shape"] == [12] and state["config"]["data"]["num_classes"] == 3
    assert read_results(run_dir)["status"] == "ok" and read_results(run_dir)["test_acc"] > 0.5
    evaluated = run_cli("task=eval", f"ckpt_path={run_dir / 'checkpoints' / 'last.pt'}",
                        f"hydra.run.dir={tmp_path / 'eval'}", cwd=tmp_path)
    assert evaluated.returncode == 0 and read_results(tmp_path / "eval")["test_acc"] == read_results(run_dir)["test_acc"]


@pytest.mark.e2e
def test_a_sweeps_jobs_record_what_the_files_hold_in_their_config(files, tmp_path):
    run_cli("-m", *paths(files["train"], files["test"]), *NET, "time_steps=4", "trainer.max_steps=2", "seed=0,1",
            "hydra.sweep.dir=sweep", cwd=tmp_path)
    for job in ("0", "1"):
        saved = yaml.safe_load((tmp_path / "sweep" / job / ".hydra" / "config.yaml").read_text())
        assert saved["data"]["input_shape"] == [12] and saved["data"]["num_classes"] == 3
        assert saved["seed"] == int(job) and "hydra" not in saved
        assert read_results(tmp_path / "sweep" / job)["status"] == "ok"


@pytest.mark.e2e
def test_a_bad_file_is_refused_by_the_command_before_any_run_folder(tmp_path, files):
    (x, y), _ = bad_inputs(tmp_path)["nan"]
    bad = save(tmp_path / "bad.npz", x, y)
    proc = run_cli(*paths(bad, files["test"]), *NET, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"snnrun: error: {bad}: inputs[17] holds nan" in proc.stderr and not (tmp_path / "run").exists()


def test_snnrun_train_and_evaluate_from_python(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train = save(tmp_path / "train.pt", *sequences(60))
    test = save(tmp_path / "test.pt", *sequences(15, seed=1))
    root = logging.getLogger()
    callers = logging.StreamHandler(io.StringIO())
    monkeypatch.setattr(root, "handlers", [callers])
    monkeypatch.setattr(root, "level", logging.WARNING)
    results, run_dir = snnrun.train(paths(train, test, "data.temporal=true", "data.unit=1", *NET))
    assert results == read_results(run_dir) and results["status"] == "ok" and run_dir.parent.parent.name == "outputs"
    assert (run_dir / "checkpoints" / "last.pt").is_file() and (run_dir / ".hydra" / "config.yaml").is_file()
    assert root.handlers == [callers] and root.level == logging.WARNING  # the caller's logging, given back
    logged = (run_dir / "snnrun.log").read_text()
    logging.getLogger("snnrun").warning("after the run")
    assert "run folder" in logged and (run_dir / "snnrun.log").read_text() == logged
    assert "after the run" in callers.stream.getvalue()
    again = snnrun.evaluate(run_dir / "checkpoints" / "last.pt")
    assert again.results["test_acc"] == results["test_acc"] and again.run_dir != run_dir


def test_a_resume_on_other_training_files_is_refused(tmp_path, files, monkeypatch, compose):
    monkeypatch.chdir(tmp_path)
    _, run_dir = snnrun.train(paths(files["train"], files["test"], "trainer.max_steps=2", *NET))
    ckpt = run_dir / "checkpoints" / "last.pt"
    assemble(compose(*paths(files["train"], files["test"], f"ckpt_path={ckpt}"), *NET))  # the same files resume
    resumed, _ = snnrun.train(paths(files["train"], files["test"], "trainer.max_steps=3", f"ckpt_path={ckpt}", *NET))
    assert resumed["steps"] == 3  # the shape, classes and T the files declare are not taken for another run's
    x, y = features(120)
    for train in (save(tmp_path / "reordered.npz", x[::-1].copy(), y[::-1].copy()),
                  save(tmp_path / "fewer.npz", x[:90], y[:90])):
        with pytest.raises(CheckpointError, match=r"another data training set .*\(data.train_path, data.val_path\)"):
            assemble(compose(*paths(train, files["test"], f"ckpt_path={ckpt}"), *NET))
    other = save(tmp_path / "other_inputs.npz", features(120, seed=7)[0], y)  # the same labels, other samples
    with pytest.raises(CheckpointError, match=r"another data training samples .*\(data.train_path, data.val_path\)"):
        assemble(compose(*paths(other, files["test"], f"ckpt_path={ckpt}"), *NET))
    val = save(tmp_path / "val.npz", *features(24, 2))
    with pytest.raises(CheckpointError, match="another data training set"):
        assemble(compose(*paths(files["train"], files["test"], f"data.val_path={val}", f"ckpt_path={ckpt}"), *NET))


def test_a_checkpoint_is_evaluated_on_moved_files(tmp_path, files, monkeypatch):
    """Where the files are may change on eval (data=tensors data.test_path=...): the network, the shape and the
    classes stay the checkpoint's."""
    monkeypatch.chdir(tmp_path)
    results, run_dir = snnrun.train(paths(files["train"], files["test"], "trainer.max_steps=2", *NET))
    moved = tmp_path / "moved"
    moved.mkdir()
    for name in ("train", "test"):
        files[name].rename(moved / files[name].name)
    ckpt = run_dir / "checkpoints" / "last.pt"
    with pytest.raises(DataError, match="no such file"):
        snnrun.evaluate(ckpt)
    for overrides in (paths(moved / "train.npz", moved / "test.npz"),
                      [f"+data.train_path={moved / 'train.npz'}", f"+data.test_path={moved / 'test.npz'}"]):
        again = snnrun.evaluate(ckpt, overrides)
        assert again.results["test_acc"] == results["test_acc"] and again.results["test_loss"] == results["test_loss"]


def test_snnrun_train_raises_the_commands_error_and_writes_nothing(tmp_path, files, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (x, y), _ = bad_inputs(tmp_path)["negative"]
    bad = save(tmp_path / "bad.npz", x, y)
    with pytest.raises(DataError, match=r"bad.npz: labels\[4\] is -1"):
        snnrun.train(paths(bad, files["test"]))
    with pytest.raises(ConfigError, match="optimizer.lr=-1 is not allowed"):
        snnrun.train(paths(files["train"], files["test"], "optimizer.lr=-1"))
    with pytest.raises(ValueError, match="leave task= out"):
        snnrun.train(["task=eval"])
    assert not (tmp_path / "outputs").exists()


def test_data_the_gpu_cannot_hold_is_refused_before_it_is_moved(files, monkeypatch):
    from snnrun.data import datasets
    from snnrun.run.assembly import check_data_fits

    data = tensors.tensor_dataset(files["train"], files["test"])
    monkeypatch.setattr(datasets, "available_memory", lambda device: 1000)
    with pytest.raises(DataError, match=r"the data takes 0.0 GiB and cuda has 0.0 GiB free; .* device=cpu"):
        check_data_fits(data, torch.device("cuda"))
    check_data_fits(data, torch.device("cpu"))  # on the CPU the store stays where it is (a file's map)


def test_a_bug_while_preparing_is_raised_by_the_task_not_prepared_twice(monkeypatch, tmp_path):
    from snnrun.run import preflight

    calls = []

    def broken(cfg, overrides):
        calls.append(1)
        raise RuntimeError("a bug")

    monkeypatch.setattr(preflight, "prepare", broken)
    config = {"hydra": {"overrides": {"task": []}, "run": {"dir": str(tmp_path / "run")}}}
    preflight.Preflight().on_run_start(config=OmegaConf.create(config))
    with pytest.raises(RuntimeError, match="a bug"):
        preflight.Preflight.take()
    assert calls == [1] and preflight.Preflight.take() is None
