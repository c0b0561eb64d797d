"""A user's own event recordings (``data=event_folder``): ``<path>/train/<class>/*.npy`` and
``<path>/test/<class>/*.npy``.

Each recording is a structured array with fields x, y, t, p (tonic's event layout; t in µs,
non-decreasing; a one-row sensor may leave y out) from a sensor of ``sensor_size`` = [W, H, P].
The classes are the training folder's sorted sub-folder names. Recordings are binned like
``nmnist`` (same options) and cached in ``<path>/snnrun_cache``, keyed by the binning, the
sensor and every file's name, size and modification time, so a changed folder is binned again
(one cache per binning, so a sweep over the binning keeps each). Hidden folders are not classes.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..core.options import OptionError
from .datasets import DataError, Dataset
from .events import Recordings, bin_recordings, binned, cached, check_binning, frame_shape


def _sensor(sensor_size) -> tuple[int, int, int]:
    if not (isinstance(sensor_size, Sequence) and len(sensor_size) == 3 and all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in sensor_size)):
        raise OptionError("sensor_size", sensor_size, "[width, height, polarities] of the sensor, positive integers "
                          "(a one-row sensor of channels: [channels, 1, 1])", "[34,34,2]")
    return tuple(sensor_size)


def _classes(path: Path) -> list[str]:
    """The training folder's class names, sorted; refused where a folder is missing or a class empty."""
    for split in ("train", "test"):
        if not (path / split).is_dir():
            raise DataError(f"data.path={path} has no {split}/ folder; it must hold train/<class>/*.npy and "
                            "test/<class>/*.npy")
    names = sorted(d.name for d in (path / "train").iterdir() if d.is_dir() and not d.name.startswith("."))
    if len(names) < 2:
        raise DataError(f"{path / 'train'} holds {len(names)} class folder(s) {names}; a classifier needs at least 2")
    for split in ("train", "test"):
        folders = sorted(d for d in (path / split).iterdir() if d.is_dir() and not d.name.startswith("."))
        if not folders:
            raise DataError(f"{path / split} holds no class folder; it must hold {split}/<class>/*.npy")
        for folder in folders:
            if folder.name not in names:
                raise DataError(f"{folder} is a class that {path / 'train'} does not have (its classes: {names})")
            if not any(folder.glob("*.npy")):
                raise DataError(f"{folder} holds no recording (.npy); remove the empty class folder or fill it")
    return names


def _files(path: Path, split: str, names: list[str]) -> list[tuple[Path, int]]:
    return [(f, label) for label, name in enumerate(names) for f in sorted((path / split / name).glob("*.npy"))]


def _fingerprint(files: list[tuple[Path, int]]) -> str:
    listing = "\n".join(f"{f.parent.name}/{f.name} {f.stat().st_size} {f.stat().st_mtime_ns}" for f, _ in files)
    return hashlib.sha256(listing.encode()).hexdigest()[:16]


def read_recording(file: Path, sensor: tuple[int, int, int]) -> np.ndarray:
    """One recording's events, checked: x/y/t/p fields, coordinates inside the sensor, time in order."""
    try:
        events = np.load(file, allow_pickle=False)
    except Exception as err:
        raise DataError(f"{file} cannot be read ({type(err).__name__}: {str(err).strip().splitlines()[0]}): the file "
                        "is truncated or not a .npy array (np.save of a structured array with fields x, y, t, p)") from None
    width, height, polarities = sensor
    needed = ("x", "t", "p") if height == 1 else ("x", "y", "t", "p")
    fields = events.dtype.names or ()
    if events.ndim != 1 or any(f not in fields for f in needed):
        raise DataError(f"{file}: a recording must be a 1-D structured array with fields {', '.join(needed)} "
                        f"(tonic's event layout); this one has shape {list(events.shape)} and fields {list(fields)}")
    for field in needed:  # the frames index by x, y and p and slice by t: whole numbers (float fields included)
        values = events[field]
        whole = np.isfinite(values) & (values == np.round(values)) if values.dtype.kind == "f" else None
        if whole is not None and not whole.all():
            index = int((~whole).nonzero()[0][0])
            raise DataError(f"{file}: event {index} has {field}={values[index]}; the fields x, y, t (µs) and p are whole "
                            f"numbers (store them as integers)")
    for field, size in (("x", width), ("y", height), ("p", polarities)):
        if field in fields and len(events):
            values = events[field]
            outside = (values < 0) | (values >= size)
            if outside.any():
                index = int(outside.nonzero()[0][0])
                raise DataError(f"{file}: event {index} has {field}={values[index]}, outside the sensor's 0..{size - 1} "
                                f"(data.sensor_size={list(sensor)}); fix the recording or data.sensor_size")
    floats = [f for f in needed if events.dtype[f].kind == "f"]  # whole numbers in float fields: as integers
    if floats:
        events = events.astype([(f, np.int64 if f in floats else events.dtype[f]) for f in fields])
    if len(events) > 1:
        back = np.diff(events["t"].astype(np.int64)) < 0
        if back.any():
            index = int(back.nonzero()[0][0]) + 1
            raise DataError(f"{file}: the timestamps decrease at event {index} (t={events['t'][index - 1]} then "
                            f"{events['t'][index]}); sort the events by t (np.sort(events, order='t'))")
    return events


def event_folder(path, sensor_size, time_steps: int = 20, time_window: float | None = None, frames: str = "count",
                 downsample: int = 1, cache: bool = True) -> Dataset:
    """The recordings under ``path`` as frames [N, T, *frame] and labels, binned once and cached."""
    sensor = _sensor(sensor_size)
    binning = check_binning(time_steps, time_window, frames, downsample, sensor)
    root = Path(str(path)).expanduser()
    names = _classes(root)
    splits = []
    for split in ("train", "test"):
        files = _files(root, split, names)
        key = {**binning, "sensor": list(sensor), "classes": names, "files": _fingerprint(files)}
        binned_as = f"T{time_steps}-{'bins' if time_window is None else f'window{time_window!r}us'}-{frames}-ds{downsample}"
        where = root / "snnrun_cache" / binned_as / f"{split}.pt" if cache else None
        done = cached(where, key) if where is not None else None
        if done is None:
            recordings = Recordings(f"{root.name} ({split})", sensor, len(files),
                                    lambda i, files=files: (read_recording(files[i][0], sensor), files[i][1]),
                                    lambda i, files=files: str(files[i][0]))
            shape = (len(files), time_steps, *frame_shape(sensor, downsample))
            done = binned(where, key, recordings.title, shape,
                          lambda recordings=recordings: bin_recordings(recordings, binning, sys.stderr.isatty()))
        splits.append(done)
    return Dataset(*splits, classes=tuple(names))


def describe(path, sensor_size, time_steps: int = 20, time_window=None, frames="count", downsample: int = 1,
             cache: bool = True) -> dict:
    """What the folder holds: the frame shape, the number of classes and their names."""
    sensor = _sensor(sensor_size)
    check_binning(time_steps, time_window, frames, downsample, sensor)
    root = Path(str(path)).expanduser()
    if not root.is_dir():
        raise DataError(f"data.path={root}: no such folder; it must hold train/<class>/*.npy and test/<class>/*.npy")
    names = _classes(root)
    return {"input_shape": list(frame_shape(sensor, downsample)), "num_classes": len(names), "class_names": names}


event_folder.describe = describe
