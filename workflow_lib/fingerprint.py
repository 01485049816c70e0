"""Per-split fingerprints of the dataset: how a changed recording or listing reaches the DAG.

Snakemake reruns a job when one of its input files is newer than its outputs (``mtime``) or
when a recorded parameter changed (``params``); both are in its default ``--rerun-triggers``.
Neither sees the dataset as it is: the audio files are no inputs of any rule (9,473 of them
would make every job's input list huge, and the DAG must plan without the audio), and a
relabelled CSV copied with ``cp -p`` or ``rsync -a`` keeps an *older* time stamp.

So when the DAG is built, each split gets one fingerprint: a digest over the *content* of the
listings it reads and of every audio file it may read (training: the files its CSVs list;
test: the test CSV and every file of the test folder, listed or not, because a predict-only
run predicts every file there and a run with a test CSV refuses unlisted audio). The split's
validation rule has it as a parameter; a changed fingerprint reruns that validation and with
it exactly the jobs downstream of that split (a new test file retrains nothing).

Why content digests, not name + size + mtime: a recording replaced with ``cp -p`` keeps the
old mtime, and clips of a fixed length (FSDD, many corpora) keep the size too. Reading every
file at every start would cost minutes on gigabytes, so digests are cached in a file under
``results/`` keyed by (size, mtime_ns, ctime_ns, inode): a restart only stats the files. The
ctime cannot be set back by ``cp -p``, ``rsync -a`` or ``touch``, so a file rewritten in place
is read again; a file whose content did not change (a ``touch``, a moved dataset) is read
again but gives the same digest and reruns nothing.

No third-party imports: the Snakefile imports this at every start.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .dataset_layouts import has_pool, layout_of, pool_audio_dir

#: What a file that is not there (or cannot be read) contributes to a fingerprint.
MISSING = "missing"
#: What a symbolic link leading outside the dataset contributes (validation skips it unless
#: dataset.follow_external_symlinks): its target's name, never its content.
OUTSIDE = "outside the dataset: "
_CHUNK = 1 << 20


def folder_files(folder: Path) -> list[Path]:
    """Regular, non-hidden files of a folder, sorted by name: the files the test split
    predicts when it has no CSV (and checks for unlisted audio when it has one)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def outside_root(path: Path, roots: tuple[Path, ...]) -> str:
    """The target of ``path`` when it resolves outside every one of ``roots``, else ''."""
    target = path.resolve()
    if any(target.is_relative_to(root.resolve()) for root in roots):
        return ""
    return str(target)


def content_digest(path: Path) -> str:
    """BLAKE2b (128 bits) of a file's bytes."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        while block := handle.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


class DigestCache:
    """Content digests of files, reused while a file's (size, mtime_ns, ctime_ns, inode) stay.

    The cache file is an optimisation only: unreadable or malformed, it is ignored and
    rebuilt; entries of files not asked for in this run are dropped when it is saved.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = Path(path) if path is not None else None
        self.known = self._load()
        self.used: dict[str, list] = {}
        self.read = 0  # files whose content was read in this run

    def _load(self) -> dict[str, list]:
        try:
            data = json.loads(self.path.read_text()) if self.path else {}
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict):
            return {}
        return {k: v for k, v in data.items() if isinstance(v, list) and len(v) == 5}

    def digest(self, path: Path) -> str:
        """The file's content digest, or MISSING when it is not a readable regular file."""
        try:
            info = path.stat()
        except OSError:
            return MISSING
        if not path.is_file():
            return MISSING
        key = str(path)
        state = [info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino]
        entry = self.known.get(key)
        if entry is None or entry[:4] != state:
            try:
                entry = [*state, content_digest(path)]
            except OSError:
                return MISSING
            self.read += 1
        self.used[key] = entry
        return str(entry[4])

    def save(self) -> None:
        """Write the entries of this run (atomically) when they differ from the file's."""
        if self.path is None or self.used == self.known:
            return
        from .io import write_text  # pandas and numpy: imported only when the cache changed

        try:
            write_text(json.dumps(self.used, separators=(",", ":")), self.path)
        except OSError as error:  # a read-only results folder: digests are read again next time
            print(f"note: cannot save the dataset digests to {self.path}: {error}", file=sys.stderr)


