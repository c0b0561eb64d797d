"""data=event_folder: a user's recordings as tonic-layout .npy files in class folders, binned through
tonic like N-MNIST, cached (and binned again when the folder changes), named in configs and figures."""

import os

import numpy as np
import pytest
import torch
import yaml

import snnrun
from snnrun.data import event_folder as folder_data
from snnrun.data.datasets import DataError
from snnrun.run.assembly import assemble
from snnrun.run.figures import membrane_figure
from snnrun.run.rules import ConfigError
from tests.conftest import read_results, snnrun as run_cli

EVENT = np.dtype([("x", "<i2"), ("y", "<i2"), ("t", "<i8"), ("p", "<i1")])
NAMES = ["left", "right", "up"]
NET = ["model.arch=FC16-FC3", "data.batch_size=10", "data.time_steps=4", "trainer.raster_samples=0",
       "trainer.curve_points=0"]


def recording(label: int, seed: int, n: int = 120) -> np.ndarray:
    """Events of a 12 x 12 sensor, class c lighting columns 4c..4c+3, over 40 ms."""
    g = np.random.default_rng(seed)
    events = np.zeros(n, EVENT)
    events["x"], events["y"] = 4 * label + g.integers(0, 4, n), g.integers(0, 12, n)
    events["t"], events["p"] = np.sort(g.integers(0, 40_000, n)), g.integers(0, 2, n)
    return events


def write_folder(root, per_class=(12, 4)):
    for split, count in zip(("train", "test"), per_class):
        for label, name in enumerate(NAMES):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                np.save(root / split / name / f"r{i:03d}.npy", recording(label, 1000 * label + i + (split == "test") * 99))
    return root


def options(root, *more):
    return ["data=event_folder", f"data.path={root}", "data.sensor_size=[12,12,2]", *NET, *more]


def test_recordings_are_binned_through_tonic_with_their_folder_labels(tmp_path):
    root = write_folder(tmp_path / "rec")
    data = folder_data.event_folder(root, [12, 12, 2], time_steps=4)
    assert data.classes == tuple(NAMES) and data.train.inputs.shape == (36, 4, 2, 12, 12)
    assert data.train.labels.tolist() == [0] * 12 + [1] * 12 + [2] * 12 and data.test.labels.tolist()[-1] == 2
    first = recording(0, 0)[:-1]  # tonic's equal bins end at the last event's time and leave that event out:
    expected = np.zeros((2, 12, 12))  # every other event lands in one frame
    np.add.at(expected, (first["p"], first["y"], first["x"]), 1)
    assert torch.equal(data.train.inputs[0].sum(0).long(), torch.from_numpy(expected).long())
    assert data.train.unit == 1.0


def test_the_cache_is_reused_and_binned_again_when_the_folder_changes(tmp_path):
    root = write_folder(tmp_path / "rec")
    folder_data.event_folder(root, [12, 12, 2], time_steps=4)
    cache = root / "snnrun_cache" / "T4-bins-count-ds1" / "train.pt"
    stamp = cache.stat().st_mtime_ns
    again = folder_data.event_folder(root, [12, 12, 2], time_steps=4)
    assert cache.stat().st_mtime_ns == stamp and len(again.train) == 36
    np.save(root / "train" / "up" / "r999.npy", recording(2, 5))
    grown = folder_data.event_folder(root, [12, 12, 2], time_steps=4)
    assert cache.stat().st_mtime_ns != stamp and len(grown.train) == 37
    other = folder_data.event_folder(root, [12, 12, 2], time_steps=2, frames="binary")
    assert other.train.inputs.shape[1] == 2 and other.train.inputs.max() == 1
    assert (root / "snnrun_cache" / "T2-bins-binary-ds1" / "train.pt").is_file()  # one cache per binning
    (root / "train" / ".ipynb_checkpoints").mkdir()  # hidden folders are not classes
    assert folder_data.event_folder(root, [12, 12, 2], time_steps=4).classes == tuple(NAMES)


def test_the_folder_describes_the_run(tmp_path, compose):
    root = write_folder(tmp_path / "rec")
    cfg = compose(*options(root, "data.downsample=2"))
    assembly = assemble(cfg)
    assert cfg.data.input_shape == [2, 6, 6] and cfg.data.num_classes == 3 and list(cfg.data.class_names) == NAMES
    assert assembly.data.classes == tuple(NAMES) and cfg.time_steps == 4


def test_figure_legends_name_the_classes():
    fig = membrane_figure(torch.zeros(4, 2, 3), [0, 2], 1.0, classes=NAMES)
    legend = [t.get_text() for t in fig.axes[-1].get_legend().get_texts()]
    assert legend[:3] == ["0 (left)", "1 (right)", "2 (up)"]
    assert fig.axes[1].get_title() == "sample 1, label 2 (up)"


