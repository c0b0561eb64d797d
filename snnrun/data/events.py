"""Event-camera and spike datasets (N-MNIST, SHD, DVS128 Gesture), read with tonic, binned into
frames once, and cached.

tonic reads each recording's events (x, y, t, p) and ``tonic.transforms.ToFrame`` bins them
into ``time_steps`` frames of event counts [T, P, H, W] (SHD: [T, 700]): each recording is cut
into ``time_steps`` equal bins, or, with ``time_window``, into windows of that many µs from its
start (the first ``time_steps`` are kept; shorter recordings end in empty frames).
``frames: binary`` keeps 1 where a pixel had any event. A split's frames are converted once into
one uint8 tensor [N, T, *frame] (counts saturate at 255) and cached in
``<root>/snnrun_cache/<dataset>/<binning>/<split>.pt``, keyed by every binning parameter; epochs
and later runs read that file. It is written to a temporary file, fsynced and renamed, so a
conversion that is killed leaves no cache behind.
"""

from __future__ import annotations

import logging
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from ..atomic import write_atomic
from ..core.options import OptionError, one_of, positive
from .datasets import DataError, Dataset, Split, available_memory

log = logging.getLogger("snnrun")

CACHE_FORMAT = "snnrun-frames-1"
EMPTY_LIMIT = 0.5  # refuse binnings that leave more than half of the frames empty


@dataclass(frozen=True)
class Source:
    """What tonic expects of one dataset under ``<root>/<tonic_class>/``."""

    title: str
    sensor: tuple[int, int, int]  # tonic's sensor_size: (width, height, polarities)
    files: dict[str, tuple[str, str, str, int]]  # split -> (archive, extracted folder or file, pattern, minimum count)
    recordings: dict[str, int]  # split -> recordings in the published dataset


SOURCES = {
    "NMNIST": Source("N-MNIST", (34, 34, 2), {"train": ("train.zip", "Train", "*.bin", 10000),
                                              "test": ("test.zip", "Test", "*.bin", 10000)},
                     {"train": 60000, "test": 10000}),
    "SHD": Source("Spiking Heidelberg Digits", (700, 1, 1), {"train": ("shd_train.h5.zip", "shd_train.h5", "", 1),
                                                             "test": ("shd_test.h5.zip", "shd_test.h5", "", 1)},
                  {"train": 8156, "test": 2264}),
    "DVSGesture": Source("DVS128 Gesture", (128, 128, 2),
                         {"train": ("ibmGestureTrain.tar.gz", "ibmGestureTrain", "*.npy", 100),
                          "test": ("ibmGestureTest.tar.gz", "ibmGestureTest", "*.npy", 100)},
                         {"train": 1077, "test": 264}),
}


def _tonic():
    try:
        import tonic
    except ImportError:
        raise DataError("event datasets are read with tonic, which is not installed: pip install 'snnrun[events]'") from None
    return tonic


