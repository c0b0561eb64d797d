"""Datasets as resident tensors, described by their config, and batches sliced from them.

A ``data:`` config declares what its dataset yields (``DataSpec``: the shape of one sample
at one step, the number of classes, and whether samples are static images that an encoder
turns into T steps or already sequences of ``time_steps`` steps), so the model is built
before anything is loaded.
Its ``_target_`` is a loader that returns the train and test splits as whole tensors, which
stay on the training device: batches are slices, with no per-sample DataLoader.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..core.options import OptionError, integer, non_negative, one_of


class DataError(RuntimeError):
    """A dataset that cannot be found, downloaded or read, or is not what its config declares."""


@dataclass(frozen=True)
class DataSpec:
    """What a dataset yields, known before it is loaded."""

    input_shape: tuple[int, ...]  # one sample at one step: (C, H, W) for images, (F,) for features
    num_classes: int
    temporal: bool = False  # True: each sample is a sequence [T, *input_shape] and needs no encoder
    time_steps: int | None = None  # T of a temporal dataset

    @classmethod
    def from_config(cls, data_cfg) -> "DataSpec":
        try:
            shape = data_cfg.get("input_shape")
        except Exception as err:  # an interpolation that names a missing entry, e.g. sizes.by3
            raise OptionError("input_shape", data_cfg._get_node("input_shape")._value(),
                              f"resolvable ({str(err).splitlines()[0]})", "[1,28,28]") from None
        if not (isinstance(shape, Sequence) and shape
                and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)):
            raw = str(data_cfg._get_node("input_shape")._value()) if hasattr(data_cfg, "_get_node") else ""
            derived = sorted(set(re.findall(r"\$\{data\.(\w+)\}", raw)))
            if derived:  # input_shape: [1, ${data.image_size}, ...]: the size to fix is the one it is made of
                raise OptionError(derived[0], data_cfg.get(derived[0]), "a positive integer (it sizes "
                                  f"data.input_shape, {raw})", 28)
            raise OptionError("input_shape", shape, "a list of positive sizes, e.g. [1, 28, 28] for C, H, W",
                              "[1,28,28]")
        classes = data_cfg.get("num_classes")
        if not (isinstance(classes, int) and not isinstance(classes, bool) and classes >= 2):
            raise OptionError("num_classes", classes, "an integer >= 2", 10)
        temporal = data_cfg.get("temporal", False)
        if not isinstance(temporal, bool):
            raise OptionError("temporal", temporal, "true or false", "false")
        steps = data_cfg.get("time_steps") if temporal else None
        if temporal and not (isinstance(steps, int) and not isinstance(steps, bool) and steps > 0):
            raise OptionError("time_steps", steps, "a positive integer (the steps of every sample)", 20)
        return cls(tuple(shape), classes, temporal, steps)

    def check(self, dataset: "Dataset", name: str) -> None:
        """Refuse a loaded dataset that differs from this description."""
        for split_name, split in (("train", dataset.train), ("test", dataset.test), ("validation", dataset.val)):
            if split is None:
                continue
            sample = tuple(split.inputs.shape[2 if self.temporal else 1:])
            if self.temporal and split.inputs.shape[1] != self.time_steps:
                raise DataError(f"{name}: its {split_name} samples have {split.inputs.shape[1]} steps but "
                                f"data.time_steps declares {self.time_steps}")
            if sample != self.input_shape:
                raise DataError(f"{name}: its {split_name} samples are {list(sample)} but data.input_shape declares "
                                f"{list(self.input_shape)}; fix data.input_shape")
            if len(split) and not 0 <= int(split.labels.min()) <= int(split.labels.max()) < self.num_classes:
                raise DataError(f"{name}: its {split_name} labels run from {int(split.labels.min())} to "
                                f"{int(split.labels.max())} but data.num_classes is {self.num_classes}")


@dataclass
class Split:
    """Samples and their labels. With ``rows``, the split is those rows of ``inputs`` (a held-out
    part or subset of a store that may be memory-mapped): nothing is copied until a batch is read."""

    inputs: torch.Tensor  # [M, *input_shape] static, or [M, T, *input_shape] temporal; uint8 or float
    labels: torch.Tensor  # int64 [N]: the label of each sample of the split
    unit: float = 255.0  # the network sees inputs / unit (uint8 pixels -> [0, 1])
    rows: torch.Tensor | None = None  # int64 [N]: the split's samples are inputs[rows]; None: all of inputs

    def __len__(self) -> int:
        return len(self.labels)

    def select(self, index: torch.Tensor) -> "Split":
        """The samples ``index`` (int64, positions in this split), as rows of the same store."""
        index = index.to(self.labels.device)
        rows = index if self.rows is None else self.rows[index.to(self.rows.device)]
        return Split(self.inputs, self.labels[index], self.unit, rows.to(self.inputs.device))

    def read(self, index) -> torch.Tensor:
        """The inputs of the samples ``index`` (a slice or int64 positions in this split)."""
        if self.rows is None:
            return self.inputs[index]
        return self.inputs[self.rows[index]]


@dataclass
class Dataset:
    train: Split
    test: Split
    meta: dict = field(default_factory=dict)  # tensors that define the data (a permutation), kept in checkpoints
    val: Split | None = None  # held out of the training set by ``hold_out``
    classes: tuple[str, ...] | None = None  # the class names, where the data has them (folder names)

    def to(self, device) -> "Dataset":
        """The dataset on ``device``; a store that several splits share is moved once."""
        moved: dict[int, torch.Tensor] = {}

        def split_to(split: Split | None) -> Split | None:
            if split is None:
                return None
            if id(split.inputs) not in moved:
                moved[id(split.inputs)] = split.inputs.to(device)
            inputs = moved[id(split.inputs)]
            rows = split.rows.to(device) if split.rows is not None else None
            return Split(inputs, split.labels.to(device), split.unit, rows)

        return Dataset(split_to(self.train), split_to(self.test), self.meta, split_to(self.val), self.classes)


def _fixed_choice(n: int, size: int) -> torch.Tensor:
    """``size`` of ``n`` indices, ascending, the same for every run: drawn from a generator seeded 0."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(0))[:size].sort().values


