"""Pick the torch device for one training job, and keep parallel jobs off each other's GPU.

Snakemake may start several training jobs at once on one machine (``--resources gpu=N``).
Snakemake counts GPUs but does not say *which* GPU a job should use, so without help every
job would land on ``cuda:0``. Each job therefore claims a physical GPU index by taking an
exclusive ``flock`` on ``<lock_dir>/gpu<index>.lock`` and holds that lock for its lifetime.

``compute.jobs_per_gpu: N`` (default 1) gives every GPU N slots, each its own lock file
(``gpu<index>.lock`` for the first, ``gpu<index>.slot<s>.lock`` for the others), so short jobs
(fine-tuning, self-verification) can share a GPU. Slots are handed out one round over all GPUs
at a time: a second job lands on a GPU only when every GPU already has one. The Snakefile
passes the setting to every job through the environment variable ``WORKFLOW_JOBS_PER_GPU``.

Where a scheduler (SLURM, or the user) has already chosen the GPU through
``CUDA_VISIBLE_DEVICES``, the job simply uses the first visible device and takes no lock.

torch is imported inside the functions only, so :func:`claim_gpu` can be used and tested
without paying for (or even having) torch.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

log = logging.getLogger(__name__)

VALID_REQUESTS = ("auto", "cpu", "cuda")
JOBS_PER_GPU_ENV = "WORKFLOW_JOBS_PER_GPU"


def jobs_per_gpu_from_env() -> int:
    """Slots per GPU from WORKFLOW_JOBS_PER_GPU (set by the Snakefile); 1 when unset."""
    value = os.environ.get(JOBS_PER_GPU_ENV, "1").strip() or "1"
    try:
        slots = int(value)
    except ValueError:
        slots = 0
    if slots < 1:
        raise ValueError(f"{JOBS_PER_GPU_ENV} must be a positive integer, got {value!r}")
    return slots


class GpuClaim:
    """An exclusive hold on one GPU index, backed by ``flock`` on an open file descriptor.

    The lock lives as long as the descriptor is open: until :meth:`release` or until the
    process ends, *however* it ends. Dropping the object does not release the lock (no
    ``__del__``), on purpose: ``select_device(...).device`` must not give the GPU away at
    once. Forked children (e.g. DataLoader workers) share the descriptor, so the lock is
    only freed once they have exited too.
    """

    def __init__(self, index: int, path: Path, fd: int, slot: int = 0) -> None:
        self.index = index
        self.slot = slot
        self.path = path
        self.pid = os.getpid()
        self._fd: int | None = fd

    @property
    def held(self) -> bool:
        """True until :meth:`release` has been called."""
        return self._fd is not None

    def release(self) -> None:
        """Give the GPU back. Safe to call more than once."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the last reference to the open file drops the flock

    def __enter__(self) -> GpuClaim:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "held" if self.held else "released"
        return f"GpuClaim(index={self.index}, slot={self.slot}, path={str(self.path)!r}, {state})"