def frame_shape(sensor: tuple[int, int, int], downsample: int = 1) -> tuple[int, ...]:
    """One frame of a sensor (width, height, polarities): [P, H, W] for cameras, [channels] for a
    one-row sensor of one polarity (SHD's cochlea)."""
    width, height, polarities = sensor
    if height == 1 and polarities == 1:
        return (width,)
    return (polarities, height // downsample, width // downsample)


@dataclass(frozen=True)
class Recordings:
    """The recordings of one split: ``read(i)`` gives recording i's events and label, ``where(i)`` its file."""

    title: str
    sensor: tuple[int, int, int]
    count: int
    read: Callable[[int], tuple[np.ndarray, int]]
    where: Callable[[int], str]


def _present(location: Path, split: str, source: Source) -> bool:
    archive, folder, pattern, minimum = source.files[split]
    if not (location / archive).is_file():
        return False
    if not pattern:
        return (location / folder).is_file()
    return sum(1 for _ in (location / folder).glob(f"**/{pattern}")) >= minimum


def _missing(name: str, location: Path, split: str, cls, reason: str) -> DataError:
    source = SOURCES[name]
    archive, folder, pattern, _ = source.files[split]
    url = getattr(cls, f"{split}_url", None) or getattr(cls, "base_url", "") + archive
    needed = f"{archive} and " + (f"{folder}/…/{pattern}" if pattern else folder)  # a folder of files, or one file
    return DataError(
        f"{source.title} ({split}) was not found in {location} and {reason}. tonic needs {needed} there "
        f"({source.recordings[split]:,} recordings; it checks for the downloaded archive too). Point data.root at the "
        f"folder that holds {name}/, e.g. data.root=/path/to/datasets when the files are in /path/to/datasets/{name}, "
        f"or set the SNNRUN_DATA environment variable. With a network connection and data.download=true, tonic "
        f"downloads them from {url}.")


def _open(name: str, root: Path, split: str, download: bool):
    """tonic's dataset for one split, or a DataError that says where it looked and what it needs."""
    tonic = _tonic()
    cls = getattr(tonic.datasets, name)
    location = root / name
    if not _present(location, split, SOURCES[name]) and not download:
        raise _missing(name, location, split, cls, "download is off (data.download=false)")
    try:
        return cls(save_to=str(root), train=split == "train")
    except OSError as err:  # offline: urllib's URLError; a truncated or foreign HDF5 file: h5py's OSError
        if _present(location, split, SOURCES[name]):
            raise DataError(f"{SOURCES[name].title}: cannot read {location / SOURCES[name].files[split][1]}: "
                            f"{str(err).strip()}. The file is truncated or not a {SOURCES[name].title} file; "
                            "delete it and download the dataset again.") from None
        raise _missing(name, location, split, cls, f"the download failed ({str(err).strip()})") from None


def _binner(sensor: tuple[int, int, int], time_steps: int, time_window: float | None, downsample: int):
    """Recording -> frames; with ``downsample`` k, pixel (x, y) counts into (x // k, y // k), which tonic's
    ``Downsample`` computes in floating point (x * (1/k), truncated: 49 * (1/49) fell into column 0)."""
    width, height, polarities = sensor
    size = (width // downsample, height // downsample, polarities) if height > 1 else (width, height, polarities)
    to_frame = _to_frame(size, time_steps, time_window)
    if downsample == 1:
        return to_frame

    def pooled(events: np.ndarray) -> np.ndarray:
        events = events.copy()
        for axis in ("x", "y"):
            events[axis] //= downsample
        return to_frame(events)

    return pooled


def _to_frame(size: tuple[int, int, int], time_steps: int, time_window: float | None) -> Callable:
    """tonic's ``ToFrame`` of a non-empty recording (its slices, by ``time_steps`` bins or windows of ``time_window``
    µs, and its layout [T, P, (H,) W]), counted in int32: tonic counts in int16, which wraps past 32,767 events in
    one pixel of one frame (a hot pixel read 0 instead of saturating)."""
    from tonic.slicers import slice_events_by_time, slice_events_by_time_bins

    width, height, polarities = size

    def to_frame(events: np.ndarray) -> np.ndarray:
        if polarities == 1:
            if np.unique(events["p"]).size > 1:
                raise ValueError("Single polarity sensor, but events contain both polarities.")
            events = events.copy()
            events["p"] = 0
        slices = (slice_events_by_time_bins(events, time_steps) if time_window is None else
                  slice_events_by_time(events, time_window, include_incomplete=True))
        spatial = (height, width) if "y" in events.dtype.names else (width,)
        frames = np.zeros((len(slices), polarities, *spatial), dtype=np.int32)
        for i, part in enumerate(slices):
            where = (part["y"], part["x"]) if "y" in events.dtype.names else (part["x"],)
            np.add.at(frames, (i, part["p"].astype(int), *where), 1)
        return frames

    return to_frame


def bin_recordings(recordings: Recordings, binning: dict, progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Bin every recording into uint8 frames [N, T, *frame] (counts saturate at 255) and int64 labels [N]."""
    time_steps, shape = binning["time_steps"], frame_shape(recordings.sensor, binning["downsample"])
    binner = _binner(recordings.sensor, time_steps, binning["time_window"], binning["downsample"])
    ceiling = 1 if binning["frames"] == "binary" else 255
    inputs = torch.zeros((recordings.count, time_steps, *shape), dtype=torch.uint8)
    labels = torch.zeros(recordings.count, dtype=torch.int64)
    empty = lengths = 0
    for row in tqdm(range(recordings.count), desc=f"binning {recordings.title}", unit="rec", disable=not progress):
        events, label = recordings.read(row)
        if row < 64:  # the whole recording's length, before the windows cut it (for the empty-frames message)
            lengths += int(events["t"][-1] - events["t"][0]) if len(events) else 0
        try:
            if binning["time_window"] is not None and len(events):  # only the first time_steps windows are kept
                events = events[events["t"] < events["t"][0] + time_steps * binning["time_window"]]
            frames = binner(events) if len(events) else np.zeros((time_steps, *shape))
        except Exception as err:  # tonic raises ValueError, IndexError, KeyError... on damaged recordings
            raise DataError(f"{recordings.title}: cannot bin {recordings.where(row)}: {type(err).__name__}: "
                            f"{str(err).strip()}. The file is truncated or not a {recordings.title} recording") from None
        frames = torch.from_numpy(np.asarray(frames)).reshape(-1, *shape)[:time_steps]
        inputs[row, :len(frames)] = frames.clamp(0, ceiling).to(torch.uint8)
        labels[row] = int(label)
        if row < 64:  # the first recordings tell whether the binning leaves the frames empty
            empty += int((inputs[row].flatten(1).amax(1) == 0).sum())
            if row == min(63, recordings.count - 1) and empty > EMPTY_LIMIT * (row + 1) * time_steps:
                raise DataError(_too_empty(recordings.title, binning, empty / ((row + 1) * time_steps),
                                           lengths / (row + 1), row + 1))
    return inputs, labels


def _too_empty(title: str, binning: dict, fraction: float, mean_us: float, count: int) -> str:
    t, window = binning["time_steps"], binning["time_window"]
    if window is None:
        how = (f"data.time_steps={t} equal bins of recordings that last {mean_us:,.0f} µs on average make "
               f"{mean_us / t:,.1f} µs bins; use fewer data.time_steps, or data.time_window")
    else:
        how = (f"data.time_steps={t} windows of data.time_window={window:g} µs cover {t * window:,.0f} µs of recordings "
               f"that last {mean_us:,.0f} µs on average; use a data.time_window that fits the recordings, or "
               f"data.time_window=null to cut each recording into data.time_steps bins")
    return (f"{title}: {100 * fraction:.0f} % of the frames of the first {count} recordings are empty "
            f"(refused above {100 * EMPTY_LIMIT:.0f} %): {how}.")


def cached(path: Path, key: dict) -> Split | None:
    """The frames in the cache file ``path`` if it holds them binned under ``key`` (every binning option)."""
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:
        raise DataError(f"the cached frames {path} cannot be read ({str(err).strip().splitlines()[0]}); "
                        "delete the file and snnrun bins the recordings again") from None
    inputs, labels = (saved.get("inputs"), saved.get("labels")) if isinstance(saved, dict) else (None, None)
    if not (isinstance(inputs, torch.Tensor) and isinstance(labels, torch.Tensor) and inputs.dtype == torch.uint8
            and labels.ndim == 1 and len(inputs) == len(labels)):
        raise DataError(f"the cached frames {path} are not a cache snnrun wrote (a dict of uint8 frames and one label "
                        "per recording); delete the file and snnrun bins the recordings again")
    if saved.get("format") == CACHE_FORMAT and saved.get("binning") == key:
        return Split(inputs, labels, unit=1.0)
    return None


def binned(path: Path | None, key: dict, title: str, shape: tuple[int, ...], make: Callable[[], tuple]) -> Split:
    """The frames [N, *shape] that ``make()`` bins, written to the cache file ``path`` atomically under
    ``key`` (``path`` None: not cached); refused before binning if they fit neither in memory nor on disk."""
    size = int(np.prod(shape))
    free = available_memory(torch.device("cpu"))
    if free is not None and size > free:
        raise DataError(f"{title}: {shape[0]:,} recordings of data.time_steps={shape[1]} frames of {list(shape[2:])} "
                        f"take {size / 2**30:.1f} GiB, and this machine has {free / 2**30:.1f} GiB available; use "
                        "fewer data.time_steps or a larger data.downsample")
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise DataError(f"{title}: cannot create the cache folder {path.parent} ({err.strerror}); make it "
                            "writable, or set data.cache=false to bin in memory at every run") from None
        disk = shutil.disk_usage(path.parent).free
        if size > disk:
            raise DataError(f"{title}: the binned frames take {size / 2**30:.1f} GiB and {path.parent} has "
                            f"{disk / 2**30:.1f} GiB free; free some space or set data.cache=false")
    log.info("binning %s: %d recordings into %s frames -> %s", title, shape[0], list(shape[1:]), path or "memory")
    inputs, labels = make()
    if path is not None:
        payload = {"format": CACHE_FORMAT, "binning": key, "inputs": inputs, "labels": labels}
        try:
            write_atomic(path, lambda tmp: torch.save(payload, tmp))
        except OSError as err:
            raise DataError(f"{title}: cannot write the cache {path} ({err.strerror}); free some space or make the "
                            "folder writable, or set data.cache=false") from None
    return Split(inputs, labels, unit=1.0)


def check_binning(time_steps, time_window, frames, downsample, sensor: tuple[int, int, int]) -> dict:
    """The binning options, checked: -> the binning record that keys the cache."""
    if not (isinstance(time_steps, int) and not isinstance(time_steps, bool) and time_steps > 0):
        raise OptionError("time_steps", time_steps, "a positive integer (frames per recording)", 20)
    if time_window is not None:
        time_window = positive("time_window", time_window, example=10000)
    one_of("frames", frames, ("count", "binary"))
    width, height = sensor[:2]
    if not (isinstance(downsample, int) and not isinstance(downsample, bool) and downsample >= 1
            and (downsample == 1 or (height > 1 and width % downsample == 0 and height % downsample == 0))):
        raise OptionError("downsample", downsample, f"1, or a divisor of the sensor's {width} x {height} pixels", 2)
    return {"time_steps": time_steps, "time_window": time_window, "frames": frames, "downsample": downsample}


def cache_path(root: Path, name: str, split: str, binning: dict) -> Path:
    window = "bins" if binning["time_window"] is None else f"window{binning['time_window']!r}us"
    folder = f"T{binning['time_steps']}-{window}-{binning['frames']}-ds{binning['downsample']}"
    return root / "snnrun_cache" / name / folder / f"{split}.pt"


def _files(root: Path, name: str, split: str) -> list[int]:
    """What a split's cache was binned from: the number and total bytes of its files (an extraction that was cut
    short, or files replaced since, bin again; an edit that keeps every size goes unseen)."""
    _, folder, pattern, _ = SOURCES[name].files[split]
    path = root / name / folder
    files = ([path] if path.is_file() else []) if not pattern else [p for p in path.glob(f"**/{pattern}") if p.is_file()]
    return [len(files), sum(p.stat().st_size for p in files)]


def _split(name: str, root: Path, split: str, download: bool, binning: dict, use_cache: bool) -> Split:
    path = cache_path(root, name, split, binning) if use_cache else None
    source = SOURCES[name]
    done = cached(path, {**binning, "files": _files(root, name, split)}) if path is not None else None
    if done is not None:
        return done
    ds = _open(name, root, split, download)
    files = getattr(ds, "data", None)  # one file per recording: sort them, so every machine caches the same order
    by_file = isinstance(files, list) and len(files) == len(ds) and all(isinstance(f, str) for f in files)
    order = sorted(range(len(ds)), key=lambda i: files[i]) if by_file else list(range(len(ds)))

    def where(row: int) -> str:
        return files[order[row]] if by_file else f"{ds.location_on_system} (recording {order[row]})"

    def read(row: int):
        try:
            return ds[order[row]]
        except Exception as err:  # tonic raises ValueError, IndexError, KeyError... on damaged files
            raise DataError(f"{source.title}: cannot read {where(row)}: {type(err).__name__}: {str(err).strip()}. The "
                            f"file is truncated or not a {source.title} recording; delete it and download the dataset "
                            "again.") from None

    recordings = Recordings(source.title, source.sensor, len(ds), read, where)
    shape = (len(ds), binning["time_steps"], *frame_shape(source.sensor, binning["downsample"]))
    return binned(path, {**binning, "files": _files(root, name, split)}, f"{source.title} ({split})", shape,
                  lambda: bin_recordings(recordings, binning, progress=sys.stderr.isatty()))


def event_dataset(name: str, root: str, download: bool = True, time_steps: int = 20, time_window: float | None = None,
                  frames: str = "count", downsample: int = 1, cache: bool = True) -> Dataset:
    """``name`` (NMNIST, SHD or DVSGesture) from ``root`` as frames [N, T, *frame], binned once and cached."""
    one_of("name", name, tuple(SOURCES))
    binning = check_binning(time_steps, time_window, frames, downsample, SOURCES[name].sensor)
    root_path = Path(root).expanduser()
    return Dataset(*(_split(name, root_path, split, download, binning, cache) for split in ("train", "test")))
