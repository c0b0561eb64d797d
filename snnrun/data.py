"""Datasets as resident tensors, described by their config, and batches sliced from them.

A ``data:`` config declares what its dataset yields (``DataSpec``: the shape of one sample
at one step, the number of classes, and whether samples are static images that an encoder
turns into T steps or already sequences), so the model is built before anything is loaded.
Its ``_target_`` is a loader that returns the train and test splits as whole tensors, which
stay on the training device: batches are slices, with no per-sample DataLoader.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from .options import OptionError


class DataError(RuntimeError):
    """A dataset that cannot be found, downloaded or read, or is not what its config declares."""


@dataclass(frozen=True)
class DataSpec:
    """What a dataset yields, known before it is loaded."""

    input_shape: tuple[int, ...]  # one sample at one step: (C, H, W) for images, (F,) for features
    num_classes: int
    temporal: bool = False  # True: each sample is a sequence [T, *input_shape] and needs no encoder

    @classmethod
    def from_config(cls, data_cfg) -> "DataSpec":
        shape = data_cfg.get("input_shape")
        if not (shape and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)):
            raise OptionError("input_shape", shape, "a list of positive sizes, e.g. [1, 28, 28] for C, H, W",
                              "[1,28,28]")
        classes = data_cfg.get("num_classes")
        if not (isinstance(classes, int) and not isinstance(classes, bool) and classes >= 2):
            raise OptionError("num_classes", classes, "an integer >= 2", 10)
        temporal = data_cfg.get("temporal", False)
        if not isinstance(temporal, bool):
            raise OptionError("temporal", temporal, "true or false", "false")
        return cls(tuple(shape), classes, temporal)

    def check(self, dataset: "Dataset", name: str) -> None:
        """Refuse a loaded dataset that differs from this description."""
        for split_name, split in (("train", dataset.train), ("test", dataset.test)):
            sample = tuple(split.inputs.shape[2 if self.temporal else 1:])
            if sample != self.input_shape:
                raise DataError(f"{name}: its {split_name} samples are {list(sample)} but data.input_shape declares "
                                f"{list(self.input_shape)}; fix data.input_shape")
            if len(split) and not 0 <= int(split.labels.min()) <= int(split.labels.max()) < self.num_classes:
                raise DataError(f"{name}: its {split_name} labels run from {int(split.labels.min())} to "
                                f"{int(split.labels.max())} but data.num_classes is {self.num_classes}")


@dataclass
class Split:
    inputs: torch.Tensor  # [N, *input_shape] static, or [N, T, *input_shape] temporal; uint8 or float
    labels: torch.Tensor  # int64 [N]
    unit: float = 255.0  # the network sees inputs / unit (uint8 pixels -> [0, 1])

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device) -> "Split":
        return Split(self.inputs.to(device), self.labels.to(device), self.unit)


@dataclass
class Dataset:
    train: Split
    test: Split


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


def synthetic(num_train: int = 1024, num_test: int = 256, num_classes: int = 10,
              image_size: int = 28, noise: float = 0.2, seed: int = 0) -> Dataset:
    """A small learnable image task: each class is a fixed random pattern of bright blobs,
    samples are that pattern with random intensity and pixel noise. Deterministic in ``seed``."""
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
        x = split.inputs[idx].float()
        yield (x.div_(split.unit) if split.unit != 1 else x), split.labels[idx]


def epoch_order(n: int, seed: int, epoch: int, device) -> torch.Tensor:
    """The shuffled sample order of one epoch: a function of (seed, epoch) alone, so a resumed
    run sees the same order as an uninterrupted one."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).to(device)


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image of a batch [B, C, H, W] by its own random (dy, dx) in
    [-max_shift, max_shift], filling the uncovered border with 0 (training augmentation)."""
    if max_shift <= 0:
        return x
    b, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (max_shift,) * 4)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, b, 1), generator=generator, device=x.device)
    rows = (dy + torch.arange(h, device=x.device))[:, :, None]  # [B, H, 1]
    cols = (dx + torch.arange(w, device=x.device))[:, None, :]  # [B, 1, W]
    return padded[torch.arange(b, device=x.device)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)
