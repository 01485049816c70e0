"""Atomic file writes and small CSV helpers.

Every file the workflow produces is written to a temporary name in the same directory and
then renamed: a job killed half-way never leaves a truncated CSV or array that a later job
would read as complete.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import logging
import os
import pickle
import shutil
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import UserError

log = logging.getLogger(__name__)

#: Below this many free bytes a failed write is reported as a full disk (torch.save reports
#: ENOSPC as "RuntimeError: [enforce fail at inline_container.cc] . unexpected pos").
DISK_FULL_BYTES = 1 << 20


class DiskFullError(UserError, OSError):
    """No space left on the device holding an output; the message names the path."""


def _is_disk_full(error: BaseException, folder: Path) -> bool:
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if "No space left on device" in str(error):
        return True
    if isinstance(error, RuntimeError):
        try:
            return shutil.disk_usage(folder).free < DISK_FULL_BYTES
        except OSError:
            return False
    return False


def _disk_full_message(target: Path, error: BaseException) -> str:
    try:
        free = f"{shutil.disk_usage(target.parent).free / 2**20:.1f} MiB free"
    except OSError:
        free = "free space unknown"
    return (
        f"No space left on device while writing {target} ({free} on its filesystem; "
        f"{type(error).__name__}: {error}). Free space there (see README 'When things go "
        "wrong' for the space a run needs) and run the same command again"
    )


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _remove_stale_temporaries(target: Path) -> None:
    """Delete temporary files that :func:`atomic_path` left for ``target`` when its writer was
    killed outright (no ``finally`` runs on SIGKILL: out of memory, a cluster's time limit).
    Only a writer of ``target`` calls this, and Snakemake runs one job per output at a time.
    """
    for leftover in target.parent.glob(f".{glob.escape(target.name)}.*.tmp"):
        leftover.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only on success."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(target)  # a killed earlier writer's file (a shard: gigabytes)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as error:
        if _is_disk_full(error, target.parent):
            raise DiskFullError(errno.ENOSPC, _disk_full_message(target, error)) from error
        raise
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp creates 0600; outputs are shared
        os.replace(tmp, target)
    except (OSError, RuntimeError) as error:
        if not isinstance(error, DiskFullError) and _is_disk_full(error, target.parent):
            raise DiskFullError(errno.ENOSPC, _disk_full_message(target, error)) from error
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


def write_csv(frame: pd.DataFrame, path: str | os.PathLike[str], **kwargs: Any) -> None:
    """Write a CSV atomically, without the pandas index."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, **kwargs)


def write_npy(array: np.ndarray, path: str | os.PathLike[str]) -> None:
    """Write a ``.npy`` file atomically (``np.save`` would append ``.npy`` to the temp name)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, array)


#: Bytes before the data in a file of :func:`npy_row_writer`: a .npy v1.0 header padded to a
#: multiple of 64 (the data stays aligned for memory mapping), with room for any row count.
NPY_HEADER_BYTES = 128


def _npy_header(rows: int, columns: int, dtype: np.dtype) -> bytes:
    """The .npy v1.0 header of a C-ordered (rows, columns) array, padded to NPY_HEADER_BYTES."""
    text = repr(
        {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (rows, columns)}
    )
    body_bytes = NPY_HEADER_BYTES - 10  # magic (6), version (2), header length (2)
    if len(text) + 1 > body_bytes:
        raise ValueError(f"npy header {text!r} does not fit in {NPY_HEADER_BYTES} bytes")
    body = text.ljust(body_bytes - 1).encode("latin1") + b"\n"
    return b"\x93NUMPY\x01\x00" + body_bytes.to_bytes(2, "little") + body


@contextlib.contextmanager
def npy_row_writer(
    path: str | os.PathLike[str], columns: int, dtype: np.dtype | type = np.float32
) -> Iterator[Callable[[np.ndarray], None]]:
    """Write a 2-D ``.npy`` file block by block, atomically, never holding it whole in memory.

    Yields ``append(block)`` for (rows, columns) blocks; the row count in the header is written
    when the block ends without error, then the file is renamed into place (:func:`atomic_path`).
    A preprocessing shard of long clips is then one clip's spectrograms in memory, not the
    whole shard plus its concatenated copy. The temporary file lives as long as the job; one
    left by a job killed outright is removed by the rerun (:func:`atomic_path`).
    """
    dtype = np.dtype(dtype)
    rows = 0

    def append(block: np.ndarray) -> None:
        nonlocal rows
        block = np.ascontiguousarray(block, dtype=dtype)
        if block.ndim != 2 or block.shape[1] != columns:
            raise ValueError(f"expected a (rows, {columns}) block, got shape {block.shape}")
        if block.size:  # a zero-length view cannot be cast to bytes
            handle.write(memoryview(block).cast("B"))
            rows += block.shape[0]

    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        handle.write(_npy_header(0, columns, dtype))
        yield append
        handle.seek(0)
        handle.write(_npy_header(rows, columns, dtype))


def write_json(data: Any, path: str | os.PathLike[str]) -> None:
    """Write pretty JSON atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_text(text: str, path: str | os.PathLike[str]) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def read_csv_str(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a CSV keeping file names and labels as strings (``"01"`` must not become ``1``)."""
    return pd.read_csv(path, dtype=str, keep_default_na=False)


class CorruptFileError(UserError):
    """An intermediate file exists but cannot be read (truncated by a full disk, a killed copy,
    a crash of the filesystem); the message names it and how to rebuild it."""


#: What numpy and torch raise on a truncated or garbled file: numpy's header parser and
#: ``mmap`` ("mmap length is greater than file size"), torch's zip reader ("failed finding
#: central directory", a RuntimeError) and the unpickler of the data inside.
UNREADABLE_ERRORS = (ValueError, OSError, EOFError, RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile)


def corrupt_file_error(path: str | os.PathLike[str], error: BaseException, rule: str) -> CorruptFileError:
    """The error for an unreadable intermediate: which file, what the reader said, the fix.

    Snakemake considers an existing output up to date whatever its content, so the fix is to
    remove it (Snakemake then rebuilds it and everything after it) or to force its rule.
    """
    return CorruptFileError(
        f"{path} is damaged and cannot be read ({type(error).__name__}: {error}). Delete it and "
        f"run the same snakemake command again (the rule {rule} rebuilds it), or rerun with "
        f"--forcerun {rule}; after an interrupted run, --rerun-incomplete"
    )


def load_npy(path: str | os.PathLike[str], rule: str, mmap_mode: str | None = "r") -> np.ndarray:
    """``np.load`` that names the file and the rule to rerun when the array is truncated."""
    try:
        return np.load(path, mmap_mode=mmap_mode)
    except (FileNotFoundError, PermissionError):
        raise
    except UNREADABLE_ERRORS as error:
        raise corrupt_file_error(path, error, rule) from error


def read_parameter_file(path: str | os.PathLike[str]) -> Any:
    """A parameter file (``best.pt``, ``last.pt``, ``resume.pt``) read on the CPU with torch's
    ``weights_only`` unpickler, the one way this workflow reads them.

    The files this workflow writes hold tensors, numbers, strings, lists and dicts only, so
    unpickling never has to run code; a file from a copied results tree that asks for any other
    object (a pickle that would run a program) raises ``pickle.UnpicklingError``, one of
    :data:`UNREADABLE_ERRORS`, instead of being executed."""
    import torch  # only the jobs that read parameter files pay for the import

    return torch.load(path, map_location="cpu", weights_only=True)


def load_torch(path: str | os.PathLike[str], rule: str) -> Any:
    """:func:`read_parameter_file` that names the file and the rule to rerun when it is damaged
    or refused."""
    try:
        return read_parameter_file(path)
    except (FileNotFoundError, PermissionError):
        raise
    except UNREADABLE_ERRORS as error:
        raise corrupt_file_error(path, error, rule) from error


def set_aside(path: str | os.PathLike[str], why: BaseException | str) -> Path:
    """Rename a damaged file to ``<name>.corrupt-<UTC time>`` (kept for inspection, never read
    again) and log it; returns the new path."""
    source = Path(path)
    target = source.with_name(f"{source.name}.corrupt-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
    os.replace(source, target)
    log.warning("%s cannot be read (%s); set aside as %s, starting afresh", source, why, target.name)
    return target
