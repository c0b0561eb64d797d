"""Event datasets: small files in each dataset's real on-disk format, read through tonic's own
dataset classes (their archive and file-count checks included), binned once and cached."""

import os
import re

import numpy as np
import pytest
import torch

from conftest import read_results, snnrun
from event_files import nmnist_bytes, write_gestures, write_nmnist, write_shd
from snnrun.data import events
from snnrun.run.assembly import assemble
from snnrun.run.rules import ConfigError
from snnrun.data.datasets import DataError

tonic = pytest.importorskip("tonic", reason="event datasets need tonic (pip install -e '.[events]')")
h5py = pytest.importorskip("h5py")


# Recording 0 of each split, binned by hand into 4 equal bins of 200 µs over t = 0 .. 800:
# tonic's ToFrame splits [t0, t_last) into (t_last - t0) // 4 µs bins, so the event at 800 falls outside.
KNOWN = dict(x=[1, 1, 2, 30, 5, 5], y=[3, 3, 0, 33, 7, 9], p=[0, 0, 1, 1, 0, 1], t=[0, 150, 210, 599, 600, 800])
KNOWN_FRAMES = {(0, 0, 3, 1): 2, (1, 1, 0, 2): 1, (2, 1, 33, 30): 1, (3, 0, 7, 5): 1}


@pytest.fixture(scope="module")
def nmnist_root(tmp_path_factory):
    """10,000 recordings per split (tonic refuses fewer before reading), tiny apart from KNOWN."""
    return write_nmnist(tmp_path_factory.mktemp("events"), first=KNOWN)


def test_nmnist_frames_are_the_hand_binned_counts(nmnist_root):
    data = events.event_dataset("NMNIST", str(nmnist_root), download=False, time_steps=4, cache=False)
    assert data.train.inputs.shape == (10000, 4, 2, 34, 34) and data.train.inputs.dtype == torch.uint8
    assert data.train.unit == 1.0 and len(data.test) == 10000
    expected = torch.zeros(4, 2, 34, 34, dtype=torch.uint8)
    for index, count in KNOWN_FRAMES.items():
        expected[index] = count
    assert torch.equal(data.train.inputs[0], expected) and torch.equal(data.test.inputs[0], expected)
    assert data.train.labels[:12].tolist() == [0] * 12  # file order: Train/0/00000.bin, Train/0/00010.bin, ...
    assert sorted(set(data.train.labels.tolist())) == list(range(10))
    binary = events.event_dataset("NMNIST", str(nmnist_root), download=False, time_steps=4, frames="binary", cache=False)
    assert binary.train.inputs[0, 0, 0, 3, 1] == 1 and binary.train.inputs.max() == 1


def test_frames_are_cached_once_and_read_back(nmnist_root, monkeypatch):
    first = events.event_dataset("NMNIST", str(nmnist_root), download=False, time_steps=3)
    binning = {"time_steps": 3, "time_window": None, "frames": "count", "downsample": 1}
    path = events.cache_path(nmnist_root, "NMNIST", "train", binning)
    assert path.is_file() and not list(path.parent.glob("*.tmp*"))

    def no_tonic(*args, **kwargs):
        raise AssertionError("the cache was not used")

    monkeypatch.setattr(events, "_open", no_tonic)
    again = events.event_dataset("NMNIST", str(nmnist_root), download=False, time_steps=3)
    assert torch.equal(again.train.inputs, first.train.inputs) and torch.equal(again.test.labels, first.test.labels)
    with pytest.raises(AssertionError, match="cache"):  # other binning parameters, another cache
        events.event_dataset("NMNIST", str(nmnist_root), download=False, time_steps=3, frames="binary")