def _try_lock(path: Path) -> int | None:
    """Return an fd holding an exclusive flock on ``path``, or None if another holder has it.

    The lock files are never deleted: unlinking a lock file while someone waits on it would
    let two processes lock two different inodes of "the same" file.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _write_holder_info(fd: int) -> None:
    """Record pid and time in the lock file for humans debugging a busy GPU.

    Informational only: the truth is the flock, which the file contents cannot express
    (a stale pid stays in the file after its process died).
    """
    info = f"pid={os.getpid()} since={time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n"
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, info.encode(), 0)
    except OSError:
        pass  # a full disk must not cost us a GPU we already hold


def slot_lock_path(lock_dir: Path, index: int, slot: int) -> Path:
    """Lock file of one slot of one GPU (slot 0 keeps the one-job-per-GPU name)."""
    return Path(lock_dir) / (f"gpu{index}.lock" if slot == 0 else f"gpu{index}.slot{slot}.lock")


def claim_gpu(
    n_devices: int, lock_dir: Path, timeout_s: float, poll_s: float = 0.5, slots_per_device: int = 1
) -> GpuClaim:
    """Claim the lowest free GPU index in ``range(n_devices)``, waiting up to ``timeout_s``.

    With ``slots_per_device`` > 1 each GPU takes that many jobs: the first free slot in the
    order (slot 0 of GPU 0, slot 0 of GPU 1, ..., slot 1 of GPU 0, ...) is claimed.

    Each index is guarded by a non-blocking exclusive ``fcntl.flock`` on
    ``lock_dir / f"gpu{index}.lock"``, taken on a descriptor that stays open in the returned
    :class:`GpuClaim`. Because it is a flock on an open descriptor, the kernel releases it
    when the process dies for any reason -- crash, OOM killer, SIGKILL, node-local timeout --
    so a dead job can never leave a GPU locked, and no stale-lock cleanup is ever needed.
    That is why this uses flock and not pid files.

    ``lock_dir`` must be shared by all jobs on this machine and sit on a local file system
    (flock over NFS is unreliable). At least one attempt is made even when ``timeout_s`` is
    0. Raises RuntimeError when no index becomes free in time.
    """
    if n_devices < 1:
        raise ValueError(f"n_devices must be >= 1, got {n_devices}")
    if slots_per_device < 1:
        raise ValueError(f"slots_per_device must be >= 1, got {slots_per_device}")
    lock_dir = Path(lock_dir)
    lock_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_s
    while True:
        for slot in range(slots_per_device):
            for index in range(n_devices):
                path = slot_lock_path(lock_dir, index, slot)
                fd = _try_lock(path)
                if fd is not None:
                    _write_holder_info(fd)
                    return GpuClaim(index, path, fd, slot)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RuntimeError(
                f"No free GPU after waiting {timeout_s:g} s: all {n_devices} device(s) x "
                f"{slots_per_device} slot(s) are locked by other jobs (lock files gpu*.lock in "
                f"{lock_dir}). "
                "Each lock frees itself when its job ends, so do not delete the files; run "
                "fewer GPU jobs at once (snakemake --resources gpu=...) or wait longer."
            )
        time.sleep(min(poll_s, remaining))


@dataclass
class DeviceChoice:
    """The device a job should use, plus the GPU claim that must stay held while it runs.

    Keep this object (or its ``claim``) for the whole job; call :meth:`release` or use it as a
    context manager to give the GPU back early. ``note`` says how the choice was made.
    """

    device: str
    claim: GpuClaim | None = None
    note: str = ""

    def describe(self) -> str:
        """One line for the job log, so a user can tell which GPU a run actually used."""
        text = f"device {self.device}"
        if self.note:
            text += f" ({self.note})"
        if self.claim is not None:
            state = "held" if self.claim.held else "released"
            text += f"; lock {self.claim.path} {state} by pid {self.claim.pid}"
        return text

    def release(self) -> None:
        """Release the GPU claim, if any. Safe to call more than once."""
        if self.claim is not None:
            self.claim.release()

    def __enter__(self) -> DeviceChoice:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _cpu_choice(cpu_threads: int, why: str) -> DeviceChoice:
    """Use the CPU with exactly the threads Snakemake gave this job (no oversubscription)."""
    import torch  # here, not at module level: claim_gpu works without torch (see above)

    torch.set_num_threads(cpu_threads)
    return DeviceChoice("cpu", None, f"{why}, {cpu_threads} thread(s)")


def _cuda_choice(lock_dir: Path, claim_timeout_s: float, jobs_per_gpu: int) -> DeviceChoice:
    """Use the scheduler's GPU if it picked one, else claim a free slot through a lock."""
    import torch  # here, not at module level: claim_gpu works without torch (see above)

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return DeviceChoice("cuda:0", None, f"CUDA_VISIBLE_DEVICES={visible}, no lock taken")
    n_devices = torch.cuda.device_count()
    claim = claim_gpu(n_devices, lock_dir, claim_timeout_s, slots_per_device=jobs_per_gpu)
    note = f"claimed GPU {claim.index} of {n_devices}"
    if jobs_per_gpu > 1:
        note += f", slot {claim.slot} of {jobs_per_gpu}"
    return DeviceChoice(f"cuda:{claim.index}", claim, note)


def select_device(
    requested: str,
    lock_dir: Path,
    cpu_threads: int,
    claim_timeout_s: float = 600.0,
    jobs_per_gpu: int | None = None,
) -> DeviceChoice:
    """Turn the config's ``compute.device`` ("auto" | "cpu" | "cuda") into a usable device.

    "auto" takes CUDA when torch sees it, else the CPU, so one config runs on laptops and
    GPU nodes alike. "cuda" without CUDA fails loudly rather than silently training for
    days on the CPU. On CPU, torch is limited to ``cpu_threads`` threads. ``jobs_per_gpu``:
    slots per GPU (None: from WORKFLOW_JOBS_PER_GPU, default 1).
    """
    import torch  # here, not at module level: claim_gpu works without torch (see above)

    mode = requested.strip().lower()
    if mode not in VALID_REQUESTS:
        raise ValueError(f"device must be one of {', '.join(VALID_REQUESTS)}; got {requested!r}")
    if cpu_threads < 1:
        raise ValueError(f"cpu_threads must be >= 1, got {cpu_threads}")
    has_cuda = torch.cuda.is_available()
    if mode == "cuda" and not has_cuda:
        raise RuntimeError(
            "device 'cuda' was requested but torch sees no usable CUDA GPU "
            f"(torch {torch.__version__}, built for CUDA {torch.version.cuda or 'none'}; "
            f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}). "
            "Set compute.device to 'auto' or 'cpu', or install a CUDA build of torch "
            "and check the driver with nvidia-smi."
        )
    if mode == "cpu":
        choice = _cpu_choice(cpu_threads, "requested cpu")
    elif not has_cuda:
        choice = _cpu_choice(cpu_threads, "auto: no CUDA available")
    else:
        slots = jobs_per_gpu_from_env() if jobs_per_gpu is None else jobs_per_gpu
        choice = _cuda_choice(Path(lock_dir), claim_timeout_s, slots)
    # Every job that runs a network logs where it ran (benchmarks/gpu_check.py reads it).
    log.info("job uses %s", choice.describe())
    return choice
