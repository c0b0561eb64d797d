"""A user's own tensors (``data=tensors``): ``.pt`` or ``.npz`` files of ``inputs`` and ``labels``.

A ``.pt`` file holds a dict ``{"inputs": tensor, "labels": tensor}`` saved with ``torch.save``;
it is read with ``weights_only=True`` (no arbitrary object is ever unpickled) and memory-mapped.
A ``.npz`` file holds arrays ``inputs`` and ``labels`` (``np.savez``); its stored members are
memory-mapped in place, compressed ones (``np.savez_compressed``) are read into memory.
``inputs`` is [N, *shape] (static: images or features, through the encoder) or, with
``temporal``, [N, T, *features] (the sequence itself); ``labels`` are N integers from 0. The
shape, T and the number of classes are read from the files (``describe``). Inputs reach the
network as stored, but static uint8 ones (pixels) divided by 255, unless ``unit`` says otherwise.
"""

from __future__ import annotations

import hashlib
import mmap
import re
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..core.options import OptionError, positive
from .datasets import DataError, Dataset, Split, available_memory

KEYS = ("inputs", "labels")
CHUNK_BYTES = 2**26  # the NaN/inf scan reads this much at a time


def _npz_member(path: Path, archive: zipfile.ZipFile, key: str) -> np.ndarray:
    """Member ``key`` of an ``.npz``: memory-mapped where it is stored uncompressed, else read."""
    try:
        info = archive.getinfo(f"{key}.npy")
    except KeyError:
        found = sorted(n.removesuffix(".npy") for n in archive.namelist())
        raise DataError(f"{path} has no array '{key}' (it holds {found}); save the file with "
                        "np.savez(path, inputs=..., labels=...)") from None
    if info.compress_type != zipfile.ZIP_STORED:
        free = available_memory(torch.device("cpu"))
        if free is not None and info.file_size > free:
            raise DataError(f"{path}: '{key}' is compressed (np.savez_compressed), so it cannot be memory-mapped, and its "
                            f"{info.file_size / 2**30:.1f} GiB do not fit in the {free / 2**30:.1f} GiB available; "
                            "write it uncompressed with np.savez, which snnrun memory-maps")
        with archive.open(info) as member:
            return np.lib.format.read_array(member, allow_pickle=False)
    with open(path, "rb") as raw:  # the member's bytes lie after its local header: map them where they are
        raw.seek(info.header_offset)
        local = raw.read(30)
        start = info.header_offset + 30 + int.from_bytes(local[26:28], "little") + int.from_bytes(local[28:30], "little")
        raw.seek(start)
        version = np.lib.format.read_magic(raw)
        header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = header(raw)
        if dtype.hasobject:
            raise ValueError("Object arrays cannot be loaded when allow_pickle=False")
        offset = raw.tell()
    if int(np.prod(shape)) == 0:
        return np.zeros(shape, dtype)
    # read-only and shared: the pages are the file's, charged to no process (a private map of a file bigger
    # than memory is refused by the kernel's overcommit check), and the file can never be written through it
    return np.memmap(path, dtype=dtype, mode="r", shape=shape, order="F" if fortran else "C", offset=offset)


def _tensor(array: np.ndarray) -> torch.Tensor:
    with warnings.catch_warnings():  # a read-only map: torch warns that it cannot be written, and nothing writes it
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


def _read_npz(path: Path) -> dict:
    with zipfile.ZipFile(path) as archive:
        return {key: _tensor(_npz_member(path, archive, key)) for key in KEYS}


def _read_pt(path: Path) -> dict:
    shared = getattr(torch.serialization, "set_default_mmap_options", None)
    try:  # a shared map, as for .npz, where torch (>= 2.5) and the file allow it; else torch's private map (charged)
        if isinstance(shared, type):  # a context manager since torch 2.5 (before, a global setting)
            with shared(mmap.MAP_SHARED):
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (PermissionError, OSError):
        pass
    except RuntimeError as err:
        if "mmap" not in str(err):
            raise
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as err:
        if "mmap" not in str(err):
            raise
    free = available_memory(torch.device("cpu"))  # saved in torch's legacy format: it cannot be mapped
    if free is not None and path.stat().st_size > free:
        raise DataError(f"{path} was saved in torch's legacy format, which cannot be memory-mapped, and its "
                        f"{path.stat().st_size / 2**30:.1f} GiB do not fit in the {free / 2**30:.1f} GiB available; "
                        "save it again with torch.save (torch >= 1.6 writes the format snnrun maps)")
    return torch.load(path, map_location="cpu", weights_only=True)