def fixed_subset(split: Split, size: int) -> Split:
    """``size`` samples of ``split`` (all if it has fewer), the same for every run, kept in the split's order."""
    if size >= len(split):
        return split
    return split.select(_fixed_choice(len(split), size))


def hold_out(dataset: Dataset, size: int) -> Dataset:
    """Move ``size`` training samples into a validation split: one fixed choice (drawn from a
    generator seeded 0, whatever the run's seed), disjoint from the rest, which keeps its order."""
    chosen = _fixed_choice(len(dataset.train), size)
    keep = torch.ones(len(dataset.train), dtype=torch.bool)
    keep[chosen] = False
    return Dataset(dataset.train.select(keep.nonzero().flatten()), dataset.test, dataset.meta,
                   dataset.train.select(chosen), dataset.classes)


def available_memory(device: torch.device) -> int | None:
    """Bytes free for tensors: the GPU's free memory, or on CPU MemAvailable (capped by a cgroup limit)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    try:
        meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        free = int(meminfo["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None
    try:
        limit, used = (Path("/sys/fs/cgroup", f).read_text().strip() for f in ("memory.max", "memory.current"))
        if limit != "max":
            free = min(free, int(limit) - int(used))
    except (OSError, ValueError):
        pass
    return free


def _torchvision_class(name: str):
    from torchvision import datasets

    cls = getattr(datasets, str(name), None)
    if not (isinstance(cls, type) and issubclass(cls, datasets.VisionDataset)):
        raise OptionError("name", name, "a torchvision.datasets class such as MNIST, FashionMNIST or KMNIST", "MNIST")
    return cls


def _as_nchw(data) -> torch.Tensor:
    """torchvision keeps images as [N, H, W] tensors (the MNIST family) or [N, H, W, C] arrays (CIFAR)."""
    x = torch.as_tensor(data)
    return (x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2)).contiguous()


def torchvision_dataset(name: str, root: str, download: bool = True) -> Dataset:
    """A torchvision image dataset (``MNIST``, ``FashionMNIST``, ``KMNIST``, ...) kept as uint8
    tensors, downloaded into ``root`` when missing and ``download`` is on."""
    cls = _torchvision_class(name)
    root_path = Path(root).expanduser()
    where = root_path / cls.__name__ / "raw"
    files = [Path(url).name.removesuffix(".gz") for url, _ in getattr(cls, "resources", [])]
    splits = []
    for train in (True, False):
        try:
            ds = cls(str(root_path), train=train, download=download)
        except Exception as err:  # torchvision raises RuntimeError, URLError, OSError...
            how = "the download failed" if download else "download is off (data.download=false)"
            needed = f" ({', '.join(files)})" if files else ""
            raise DataError(
                f"{cls.__name__} was not found in {where} and {how}: {str(err).strip()}. "
                f"Point data.root at the folder that holds {cls.__name__}/raw{needed}, e.g. data.root=/path/to/datasets "
                f"when the files are in /path/to/datasets/{cls.__name__}/raw, or set the SNNRUN_DATA environment "
                f"variable. With a network connection and data.download=true, torchvision downloads them there."
            ) from None
        splits.append(Split(_as_nchw(ds.data), torch.as_tensor(ds.targets).long()))
    return Dataset(*splits)


def permutation(seed: int, size: int = 784) -> torch.Tensor:
    """The fixed shuffle of ``size`` positions that ``seed`` draws (PS-MNIST)."""
    return torch.randperm(size, generator=torch.Generator().manual_seed(seed))


def sequential_mnist(root: str, download: bool = True, mode: str = "rows", permutation_seed: int | None = None) -> Dataset:
    """MNIST as sequences: ``rows`` gives 28 steps of one 28-pixel row, ``pixels`` 784 steps of
    one pixel (row by row). With ``permutation_seed`` the 784 positions are first shuffled by
    one fixed permutation, the same for every image (permuted sequential MNIST)."""
    one_of("mode", mode, ("rows", "pixels"))
    if permutation_seed is not None and not (isinstance(permutation_seed, int) and permutation_seed >= 0):
        raise OptionError("permutation_seed", permutation_seed, "null or an integer >= 0", 0)
    order = permutation(permutation_seed) if permutation_seed is not None else None
    mnist = torchvision_dataset("MNIST", root, download)
    steps = (28, 28) if mode == "rows" else (784, 1)

    def sequences(split: Split) -> Split:
        pixels = split.inputs.reshape(len(split), 784)
        if order is not None:
            pixels = pixels[:, order]
        return Split(pixels.reshape(len(split), *steps).contiguous(), split.labels)

    return Dataset(sequences(mnist.train), sequences(mnist.test), {} if order is None else {"permutation": order})


def synthetic(num_train: int = 1024, num_test: int = 256, num_classes: int = 10,
              image_size: int = 28, noise: float = 0.2, seed: int = 0) -> Dataset:
    """A small learnable image task: each class is a fixed random pattern of bright blobs,
    samples are that pattern with random intensity and pixel noise. Deterministic in ``seed``."""
    for option, value, low, example in (("num_train", num_train, 1, 1024), ("num_test", num_test, 1, 256),
                                        ("num_classes", num_classes, 2, 10), ("image_size", image_size, 1, 28),
                                        ("seed", seed, 0, 0)):
        integer(option, value, low, example)
    non_negative("noise", noise, example=0.2)
    g = torch.Generator().manual_seed(seed)
    coarse = math.ceil(image_size / 4)
    patterns = (torch.rand(num_classes, 1, coarse, coarse, generator=g) > 0.7).float()
    patterns = torch.nn.functional.interpolate(patterns, size=(image_size, image_size), mode="nearest")

    def split(n: int) -> Split:
        labels = torch.randint(0, num_classes, (n,), generator=g)
        intensity = 0.6 + 0.4 * torch.rand(n, 1, 1, 1, generator=g)
        x = patterns[labels] * intensity + noise * torch.rand(n, 1, image_size, image_size, generator=g)
        return Split((x.clamp(0, 1) * 255).round().to(torch.uint8), labels)

    return Dataset(split(num_train), split(num_test))


def batches(split: Split, batch_size: int, order: torch.Tensor | None = None, drop_last: bool = False, start: int = 0):
    """Yield (inputs / unit, labels) for ``order`` (a permutation, or None for in order),
    beginning at batch number ``start`` (to resume mid-epoch)."""
    n = len(split)
    stop = n - n % batch_size if drop_last else n
    for i in range(start * batch_size, stop, batch_size):
        idx = order[i:i + batch_size] if order is not None else slice(i, i + batch_size)
        x = split.read(idx).to(torch.float32, copy=True)  # a copy: the store (a file's map) is never written
        yield (x.div_(split.unit) if split.unit != 1 else x), split.labels[idx]


def epoch_order(n: int, seed: int, epoch: int, device) -> torch.Tensor:
    """The shuffled sample order of one epoch: a function of (seed, epoch) alone, so a resumed
    run sees the same order as an uninterrupted one."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).to(device)


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each sample of a batch [B, ..., H, W] (images, or frame sequences, every frame
    alike) by its own random (dy, dx) in [-max_shift, max_shift], filling the uncovered border
    with 0 (training augmentation)."""
    if max_shift <= 0:
        return x
    if x.dim() > 4:
        return random_shift(x.flatten(1, -3), max_shift, generator).reshape(x.shape)
    b, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (max_shift,) * 4)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, b, 1), generator=generator, device=x.device)
    rows = (dy + torch.arange(h, device=x.device))[:, :, None]  # [B, H, 1]
    cols = (dx + torch.arange(w, device=x.device))[:, None, :]  # [B, 1, W]
    return padded[torch.arange(b, device=x.device)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)