def listed_names(csv_path: Path) -> list[str]:
    """The ``fname`` column of a listing, or [] when it cannot be read (validation says why).
    Names with a directory part are left out: validation refuses them."""
    try:
        with open(csv_path, newline="", encoding="utf-8") as handle:
            names = [row.get("fname") or "" for row in csv.DictReader(handle)]
    except (OSError, UnicodeDecodeError, csv.Error):
        return []
    return [name for name in names if name and Path(name).name == name and name not in (".", "..")]


def _hash(parts: Iterable[Any]) -> str:
    return hashlib.blake2b(json.dumps(list(parts)).encode(), digest_size=16).hexdigest()


def _audio_digest(file: Path, roots: tuple[Path, ...], follow_links: bool, cache: DigestCache) -> str:
    """An audio file's digest; a link leading outside ``roots`` is not read (as validation)."""
    target = "" if follow_links or not file.is_file() else outside_root(file, roots)
    return OUTSIDE + target if target else cache.digest(file)


def _listing(root: Path, name: str, cache: DigestCache) -> list[str]:
    """A dataset file given by a config key ('' = none), with its digest."""
    return [name, cache.digest(root / name) if name else MISSING]


def fingerprint_train(root: Path, dataset: Mapping[str, Any], cache: DigestCache) -> str:
    """The training split: each training listing and every file it lists, and the true-label
    side file (dataset.true_labels_csv)."""
    follow = bool(dataset.get("follow_external_symlinks", False))
    parts: list[Any] = []
    for csv_key, dir_key in layout_of(dataset).listing_folders:
        if not dataset.get(csv_key):
            continue  # fsdkaggle2019 without a noisy part
        audio_dir = root / dataset[dir_key]
        parts.append(_listing(root, dataset[csv_key], cache))
        parts += [
            [name, _audio_digest(audio_dir / name, (root, audio_dir), follow, cache)]
            for name in listed_names(root / dataset[csv_key])
        ]
    parts.append(_listing(root, dataset["true_labels_csv"], cache))
    return _hash(parts)


def fingerprint_test(root: Path, dataset: Mapping[str, Any], cache: DigestCache) -> str:
    """The test split: the test CSV (if any) and every file of the test folder."""
    folder = root / dataset["test_audio_dir"] if dataset["test_audio_dir"] else None
    files = folder_files(folder) if folder is not None else []
    follow = bool(dataset.get("follow_external_symlinks", False))
    digests = [[f.name, _audio_digest(f, (root, f.parent), follow, cache)] for f in files]
    return _hash([_listing(root, dataset["test_csv"], cache), *digests])


def fingerprint_pool(root: Path, dataset: Mapping[str, Any], cache: DigestCache) -> str:
    """The unlabelled pool: every file of its folder (dataset.unlabelled_audio_dir, or the
    test audio folder when transductive; relative to ``root`` or absolute) and its true-label
    side file, if any."""
    folder = root / pool_audio_dir(dataset)
    follow = bool(dataset.get("follow_external_symlinks", False))
    digests = [[f.name, _audio_digest(f, (root, folder), follow, cache)] for f in folder_files(folder)]
    return _hash([_listing(root, dataset.get("unlabelled_true_labels_csv", ""), cache), *digests])


def split_fingerprints(
    root: str | os.PathLike[str], dataset: Mapping[str, Any], cache: DigestCache
) -> dict[str, str]:
    """{'train': ..., 'test': ...} of a dataset in ``root``, and 'pool' when the settings name
    an unlabelled pool. The caller saves ``cache`` when the run starts (a dry run writes
    nothing)."""
    pool = {"pool": fingerprint_pool(Path(root), dataset, cache)} if has_pool(dataset) else {}
    return {
        "train": fingerprint_train(Path(root), dataset, cache),
        "test": fingerprint_test(Path(root), dataset, cache),
        **pool,
    }


def folder_fingerprint(folder: str | os.PathLike[str], cache: DigestCache) -> str:
    """Every non-hidden file under a folder (the background-noise recordings of waveform
    augmentation), by relative name and content digest. Linked folders are not entered, and a
    link leading outside the folder contributes its target's name, never its content (the
    noise job skips it). A recording added, removed or replaced changes the fingerprint."""
    root = Path(folder)
    parts: list[Any] = []
    for base, dirs, files in os.walk(root, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(f for f in files if not f.startswith(".")):
            path = Path(base) / name
            parts.append([str(path.relative_to(root)), _audio_digest(path, (root,), False, cache)])
    return _hash(parts)
