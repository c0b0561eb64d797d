"""Time the first conversion of event datasets: tonic's reader plus snnrun's binning, per recording.

    python bench/binning.py [--events 4500 5000 300000] [--count 40 40 10]

No event dataset can be downloaded on this project's machines, so the script writes recordings
in each dataset's real on-disk format (N-MNIST .bin, SHD HDF5, DVS Gesture .npy; the writers of
tests/event_files.py) with the given number of events, reads them through tonic's dataset
classes and bins them at each dataset's default setting, as ``snnrun data=...`` does the first
time. Multiply by the number of recordings for an estimate of a full conversion. Then it loads
the whole N-MNIST-format set (10,000 recordings per split, each of --events events) twice through ``event_dataset``: the
first call bins and writes the cache, the second reads the cache.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from event_files import write_gestures, write_nmnist, write_shd  # noqa: E402

from snnrun.data import events  # noqa: E402

DEFAULTS = {"NMNIST": (20, 1), "SHD": (100, 1), "DVSGesture": (20, 4)}  # data.time_steps, data.downsample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", nargs=3, type=int, default=[4500, 5000, 300_000],
                        help="events per recording: N-MNIST, SHD, DVS Gesture")
    parser.add_argument("--count", nargs=3, type=int, default=[40, 40, 10], help="recordings timed per dataset")
    args = parser.parse_args()
    (n_nmnist, n_shd, n_dvs), (c_shd, c_dvs) = args.events, args.count[1:]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        # tonic checks for 10,000 N-MNIST and 100 DVS Gesture files per split (the gestures beyond --count are tiny)
        write_nmnist(root, n=n_nmnist)
        write_shd(root, n_train=c_shd, n_test=1, spikes=n_shd)
        write_gestures(root, n=lambda i: n_dvs if i < c_dvs else 10)
        print("| dataset | events per recording | T, downsample | ms per recording |\n|---|---|---|---|")
        for name, n_events, count in zip(DEFAULTS, args.events, args.count):
            ds = events._open(name, root, "train", download=False)
            files = getattr(ds, "data", None)
            by_file = isinstance(files, list) and len(files) == len(ds)
            big = [i for i in range(len(ds)) if not by_file or os.path.getsize(files[i]) > 1000]
            time_steps, downsample = DEFAULTS[name]
            binning = {"time_steps": time_steps, "time_window": None, "frames": "count", "downsample": downsample}
            tic = time.perf_counter()
            chosen = big[:count]
            recordings = events.Recordings(name, events.SOURCES[name].sensor, len(chosen),
                                           lambda row: ds[chosen[row]], lambda row: str(chosen[row]))
            events.bin_recordings(recordings, binning, progress=False)
            ms = 1000 * (time.perf_counter() - tic) / len(big[:count])
            print(f"| {name} | {n_events:,} | {time_steps}, {downsample} | {ms:.1f} |", flush=True)
        for load in ("first load (binning, cache written)", "second load (cache read)"):
            tic = time.perf_counter()
            data = events.event_dataset("NMNIST", str(root), download=False)
            print(f"N-MNIST format, {len(data.train) + len(data.test):,} recordings, {load}: "
                  f"{time.perf_counter() - tic:.1f} s", flush=True)


if __name__ == "__main__":
    main()
