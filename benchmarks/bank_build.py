"""Bank build: ``ClipBank.from_store`` against the previous per-clip implementation.

    python benchmarks/bank_build.py [N_CLIPS] [--shards S] [--frames F] [--repeats R]
                                    [--min-frames A] [--max-frames B]

Writes a synthetic spectrogram store like a preprocessing run's (S memory-mapped shard
arrays and a merged manifest; clip lengths uniform in A-B frames, default 150-1,700, i.e.
1-10 s at hop 192 like FSDKaggle2018; FSDD's 0.44 s clips are about 75 frames:
--min-frames 40 --max-frames 120) into a temporary folder twice, with the same numbers: in
today's time-major layout ((total frames, 128) per shard) and in the layout before version
0.3 ((1, 128, total frames)). It opens them with ``SpectrogramStore.open`` as a training job
does and builds the bank of all clips in shuffled order (length fix at F frames, default
3,000) with

(a) ``ClipBank.from_store`` on the time-major store (one index lookup for all names, one
    contiguous block copy per clip into one preallocated array);
(b) the implementation before, on the store layout it had, kept here verbatim: one pandas
    ``.loc`` per clip, then a transposing ``concatenate`` and ``ascontiguousarray``.

Both results are checked equal. Prints CPU seconds of each (best of R) and the ratio, with
the machine and load; the page cache is warm for both (the store is read once beforehand).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from workflow_lib.data import ClipBank  # noqa: E402
from workflow_lib.machine import cpu_model, load_average  # noqa: E402
from workflow_lib.preprocess import MANIFEST_COLUMNS, N_BINS, SpectrogramStore, merge_manifests, write_shard  # noqa: E402


def previous_get(store: SpectrogramStore, row: int) -> np.ndarray:
    """SpectrogramStore.get as it was before, on (1, 128, frames) shards."""
    shard, offset, n = store.manifest.loc[row, ["shard", "offset", "n_frames"]]
    return np.asarray(store.shard_arrays[shard][:, :, offset : offset + n])


def previous_from_store(store: SpectrogramStore, fnames, frames: int) -> ClipBank:
    """ClipBank.from_store as it was before (per-clip pandas lookups, two copies)."""
    row_of = {name: i for i, name in enumerate(store.manifest["fname"])}
    missing = [name for name in fnames if name not in row_of]
    if missing:
        raise KeyError(f"{len(missing)} clip(s) have no spectrogram, e.g. {missing[:3]}")
    parts = [previous_get(store, row_of[name])[0, :, :frames].T for name in fnames]
    lengths = np.array([p.shape[0] for p in parts], dtype=np.int64)
    offsets = np.cumsum(lengths) - lengths
    stacked = (
        np.ascontiguousarray(np.concatenate(parts, axis=0), dtype=np.float32)
        if parts
        else np.zeros((0, N_BINS), dtype=np.float32)
    )
    return ClipBank(torch.from_numpy(stacked), torch.from_numpy(offsets), torch.from_numpy(lengths), frames)


def write_store(
    folder: Path, n_clips: int, n_shards: int, seed: int, low: int, high: int, time_major: bool
) -> Path:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(low, high + 1, size=n_clips)
    shard_of = np.arange(n_clips) % n_shards
    out = folder / "v1"
    shard_csvs = []
    for shard in range(n_shards):
        mine = np.flatnonzero(shard_of == shard)
        n = lengths[mine]
        manifest = pd.DataFrame(
            {
                "fname": [f"clip{i:05d}.wav" for i in mine],
                "label": "x",
                "verified": "1",
                "n_frames": n,
                "seconds_before_clipping": 1.0,
                "seconds_after_clipping": 1.0,
                "status": "clipped",
                "shard": shard,
                "offset": np.cumsum(n) - n,
                "detail": "",
            },
            columns=MANIFEST_COLUMNS,
        )
        array = rng.standard_normal((int(n.sum()), N_BINS), dtype=np.float32)
        if not time_major:
            array = np.ascontiguousarray(array.T)[np.newaxis]
        write_shard(
            {1: array},
            {1: manifest},
            {1: out / "train" / f"shard{shard}.npy"},
            {1: out / "train" / f"shard{shard}.csv"},
        )
        shard_csvs.append(out / "train" / f"shard{shard}.csv")
    merge_manifests(shard_csvs, out / "train.csv")
    return out / "train.csv"


def cpu_time(function, repeats: int):
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.process_time()
        result = function()
        best = min(best, time.process_time() - start)
    return best, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("n_clips", nargs="?", type=int, default=3000)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--frames", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-frames", type=int, default=150)
    parser.add_argument("--max-frames", type=int, default=1700)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="bank_bench_") as tmp:
        store, legacy = (
            SpectrogramStore.open(
                write_store(
                    Path(tmp) / layout,
                    args.n_clips,
                    args.shards,
                    args.seed,
                    args.min_frames,
                    args.max_frames,
                    layout == "time_major",
                )
            )
            for layout in ("time_major", "before_0.3")
        )
        names = list(store.manifest["fname"].sample(frac=1.0, random_state=args.seed))
        for array in [*store.shard_arrays.values(), *legacy.shard_arrays.values()]:
            float(np.asarray(array).sum())  # warm the page cache for both
        print(f"command: {' '.join(shlex.quote(a) for a in [sys.executable, *sys.argv])}")
        print(f"machine: nproc={os.cpu_count()}, cpu={cpu_model()}, load average {load_average()}")
        total = int(store.manifest["n_frames"].sum())
        print(
            f"store: {args.n_clips} clips of {args.min_frames}-{args.max_frames} frames in "
            f"{args.shards} shards, {total} frames "
            f"({total * N_BINS * 4 / 2**20:.0f} MiB), length fix {args.frames} frames"
        )
        new_s, new = cpu_time(lambda: ClipBank.from_store(store, names, args.frames), args.repeats)
        old_s, old = cpu_time(lambda: previous_from_store(legacy, names, args.frames), args.repeats)
        assert torch.equal(new.frames_major, old.frames_major)
        assert torch.equal(new.offsets, old.offsets) and torch.equal(new.lengths, old.lengths)
        print(f"ClipBank.from_store, time-major store   : {new_s:7.3f} CPU s (best of {args.repeats})")
        print(f"previous (per clip), (1, 128, T) store  : {old_s:7.3f} CPU s (best of {args.repeats})")
        print(f"ratio: {old_s / new_s:.1f}x faster; identical banks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
