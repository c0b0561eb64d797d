"""Datasets as resident tensors, and batches indexed from them.

MNIST-sized datasets fit in memory (and on any GPU), so each split is kept as one
uint8 tensor [N, C, H, W] on the training device and batches are sliced from it:
no per-sample DataLoader, no worker processes. Images are scaled to [0, 1] per batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch


class DataError(RuntimeError):
    """A dataset that cannot be found or downloaded."""


@dataclass
class Split:
    images: torch.Tensor  # uint8 [N, C, H, W]
    labels: torch.Tensor  # int64 [N]

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device) -> "Split":
        return Split(self.images.to(device), self.labels.to(device))


@dataclass
class Dataset:
    train: Split
    test: Split
    num_classes: int
    batch_size: int = 128
    eval_batch_size: int = 1000

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.images.shape[1:])


_RAW_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _torchvision_class(name: str):
    from torchvision import datasets

    return {"mnist": datasets.MNIST, "fashion_mnist": datasets.FashionMNIST}[name]


def ensure_available(name: str, root: str, download: bool = True) -> None:
    """Make sure the raw files are in ``root`` (downloading them if allowed), or raise DataError."""
    cls = _torchvision_class(name)
    raw = Path(root).expanduser() / cls.__name__ / "raw"
    if not all((raw / f).is_file() for f in _RAW_FILES):
        torchvision_dataset(name, root, download)


def torchvision_dataset(name: str, root: str, download: bool = True,
                        batch_size: int = 128, eval_batch_size: int = 1000) -> Dataset:
    """MNIST or FashionMNIST through torchvision, downloaded into ``root`` when missing."""
    cls = _torchvision_class(name)
    root_path = Path(root).expanduser()
    where = root_path / cls.__name__ / "raw"
    splits = []
    for train in (True, False):
        try:
            ds = cls(str(root_path), train=train, download=download)
        except Exception as err:  # torchvision raises RuntimeError, URLError, OSError...
            how = "the download failed" if download else "download is off (data.download=false)"
            raise DataError(
                f"{cls.__name__} was not found in {where} and {how}: {err}. "
                f"Point data.root at a folder holding {cls.__name__}/raw (e.g. data.root=../shared/data) "
                f"or set the SNNRUN_DATA environment variable."
            ) from None
        splits.append(Split(ds.data.unsqueeze(1).contiguous(), ds.targets.long()))
    return Dataset(splits[0], splits[1], 10, batch_size, eval_batch_size)


def synthetic(num_train: int = 1024, num_test: int = 256, num_classes: int = 10,
              image_size: int = 28, noise: float = 0.2, seed: int = 0,
              batch_size: int = 128, eval_batch_size: int = 1000) -> Dataset:
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

    return Dataset(split(num_train), split(num_test), num_classes, batch_size, eval_batch_size)


def to_float(images: torch.Tensor) -> torch.Tensor:
    return images.float().div_(255)


def batches(split: Split, batch_size: int, order: torch.Tensor | None = None, drop_last: bool = False, start: int = 0):
    """Yield (images in [0, 1], labels) for ``order`` (a permutation, or None for in order),
    beginning at batch number ``start`` (to resume mid-epoch)."""
    n = len(split)
    stop = n - n % batch_size if drop_last else n
    for i in range(start * batch_size, stop, batch_size):
        idx = order[i:i + batch_size] if order is not None else slice(i, i + batch_size)
        yield to_float(split.images[idx]), split.labels[idx]


def epoch_order(n: int, seed: int, epoch: int, device) -> torch.Tensor:
    """The shuffled sample order of one epoch: a function of (seed, epoch) alone, so a resumed
    run sees the same order as an uninterrupted one."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).to(device)


def num_batches(n: int, batch_size: int, drop_last: bool) -> int:
    return n // batch_size if drop_last else math.ceil(n / batch_size)


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