def corrupt(root, case):
    target = root / "train" / "right" / "r003.npy"
    events = recording(1, 3)
    if case == "fields":
        np.save(target, np.zeros(5, np.dtype([("x", "<i2"), ("t", "<i8"), ("p", "<i1")])))
        return target, r"fields x, y, t, p .* has shape \[5\] and fields \['x', 't', 'p'\]"
    if case == "outside":
        events["x"][7] = 12
        np.save(target, events)
        return target, r"event 7 has x=12, outside the sensor's 0..11 \(data.sensor_size=\[12, 12, 2\]\)"
    if case == "polarity":
        events["p"][2] = -1
        np.save(target, events)
        return target, r"event 2 has p=-1"
    if case == "time":
        events["t"][10] = events["t"][9] - 1
        np.save(target, events)
        return target, r"the timestamps decrease at event 10 .*np.sort\(events, order='t'\)"
    if case == "nan time":  # float fields: NaN has no frame (it was a ValueError from the binning)
        floats = np.zeros(len(events), np.dtype([(f, "<f8") for f in ("x", "y", "t", "p")]))
        for f in ("x", "y", "t", "p"):
            floats[f] = events[f]
        floats["t"][4] = np.nan
        np.save(target, floats)
        return target, r"event 4 has t=nan; the fields x, y, t \(µs\) and p are whole numbers"
    if case == "garbage":
        target.write_bytes(b"not an array at all")
        return target, "cannot be read .* truncated or not a .npy array"
    if case == "pickled":
        np.save(target, np.array([{"x": 1}], dtype=object), allow_pickle=True)
        return target, "cannot be read"
    if case == "empty class":
        for f in (root / "test" / "up").iterdir():
            f.unlink()
        return root / "test" / "up", "holds no recording"
    if case == "unknown class":
        (root / "test" / "down").mkdir()
        np.save(root / "test" / "down" / "a.npy", events)
        return root / "test" / "down", r"a class that .* does not have \(its classes: \['left', 'right', 'up'\]\)"
    if case == "empty test":
        for d in (root / "test").iterdir():
            for f in d.iterdir():
                f.unlink()
            d.rmdir()
        return root / "test", "holds no class folder"
    if case == "no test":
        for f in (root / "test").rglob("*.npy"):
            f.unlink()
        for d in (root / "test").iterdir():
            d.rmdir()
        (root / "test").rmdir()
        return root, "has no test/ folder"
    raise AssertionError(case)


def test_whole_numbers_in_float_fields_are_read_as_integers(tmp_path):
    """float32 x/y (a common export) indexed the frames and failed inside the binning; whole numbers are events."""
    from snnrun.data.event_folder import read_recording

    events = recording(1, 3)
    floats = np.zeros(len(events), np.dtype([("x", "<f4"), ("y", "<f4"), ("t", "<f8"), ("p", "<f4")]))
    for f in ("x", "y", "t", "p"):
        floats[f] = events[f]
    np.save(tmp_path / "r.npy", floats)
    read = read_recording(tmp_path / "r.npy", (12, 12, 2))
    assert all(read.dtype[f] == np.int64 for f in ("x", "y", "t", "p"))
    assert all(np.array_equal(read[f], events[f]) for f in ("x", "y", "t", "p"))


CASES = ["fields", "outside", "polarity", "time", "nan time", "garbage", "pickled", "empty class", "unknown class", "empty test",
         "no test"]


@pytest.mark.parametrize("case", CASES)
def test_bad_recordings_and_folders_are_refused_naming_the_file(tmp_path, compose, case):
    root = write_folder(tmp_path / "rec")
    where, message = corrupt(root, case)
    with pytest.raises(DataError, match=message) as err:
        assemble(compose(*options(root)))
    assert str(where) in str(err.value)


def test_a_missing_or_malformed_sensor_size_is_refused(tmp_path, compose):
    root = write_folder(tmp_path / "rec")
    with pytest.raises(ConfigError, match="data.sensor_size='\\?\\?\\?'.*must be given"):
        assemble(compose("data=event_folder", f"data.path={root}"))
    with pytest.raises(ConfigError, match=r"data.sensor_size.*\[width, height, polarities\]"):
        assemble(compose(*options(root, "data.sensor_size=[12,12]")))
    with pytest.raises(ConfigError, match=r"data.sensor_size=12 is not allowed.*\[width, height, polarities\]"):
        assemble(compose(*options(root, "data.sensor_size=12")))  # a number, not a list: refused, no TypeError
    with pytest.raises(ConfigError, match="data.downsample.*a divisor of the sensor's 12 x 12"):
        assemble(compose(*options(root, "data.downsample=5")))


@pytest.mark.e2e
def test_the_command_trains_on_an_event_folder_and_the_checkpoint_names_the_classes(tmp_path):
    root = write_folder(tmp_path / "rec")
    run_dir = tmp_path / "run"
    run_cli(*options(root), "trainer.epochs=3", "optimizer.lr=5e-3", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    saved = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())["data"]
    assert saved["class_names"] == NAMES and saved["input_shape"] == [2, 12, 12]
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)
    assert state["config"]["data"]["class_names"] == NAMES
    assert read_results(run_dir)["test_acc"] > 0.6
    proc = run_cli(*options(root), f"hydra.run.dir={tmp_path / 'bad'}", "data.sensor_size=[10,12,2]", cwd=tmp_path,
                   check=False)
    assert proc.returncode == 2 and "outside the sensor's 0..9" in proc.stderr and not (tmp_path / "bad").exists()


def test_snnrun_train_on_an_event_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = write_folder(tmp_path / "rec", per_class=(4, 2))
    results, run_dir = snnrun.train(options(root, "trainer.max_steps=2"))
    assert results["steps"] == 2 and os.path.isfile(run_dir / "checkpoints" / "last.pt")
