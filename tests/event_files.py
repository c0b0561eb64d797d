"""Files in each event dataset's real on-disk format, as tonic reads them (for tests and bench/binning.py).

N-MNIST: one file per recording, 5-byte records. SHD: one HDF5 file per split with ragged spike
times (s) and channels. DVS Gesture: one .npy per gesture, rows [x, y, p, t in ms]. tonic also
checks that the downloaded archive is present, so an empty placeholder is written beside them.
"""

import numpy as np


def nmnist_bytes(x, y, p, t) -> bytes:
    """N-MNIST's 40-bit records: x, y, then p in the top bit over a 23-bit timestamp in µs."""
    x, y, p, t = (np.asarray(a, dtype=np.uint32) for a in (x, y, p, t))
    raw = np.stack([x, y, (p << 7) | (t >> 16 & 0x7F), t >> 8 & 0xFF, t & 0xFF], axis=1).astype(np.uint8)
    return raw.tobytes()


def _count(n, i: int) -> int:
    return n(i) if callable(n) else n


def write_nmnist(root, per_split=10000, n=12, first=None):
    """``per_split`` recordings of ``n`` random events in 300 ms per split (tonic refuses fewer than
    10,000 before it reads any); ``n`` may be a function of the recording's number; ``first``
    (x, y, p, t arrays) replaces recording 0 of each split."""
    rng = np.random.default_rng(0)
    for split, folder in (("train", "Train"), ("test", "Test")):
        base = root / "NMNIST" / folder
        for i in range(per_split):
            (base / str(i % 10)).mkdir(parents=True, exist_ok=True)
            k = _count(n, i)
            events = first if i == 0 and first else dict(
                x=rng.integers(0, 34, k), y=rng.integers(0, 34, k), p=rng.integers(0, 2, k),
                t=np.sort(rng.integers(0, 300_000, k)))
            (base / str(i % 10) / f"{i:05d}.bin").write_bytes(nmnist_bytes(**events))
        (root / "NMNIST" / f"{split}.zip").write_bytes(b"")
    return root


def write_shd(root, n_train=6, n_test=4, spikes=200):
    """One HDF5 file per split; recording i has ``spikes + i`` spikes in 1 s over 700 channels."""
    import h5py

    rng = np.random.default_rng(1)
    base = root / "SHD"
    base.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        with h5py.File(base / f"shd_{split}.h5", "w") as f:
            times = f.create_dataset("spikes/times", (n,), dtype=h5py.vlen_dtype(np.float16))
            units = f.create_dataset("spikes/units", (n,), dtype=h5py.vlen_dtype(np.uint16))
            for i in range(n):
                k = spikes + i
                times[i] = np.sort(rng.random(k)).astype(np.float16)  # seconds
                units[i] = rng.integers(0, 700, k).astype(np.uint16)
            f["labels"] = (np.arange(n) % 20).astype(np.uint16)
            f["extra/keys"] = np.array([f"digit-{i}" for i in range(20)], dtype="S")
            f["extra/speaker"] = np.zeros(n, dtype=np.uint16)
        (base / f"shd_{split}.h5.zip").write_bytes(b"")
    return root


def write_gestures(root, per_split=110, n=50):
    """``per_split`` gestures of ``n`` events in 6 s (tonic refuses fewer than 100), 11 per user folder."""
    rng = np.random.default_rng(2)
    for folder in ("ibmGestureTrain", "ibmGestureTest"):
        for i in range(per_split):
            user = root / "DVSGesture" / folder / f"user{i // 11 + 1:02d}_fluorescent"
            user.mkdir(parents=True, exist_ok=True)
            k = _count(n, i)
            ev = np.stack([rng.integers(0, 128, k), rng.integers(0, 128, k), rng.integers(0, 2, k),
                           np.sort(rng.integers(0, 6000, k))], axis=1).astype(np.int64)  # x, y, p, t in ms
            np.save(user / f"{i % 11}.npy", ev)
        (root / "DVSGesture" / f"{folder}.tar.gz").write_bytes(b"")
    return root