def test_a_killed_conversion_leaves_no_cache(nmnist_root, monkeypatch):
    real = events.bin_recordings

    def killed(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt  # as if killed after binning, before the file is complete

    monkeypatch.setattr(events, "bin_recordings", killed)
    with pytest.raises(KeyboardInterrupt):
        events.event_dataset("NMNIST", str(nmnist_root), download=False, time_steps=5)
    binning = {"time_steps": 5, "time_window": None, "frames": "count", "downsample": 1}
    folder = events.cache_path(nmnist_root, "NMNIST", "train", binning).parent
    assert not folder.exists() or list(folder.iterdir()) == []

    def killed_while_writing(obj, f):
        with open(f, "wb") as fh:
            fh.write(b"PK half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(events, "bin_recordings", real)
    monkeypatch.setattr(torch, "save", killed_while_writing)
    with pytest.raises(KeyboardInterrupt):
        events.event_dataset("NMNIST", str(nmnist_root), download=False, time_steps=5)
    assert not folder.exists() or list(folder.iterdir()) == []


def test_time_windows_keep_the_first_frames(nmnist_root):
    data = events.event_dataset("NMNIST", str(nmnist_root), download=False, time_steps=3, time_window=100_000,
                                cache=False)
    frames = data.train.inputs[0]  # KNOWN lasts 800 µs: all of it in the first 100 ms window, then empty frames
    assert frames.shape == (3, 2, 34, 34) and int(frames[0].sum()) == 6 and int(frames[1:].sum()) == 0
    assert frames[0, 0, 3, 1] == 2 and frames[0, 0, 7, 5] == 1 and frames[0, 1, 9, 5] == 1
    per_recording = data.train.inputs[1:].flatten(1).sum(1)  # 12 events within 300 ms: 3 windows count them all
    assert per_recording.eq(12).all()


@pytest.mark.parametrize("fields, size", [(("x", "y", "t", "p"), (5, 4, 2)), (("x", "t", "p"), (7, 1, 2)),
                                          (("x", "y", "t", "p"), (5, 4, 1))])
@pytest.mark.parametrize("time_window", [None, 37.0])
def test_frames_are_tonics_and_a_hot_pixel_saturates(fields, size, time_window):
    """The frames of tonic's ToFrame, bin for bin, on random recordings; but counted in int32: tonic's int16
    counts wrap past 32,767 events in one pixel of one frame, and such a pixel read 0 instead of 255."""
    import tonic.transforms as transforms

    rng = np.random.default_rng(0)
    dtype = np.dtype([(f, np.int64) for f in fields])
    for n in (1, 50, 3000):
        recording = np.zeros(n, dtype)
        recording["x"] = rng.integers(0, size[0], n)
        if "y" in fields:
            recording["y"] = rng.integers(0, size[1], n)
        recording["p"] = rng.integers(0, size[2], n)
        recording["t"] = np.sort(rng.integers(0, 1000, n))
        ours = events._to_frame(size, 6, time_window)(recording.copy())
        theirs = (transforms.ToFrame(sensor_size=size, n_time_bins=6) if time_window is None else
                  transforms.ToFrame(sensor_size=size, time_window=time_window, include_incomplete=True))(recording.copy())
        assert ours.shape == np.asarray(theirs).shape and np.array_equal(ours, theirs)
    hot = np.zeros(40_000, dtype)  # one pixel, one frame
    hot["t"] = np.arange(40_000) // 1000
    frames = events._to_frame(size, 1, None)(hot)
    # tonic's one bin is [t0, t_last): the 1,000 events at t_last fall outside; its int16 count would read -26,536
    assert frames.sum() == frames.max() == 39_000
    assert torch.from_numpy(frames).clamp(0, 255).max() == 255


def test_downsampling_pools_whole_squares_of_pixels():
    """(x, y) counts into (x // k, y // k): tonic's Downsample multiplies by 1/k in floating point, and at k = 49
    put pixel 49 (49 * (1/49) = 0.999...) into column 0."""
    import tonic.transforms as transforms

    recording = np.zeros(4, np.dtype([("x", np.int64), ("y", np.int64), ("t", np.int64), ("p", np.int64)]))
    recording["x"], recording["y"], recording["t"] = [48, 49, 97, 0], [0, 49, 50, 97], [0, 1, 2, 3]
    frames = events._binner((98, 98, 2), 1, 10.0, 49)(recording)  # one window of 10 µs: all four events
    assert frames.shape == (1, 2, 2, 2) and frames[0, 0].tolist() == [[1, 0], [1, 2]]
    assert transforms.Downsample(spatial_factor=1 / 49)(recording.copy())["x"][1] == 0  # what tonic would do
    for k in (2, 7):  # where tonic's float product is exact, the frames are its
        size = (98 // k, 98 // k, 2)
        ours = events._binner((98, 98, 2), 1, 10.0, k)(recording.copy())
        theirs = transforms.Compose([transforms.Downsample(spatial_factor=1 / k), transforms.ToFrame(
            sensor_size=size, time_window=10.0, include_incomplete=True)])(recording.copy())
        assert np.array_equal(ours, theirs)


def test_binning_that_leaves_frames_empty_is_refused_with_the_numbers(nmnist_root):
    with pytest.raises(DataError, match=r"% of the frames of the first 64 recordings are empty.*time_window=1 µs") as err:
        events.event_dataset("NMNIST", str(nmnist_root), download=False, time_steps=50, time_window=1, cache=False)
    lasting = float(re.search(r"recordings that last ([\d,]+) µs", str(err.value)).group(1).replace(",", ""))
    assert lasting >= 800  # the recordings' own length (KNOWN's is 800 µs), not what the 50 windows of 1 µs kept


def test_frames_that_exceed_memory_are_refused_with_the_numbers(nmnist_root, monkeypatch):
    monkeypatch.setattr(events, "available_memory", lambda device: 2**20)
    with pytest.raises(DataError, match=r"10,000 recordings of data.time_steps=20 frames of \[2, 34, 34\] take 0.4 GiB, "
                                        r"and this machine has 0.0 GiB available"):
        events.event_dataset("NMNIST", str(nmnist_root), download=False, time_steps=20, cache=False)


def test_a_damaged_recording_is_named(tmp_path, nmnist_root):
    """A copy of the dataset (links to its files) in which one recording is truncated."""
    cut = tmp_path / "cut"
    (cut / "NMNIST").mkdir(parents=True)
    for item in ("Test", "train.zip", "test.zip"):
        os.symlink(nmnist_root / "NMNIST" / item, cut / "NMNIST" / item)
    train = cut / "NMNIST" / "Train"
    for label in range(10):
        (train / str(label)).mkdir(parents=True)
        for f in (nmnist_root / "NMNIST" / "Train" / str(label)).iterdir():
            os.symlink(f, train / str(label) / f.name)
    damaged = train / "3" / "00003.bin"
    damaged.unlink()
    damaged.write_bytes(nmnist_bytes(**KNOWN)[:-2])  # a truncated record
    with pytest.raises(DataError, match=f"cannot read {damaged}.*truncated"):
        events.event_dataset("NMNIST", str(cut), download=False, time_steps=4, cache=False)


def test_the_cache_is_binned_again_when_the_dataset_files_change(tmp_path):
    """The cache belongs to the files it was binned from: SHD written again with more recordings is binned again
    (the cache used to give the first 6 recordings forever)."""
    root = write_shd(tmp_path)
    assert len(events.event_dataset("SHD", str(root), download=False, time_steps=10).train) == 6
    write_shd(tmp_path, n_train=9)
    assert len(events.event_dataset("SHD", str(root), download=False, time_steps=10).train) == 9


def test_a_cache_file_that_is_not_snnruns_is_refused(tmp_path):
    root = write_shd(tmp_path)
    binning = {"time_steps": 10, "time_window": None, "frames": "count", "downsample": 1}
    path = events.cache_path(root, "SHD", "train", binning)
    path.parent.mkdir(parents=True)
    for payload in (torch.zeros(3), {"format": events.CACHE_FORMAT, "inputs": torch.zeros(2, 10, 700, dtype=torch.uint8),
                                     "labels": torch.zeros(3, dtype=torch.int64)}):
        torch.save(payload, path)
        with pytest.raises(DataError, match="are not a cache snnrun wrote .* delete the file"):
            events.event_dataset("SHD", str(root), download=False, time_steps=10)


def test_a_missing_dataset_offline_says_where_which_files_and_where_from(tmp_path):
    with pytest.raises(DataError) as err:
        events.event_dataset("NMNIST", str(tmp_path), download=False)
    message = str(err.value)
    assert str(tmp_path / "NMNIST") in message and "train.zip and Train/" in message and "60,000 recordings" in message
    assert "data.root=" in message and "SNNRUN_DATA" in message and "https://" in message


def test_shd_bins_700_channels(tmp_path):
    root = write_shd(tmp_path)
    data = events.event_dataset("SHD", str(root), download=False, time_steps=10, cache=False)
    assert data.train.inputs.shape == (6, 10, 700) and data.test.labels.tolist() == [0, 1, 2, 3]
    with h5py.File(root / "SHD" / "shd_train.h5") as f:
        units, times = f["spikes/units"][2], f["spikes/times"][2].astype(np.float64)
    t = (times * 1e6).astype(np.int64)
    width = (t[-1] - t[0]) // 10
    counted = (t - t[0]) < 10 * width
    expected = np.zeros((10, 700), dtype=np.int64)
    np.add.at(expected, (((t - t[0]) // width)[counted], units[counted]), 1)
    assert torch.equal(data.train.inputs[2].long(), torch.from_numpy(expected))


def test_a_truncated_shd_file_is_named(tmp_path):
    root = write_shd(tmp_path)
    path = root / "SHD" / "shd_train.h5"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DataError, match=f"cannot read {path}"):
        events.event_dataset("SHD", str(root), download=False, cache=False)


def test_dvs_gesture_downsamples_to_the_declared_shape(compose, tmp_path):
    root = write_gestures(tmp_path)
    assembly = assemble(compose("data=dvs_gesture", f"data.root={root}", "data.download=false", "data.time_steps=4",
                                "data.downsample=8", "model.arch=8C3-FC11", "data.batch_size=16"))
    train = assembly.data.train
    assert train.inputs.shape == (110, 4, 2, 16, 16) and assembly.options.time_steps == 4
    assert sorted(set(train.labels.tolist())) == list(range(11))
    first = np.load(sorted((root / "DVSGesture" / "ibmGestureTrain").glob("*/*.npy"))[0])
    assert int(train.inputs[0].sum()) <= len(first) and int(train.inputs[0].sum()) >= len(first) - 1
    with pytest.raises(ConfigError, match="data.downsample"):
        assemble(compose("data=dvs_gesture", f"data.root={root}", "data.download=false", "data.downsample=3"))


@pytest.mark.e2e
def test_nmnist_trains_end_to_end_and_refuses_a_conflicting_t(nmnist_root, tmp_path):
    common = ["data=nmnist", f"data.root={nmnist_root}", "data.download=false", "data.time_steps=4",
              "model.arch=4C5-MP2-FC10", "data.batch_size=64", "data.eval_batch_size=2000"]
    snnrun(*common, "trainer.max_steps=3", "trainer.augment_shift=2", "hydra.run.dir=run", cwd=tmp_path)
    results = read_results(tmp_path / "run")
    assert results["status"] == "ok" and results["steps"] == 3
    proc = snnrun(*common, "time_steps=9", "hydra.run.dir=refused", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "data.time_steps=9" in proc.stderr and not (tmp_path / "refused").exists()


@pytest.mark.e2e
@pytest.mark.parametrize("preset", [pytest.param("nmnist_csnn", marks=pytest.mark.slow), "shd_lif", "shd_alif"])
def test_the_event_presets_train(preset, nmnist_root, tmp_path):
    root = nmnist_root if preset == "nmnist_csnn" else write_shd(tmp_path / "data", n_train=40, n_test=10)
    snnrun(f"experiment={preset}", f"data.root={root}", "data.download=false", "data.time_steps=8",
           "data.batch_size=16", "data.val_size=8", "trainer.max_steps=2", "hydra.run.dir=run", cwd=tmp_path)
    results = read_results(tmp_path / "run")
    assert results["status"] == "ok" and results["steps"] == 2
