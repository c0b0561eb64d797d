"""Datasets that describe themselves, loaded through the real torchvision code path, and augmentation."""

import numpy as np
import pytest
import torch

from conftest import read_results, snnrun, write_idx_dataset
from snnrun.run.assembly import assemble
from snnrun.data.datasets import DataError, DataSpec, Split, batches, random_shift, synthetic, torchvision_dataset


@pytest.fixture
def kmnist_root(tmp_path):
    return write_idx_dataset(tmp_path, "KMNIST")


def test_a_torchvision_dataset_is_one_yaml_file(compose, kmnist_root):
    """data=kmnist has no code of its own: its YAML names the torchvision class and declares its shape."""
    assembly = assemble(compose("data=kmnist", f"data.root={kmnist_root}", "data.download=false", "data.batch_size=8",
                                "time_steps=2"))
    train = assembly.data.train
    assert train.inputs.shape == (40, 1, 28, 28) and train.inputs.dtype == torch.uint8 and len(assembly.data.test) == 12
    raw = np.frombuffer((kmnist_root / "KMNIST/raw/train-images-idx3-ubyte").read_bytes()[16:], np.uint8)
    assert torch.equal(train.inputs.flatten(), torch.from_numpy(raw.copy()))
    x, y = next(batches(train, 8))
    assert x.dtype == torch.float32 and x.max() <= 1 and torch.equal(x, train.inputs[:8].float() / 255)


@pytest.mark.e2e
def test_kmnist_trains_end_to_end(kmnist_root, tmp_path):
    snnrun("data=kmnist", f"data.root={kmnist_root}", "data.download=false", "data.batch_size=8", "time_steps=4",
           "model.arch=FC32-FC10", "trainer.max_steps=3", "hydra.run.dir=run", cwd=tmp_path)
    assert read_results(tmp_path / "run")["steps"] == 3


def test_a_dataset_that_differs_from_its_description_is_refused(compose, kmnist_root):
    with pytest.raises(DataError, match=r"samples are \[1, 28, 28\] but data.input_shape declares \[1, 32, 32\]"):
        assemble(compose("data=kmnist", f"data.root={kmnist_root}", "data.download=false", "data.input_shape=[1,32,32]",
                         "model.arch=FC32-FC10"))
    with pytest.raises(DataError, match="labels run from 0 to 9 but data.num_classes is 5"):
        assemble(compose("data=kmnist", f"data.root={kmnist_root}", "data.download=false", "data.num_classes=5",
                         "model.arch=FC32-FC5"))


def test_missing_files_offline_say_where_and_which(tmp_path):
    with pytest.raises(DataError) as err:
        torchvision_dataset("FashionMNIST", str(tmp_path), download=False)
    message = str(err.value)
    assert str(tmp_path / "FashionMNIST" / "raw") in message and "train-images-idx3-ubyte" in message
    assert "data.root=" in message and "SNNRUN_DATA" in message and "shared" not in message


def test_channels_last_arrays_become_nchw():
    from snnrun.data.datasets import _as_nchw

    hwc = np.arange(2 * 4 * 5 * 3, dtype=np.uint8).reshape(2, 4, 5, 3)
    assert torch.equal(_as_nchw(hwc), torch.from_numpy(hwc).permute(0, 3, 1, 2))
    assert _as_nchw(torch.zeros(3, 4, 5, dtype=torch.uint8)).shape == (3, 1, 4, 5)


def test_temporal_spec_checks_the_per_step_shape():
    spec = DataSpec((700,), 20, temporal=True, time_steps=50)
    seq = Split(torch.zeros(3, 50, 700), torch.tensor([0, 19, 4]), unit=1.0)
    from snnrun.data.datasets import Dataset

    spec.check(Dataset(seq, seq), "shd")
    with pytest.raises(DataError, match=r"shd: its train samples are \[50, 700\] but data.input_shape declares \[700\]"):
        DataSpec((700,), 20).check(Dataset(seq, seq), "shd")  # static: [T, 700] is not a [700] sample


def test_random_shift_translates_each_image_within_range_and_fills_zeros():
    x = torch.rand(64, 1, 9, 9) + 1  # no zeros of its own
    out = random_shift(x, 2, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    offsets = set()
    for img, src in zip(out[:, 0], x[:, 0]):
        found = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                 if torch.equal(img[max(dy, 0):9 + min(dy, 0), max(dx, 0):9 + min(dx, 0)],
                                src[max(-dy, 0):9 + min(-dy, 0), max(-dx, 0):9 + min(-dx, 0)])]
        assert len(found) == 1
        dy, dx = found[0]
        offsets.add(found[0])
        assert (img == 0).sum() == 81 - (9 - abs(dy)) * (9 - abs(dx))  # the uncovered border only
    assert len(offsets) > 10  # each image its own offset


def test_random_shift_is_seeded_and_zero_is_identity():
    x = torch.rand(8, 1, 12, 12)
    a = random_shift(x, 3, torch.Generator().manual_seed(5))
    b = random_shift(x, 3, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and not torch.equal(a, x)
    assert random_shift(x, 0, torch.Generator()) is x


def test_synthetic_is_deterministic():
    a, b = synthetic(num_train=32, num_test=8, seed=3), synthetic(num_train=32, num_test=8, seed=3)
    assert torch.equal(a.train.inputs, b.train.inputs) and torch.equal(a.test.labels, b.test.labels)