def read(path, option: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The (inputs, labels) of one file; ``option`` names the key that points at it."""
    path = Path(str(path)).expanduser()
    if not path.is_file():
        raise DataError(f"{option}={path}: no such file; point it at a .pt or .npz file of inputs and labels")
    if path.suffix not in (".pt", ".npz"):
        raise DataError(f"{option}={path}: snnrun reads .pt files (torch.save of a dict with 'inputs' and 'labels') "
                        "and .npz files (np.savez with arrays inputs and labels)")
    try:
        content = _read_pt(path) if path.suffix == ".pt" else _read_npz(path)
    except DataError as err:  # about the file: say which option names it
        raise DataError(f"{option}={err}") from None
    except Exception as err:  # a truncated zip, a pickle of arbitrary objects, a foreign file...
        how = ("a dict of tensors saved with torch.save; snnrun loads .pt files with weights_only=True and never "
               "unpickles other objects" if path.suffix == ".pt" else "an archive written by np.savez of numeric arrays")
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))  # torch's message carries terminal colour codes
        if "Unsupported global" in text or "numpy" in text:  # weights_only refused an object it does not allow
            refused = re.search(r"GLOBAL ([\w.]+)", text)
            raise DataError(f"{option}={path} holds {refused.group(1) if refused else 'objects other than tensors'}, "
                            "which snnrun never unpickles (.pt files are loaded with weights_only=True); save tensors, "
                            "torch.save({'inputs': torch.as_tensor(x), 'labels': torch.as_tensor(y)}, path) for numpy "
                            "arrays, or the arrays with np.savez") from None
        first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
        raise DataError(f"{option}={path} cannot be read ({type(err).__name__}: {first}): the file is truncated or "
                        f"not {how}") from None
    if not (isinstance(content, dict) and all(isinstance(content.get(k), torch.Tensor) for k in KEYS)):
        held = sorted(content) if isinstance(content, dict) else type(content).__name__
        raise DataError(f"{option}={path} must hold a dict with tensors 'inputs' and 'labels' (it holds {held}); "
                        "save it with torch.save({'inputs': x, 'labels': y}, path)")
    return content["inputs"], content["labels"]


def _check_layout(inputs: torch.Tensor, path: Path, temporal: bool) -> None:
    least = 3 if temporal else 2
    if inputs.dim() < least:
        layout = "[N, T, *features] (data.temporal=true)" if temporal else "[N, *shape] (data.temporal=false)"
        raise DataError(f"{path}: inputs of shape {list(inputs.shape)} are not {layout}"
                        + ("; a sequence of single values [N, T] is [N, T, 1] (x[..., None]), and a static "
                           "[N, features] tensor needs data.temporal=false" if temporal else ""))
    if inputs.dtype.is_complex or inputs.dtype == torch.bool or inputs.layout != torch.strided:
        raise DataError(f"{path}: inputs of dtype {inputs.dtype} ({inputs.layout}) are not numbers the network can "
                        "take; store a dense tensor of floats or integers")


def _check_finite(inputs: torch.Tensor, path: Path) -> None:
    """Refuse NaN or inf, naming the first sample that holds one (read a few MiB at a time)."""
    if not inputs.dtype.is_floating_point or len(inputs) == 0:
        return
    step = max(1, CHUNK_BYTES // max(1, inputs[0].numel() * inputs.element_size()))
    for start in range(0, len(inputs), step):
        bad = ~torch.isfinite(inputs[start:start + step]).flatten(1).all(1)
        if bad.any():
            index = start + int(bad.nonzero()[0])
            where = (~torch.isfinite(inputs[index])).nonzero()[0].tolist()
            raise DataError(f"{path}: inputs[{index}] holds {inputs[index][tuple(where)].item()} at position {where}; "
                            "every input must be finite: fix or drop that sample")


def _labels(labels: torch.Tensor, inputs: torch.Tensor, path: Path) -> torch.Tensor:
    if labels.dim() != 1 or len(labels) != len(inputs):
        raise DataError(f"{path}: {len(inputs)} inputs but labels of shape {list(labels.shape)}; labels must be one "
                        "integer per sample, [N]")
    if labels.dtype.is_complex or labels.dtype == torch.bool:
        raise DataError(f"{path}: labels of dtype {labels.dtype} are not integers; labels are class numbers from 0")
    if labels.dtype.is_floating_point:
        whole = torch.isfinite(labels) & (labels == labels.round())
        if not whole.all():
            index = int((~whole).nonzero()[0])
            raise DataError(f"{path}: labels[{index}] is {labels[index].item()}, not an integer; labels are class "
                            "numbers from 0")
    if labels.dtype in (torch.uint16, torch.uint32, torch.uint64):  # torch compares these only after a cast
        labels = labels.to(torch.float64 if labels.dtype == torch.uint64 else torch.int64)
    negative = labels < 0
    if negative.any():
        index = int(negative.nonzero()[0])
        raise DataError(f"{path}: labels[{index}] is {labels[index].item()}; labels are class numbers from 0")
    if len(labels) == 0:
        raise DataError(f"{path} holds no samples; every split needs at least one")
    if float(labels.max()) >= 2**62:
        index = int(labels.argmax())
        raise DataError(f"{path}: labels[{index}] is {labels[index].item():.0f}; labels are class numbers 0..C-1")
    return labels.long().clone()  # a copy: the file's map is never written through


def _opened(train_path, test_path, val_path, temporal: bool) -> tuple[list, int]:
    """Every given split as (path, inputs, labels), the labels checked and the layouts matched;
    and the number of classes (the training labels run from 0 to it, none left empty)."""
    if not isinstance(temporal, bool):
        raise OptionError("temporal", temporal, "true or false", "false")
    splits = []
    for option, path in (("data.train_path", train_path), ("data.test_path", test_path), ("data.val_path", val_path)):
        if option != "data.val_path" and not path:
            raise OptionError(option.split(".")[1], path, "the path of a .pt or .npz file of inputs and labels",
                              f"/path/to/{option.split('.')[1].split('_')[0]}.npz")
        if path:
            inputs, labels = read(path, option)
            path = Path(str(path)).expanduser()
            _check_layout(inputs, path, temporal)
            splits.append((path, inputs, _labels(labels, inputs, path)))
    (first, reference, labels), *others = splits
    for path, inputs, _ in others:
        if inputs.shape[1:] != reference.shape[1:]:
            what = "T and the shape of one step" if temporal else "the shape"
            raise DataError(f"{path}: its samples are {list(inputs.shape[1:])} but those of {first} are "
                            f"{list(reference.shape[1:])}; every split must have {what} of the training samples")
    classes = int(labels.max()) + 1
    if classes > len(labels):  # some class is empty: say which, without counting up to an outlier label
        present, empty = set(labels.unique().tolist()), []
        for c in range(classes):
            if c not in present:
                empty.append(c)
                if len(empty) == 10:
                    break
    else:
        empty = (torch.bincount(labels, minlength=classes) == 0).nonzero().flatten().tolist()[:10]
    if classes < 2 or empty:
        raise DataError(f"{first}: " + (f"classes {empty}{' …' if len(empty) == 10 else ''} have no training sample, "
                                        f"though the labels run to {classes - 1}; number the classes 0..C-1 and leave "
                                        "none empty" if empty else
                                        "every label is the same; a classifier needs at least 2 classes"))
    for path, _, other in others:
        if len(other) and int(other.max()) >= classes:
            raise DataError(f"{path}: labels[{int(other.argmax())}] is {int(other.max())}, which is not a class of the "
                            f"training set {first} (its labels run from 0 to {classes - 1})")
    return splits, classes


def describe(train_path, test_path, val_path=None, temporal: bool = False, unit=None) -> dict:
    """What the files hold: one sample's shape at one step, T of a sequence, the number of classes."""
    splits, classes = _opened(train_path, test_path, val_path, temporal)
    shape = list(splits[0][1].shape[1:])
    if temporal:
        return {"input_shape": shape[1:], "time_steps": shape[0], "num_classes": classes}
    return {"input_shape": shape, "num_classes": classes}


def tensor_dataset(train_path, test_path, val_path=None, temporal: bool = False, unit=None) -> Dataset:
    """The files' splits as a Dataset (memory-mapped where the files allow), every input checked finite."""
    if unit is not None:
        unit = positive("unit", unit, example=255)
    splits, _ = _opened(train_path, test_path, val_path, temporal)
    for path, inputs, _ in splits:
        _check_finite(inputs, path)
    pixels = not temporal  # uint8 images are pixels (/255); uint8 sequences are counts (as is)
    made = [Split(inputs, labels, unit if unit is not None else 255.0 if pixels and inputs.dtype == torch.uint8
                  else 1.0) for _, inputs, labels in splits]
    train, val = made[0], made[2] if len(made) > 2 else None
    # what a resume checks: the training and validation samples are the ones the checkpoint was trained on (their
    # sizes and labels in order, and the inputs of up to 1,024 samples spread over each)
    weights = torch.arange(1, len(train) + 1, dtype=torch.float64)
    fingerprint = torch.tensor([len(train), len(val) if val is not None else 0, float((train.labels * weights).sum())],
                               dtype=torch.float64)
    samples = torch.tensor([_sampled(split.inputs) for split in (train, val) if split is not None], dtype=torch.float64)
    return Dataset(train, made[1], meta={"training_set": fingerprint, "training_samples": samples}, val=val)


def _sampled(inputs) -> int:
    """A 48-bit hash of the inputs of up to 1,024 samples spread evenly over a split (exact in a float64)."""
    rows = torch.linspace(0, max(len(inputs) - 1, 0), min(len(inputs), 1024)).round().long()
    picked = inputs[rows].contiguous().numpy()
    return int.from_bytes(hashlib.blake2b(picked.tobytes(), digest_size=6).digest(), "little")


tensor_dataset.describe = describe
