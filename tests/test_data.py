"""Resident datasets and batch augmentation."""

import torch

from snnrun.data import random_shift, synthetic


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
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.labels, b.test.labels)
