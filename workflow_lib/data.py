"""The data path: clips held in memory (on the GPU when training there), excerpts cut by indexing.

docs/method.md "Preprocessing" 5 tiles every spectrogram along time to at least ``frames`` frames and cuts it
there. Frame ``t`` of the length-fixed clip is frame ``t % T`` of the stored one, so an excerpt
is one gather from a single (total_frames, 128) tensor: no per-clip Python loop, no tiled copy
in memory, and the same code serves CPU and CUDA.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from .preprocess import N_BINS, SpectrogramStore


@dataclass
class ClipBank:
    """Spectrograms of a set of clips, concatenated time-major, plus per-clip offsets/lengths."""

    frames_major: torch.Tensor  # (total_frames, n_bins)
    offsets: torch.Tensor  # (n_clips,) int64
    lengths: torch.Tensor  # (n_clips,) int64
    frames: int  # length after the length fix (3,000 in the paper)

    @classmethod
    def from_store(
        cls, store: SpectrogramStore, fnames: Sequence[str], frames: int, device: str | torch.device = "cpu"
    ) -> ClipBank:
        """Load the named clips, keeping at most ``frames`` frames of each (the rest is never used).

        One index lookup for all names, then each clip is copied once, as one contiguous block
        of the time-major shard, straight into the preallocated array (no per-clip pandas
        lookup, no transposition, no second copy).
        """
        manifest = store.manifest
        rows = pd.Index(manifest["fname"]).get_indexer(list(fnames))
        if (rows < 0).any():
            missing = [name for name, row in zip(fnames, rows) if row < 0]
            raise KeyError(f"{len(missing)} clip(s) have no spectrogram, e.g. {missing[:3]}")
        shards = manifest["shard"].to_numpy(np.int64)[rows]
        starts = manifest["offset"].to_numpy(np.int64)[rows]
        lengths = np.minimum(manifest["n_frames"].to_numpy(np.int64)[rows], frames)
        if (lengths == 0).any():
            raise ValueError("a clip with zero frames reached the data path")
        offsets = np.cumsum(lengths) - lengths
        stacked = np.empty((int(lengths.sum()), N_BINS), dtype=np.float32)
        for shard, start, length, offset in zip(
            shards.tolist(), starts.tolist(), lengths.tolist(), offsets.tolist()
        ):
            stacked[offset : offset + length] = store.frames_of(shard, start, length)
        return cls(
            torch.from_numpy(stacked).to(device),
            torch.from_numpy(offsets).to(device),
            torch.from_numpy(lengths).to(device),
            frames,
        )

    @classmethod
    def concat(cls, banks: Sequence[ClipBank]) -> ClipBank:
        """One bank holding the clips of ``banks`` in order (a fold's training clips, then the
        trusted clips of the unlabelled pool, which live in another store): their frames one
        after another, offsets shifted accordingly; all on the first bank's device."""
        shift, offsets = 0, []
        for bank in banks:
            offsets.append(bank.offsets + shift)
            shift += int(bank.frames_major.shape[0])
        return cls(
            torch.cat([bank.frames_major for bank in banks]),
            torch.cat(offsets),
            torch.cat([bank.lengths for bank in banks]),
            banks[0].frames,
        )

    def __len__(self) -> int:
        return len(self.offsets)

    @property
    def device(self) -> torch.device:
        return self.frames_major.device

    def excerpts(self, clips: torch.Tensor, starts: torch.Tensor, length: int) -> torch.Tensor:
        """Excerpts [start, start + length) of the length-fixed clips: (batch, 1, n_bins, length)."""
        clips, starts = clips.to(self.device), starts.to(self.device)
        steps = torch.arange(length, device=self.device)
        positions = (starts[:, None] + steps[None, :]) % self.lengths[clips][:, None]
        rows = self.offsets[clips][:, None] + positions
        return self.frames_major[rows].permute(0, 2, 1).unsqueeze(1)

    def whole(self, clips: torch.Tensor) -> torch.Tensor:
        """The whole length-fixed clips: (batch, 1, n_bins, frames)."""
        return self.excerpts(clips, torch.zeros(len(clips), dtype=torch.int64), self.frames)

    def random_starts(self, count: int, length: int, rng: np.random.Generator) -> torch.Tensor:
        """Uniform excerpt starts inside the length-fixed clip: 0 ... frames - length."""
        return torch.from_numpy(rng.integers(0, self.frames - length + 1, size=count))
