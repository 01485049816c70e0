"""Tests for workflow_lib.devices: GPU claims across real processes, and device selection.

The claim tests use fake device counts and real child processes (``python -c``), because
the property that matters -- one GPU per job, freed when a job dies -- is about processes.
The select_device tests monkeypatch torch.cuda and never touch a real GPU.
"""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from workflow_lib.devices import DeviceChoice, GpuClaim, claim_gpu, select_device  # noqa: E402

# Child protocol on stdout: "ready", then "claimed <index> <t>" (or "error <msg>", exit 3),
# then "released <t>". hold < 0 holds until the parent closes stdin. With go=1 the child
# waits for a line on stdin before claiming, so the parent can start all claims at once.
# The 6th argument is compute.jobs_per_gpu (the slots of each GPU).
HOLDER = """
import sys, time
from pathlib import Path
from workflow_lib.devices import claim_gpu
n, lock_dir, timeout, hold, go, slots = sys.argv[1:7]
print("ready", flush=True)
if go == "1":
    sys.stdin.readline()
try:
    claim = claim_gpu(int(n), Path(lock_dir), float(timeout), poll_s=0.02, slots_per_device=int(slots))
except RuntimeError as exc:
    print("error", exc, flush=True)
    sys.exit(3)
print("claimed", claim.index, time.time(), flush=True)
if float(hold) < 0:
    sys.stdin.read()
else:
    time.sleep(float(hold))
end = time.time()
claim.release()
print("released", end, flush=True)
"""


class Holders:
    """Starts holder processes and makes sure none outlives its test."""

    def __init__(self, lock_dir: Path) -> None:
        self.lock_dir = lock_dir
        self.procs: list[subprocess.Popen[str]] = []

    def start(
        self, n: int, timeout: float = 5.0, hold: float = -1.0, go: bool = False, slots: int = 1
    ) -> subprocess.Popen[str]:
        path = os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])
        env = dict(os.environ, PYTHONPATH=path)
        args = [sys.executable, "-c", HOLDER, str(n), str(self.lock_dir), str(timeout), str(hold)]
        proc = subprocess.Popen(
            [*args, "1" if go else "0", str(slots)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.procs.append(proc)
        assert readline(proc) == "ready"
        return proc

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    stream.close()


def readline(proc: subprocess.Popen[str]) -> str:
    """Next stdout line of a child; fails loudly (with its exit code) if the child died."""
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line, f"child exited early with code {proc.wait()}"
    return line


def go(*procs: subprocess.Popen[str]) -> None:
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()


def claimed_index(proc: subprocess.Popen[str]) -> int:
    word, index, _ = readline(proc).split()
    assert word == "claimed"
    return int(index)


def finish(proc: subprocess.Popen[str]) -> tuple[int, float, float]:
    """Let a child run to its end; return (index, claimed at, released at)."""
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out
    lines = {words[0]: words[1:] for words in (line.split() for line in out.splitlines()) if words}
    (index, start), (end,) = lines["claimed"], lines["released"]
    return int(index), float(start), float(end)


@pytest.fixture
def lock_dir(tmp_path: Path) -> Path:
    # a not-yet-existing nested dir: claim_gpu must create it
    return tmp_path / "locks" / "gpu"


@pytest.fixture
def holders(lock_dir: Path) -> Iterator[Holders]:
    h = Holders(lock_dir)
    yield h
    h.cleanup()


# ---------------------------------------------------------------- claim_gpu across processes


def test_two_processes_get_distinct_gpus_and_a_third_times_out(holders: Holders, lock_dir: Path) -> None:
    a, b = holders.start(2, go=True), holders.start(2, go=True)
    go(a, b)
    assert {claimed_index(a), claimed_index(b)} == {0, 1}

    start = time.monotonic()
    with pytest.raises(RuntimeError, match="No free GPU") as err:
        claim_gpu(2, lock_dir, timeout_s=1.0, poll_s=0.1)
    assert time.monotonic() - start >= 0.9  # it polled until the timeout, not just once
    assert str(lock_dir) in str(err.value)
    assert "all 2 device(s)" in str(err.value)

    for proc in (a, b):
        proc.stdin.close()  # type: ignore[union-attr]
        assert proc.wait(timeout=10) == 0


def test_sigkilled_holder_frees_its_gpu(holders: Holders, lock_dir: Path) -> None:
    victim = holders.start(2)
    assert claimed_index(victim) == 0
    with claim_gpu(2, lock_dir, timeout_s=0) as mine:
        assert mine.index == 1
        with pytest.raises(RuntimeError):  # both held: device 0 really is the victim's
            claim_gpu(2, lock_dir, timeout_s=0)

        os.kill(victim.pid, signal.SIGKILL)
        assert victim.wait(timeout=10) == -signal.SIGKILL

        with claim_gpu(2, lock_dir, timeout_s=2.0, poll_s=0.05) as after:
            assert after.index == 0
            assert f"pid={os.getpid()}" in after.path.read_text()


def test_concurrent_claimers_never_share_a_gpu(holders: Holders) -> None:
    procs = [holders.start(4, timeout=0, go=True) for _ in range(4)]
    go(*procs)
    # every child has claimed and none has released yet (they hold until stdin closes),
    # so the four holds overlap by construction, however slow this machine is
    assert sorted(claimed_index(proc) for proc in procs) == [0, 1, 2, 3]
    time.sleep(1.0)
    for proc in procs:
        proc.stdin.close()  # type: ignore[union-attr]
        assert proc.wait(timeout=10) == 0


def test_more_claimers_than_gpus_wait_their_turn(holders: Holders) -> None:
    procs = [holders.start(3, timeout=10, hold=0.4, go=True) for _ in range(6)]
    go(*procs)
    results = [finish(proc) for proc in procs]
    by_index: dict[int, list[tuple[float, float]]] = {}
    for index, start, end in results:
        by_index.setdefault(index, []).append((start, end))
    assert set(by_index) <= {0, 1, 2}
    for spans in by_index.values():
        spans.sort()
        for (_, end), (next_start, _) in zip(spans, spans[1:]):
            assert end <= next_start, f"two holders overlapped on one GPU: {spans}"


def most_at_once(spans: list[tuple[float, float]]) -> int:
    """The largest number of (start, end) spans that overlap at one instant."""
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    held = most = 0
    for _, change in events:  # at equal times a release (-1) sorts first
        held += change
        most = max(most, held)
    return most


def test_concurrent_jobs_never_exceed_jobs_per_gpu_holders(holders: Holders) -> None:
    """compute.jobs_per_gpu 2 on 2 fake GPUs, 9 jobs claiming at the same moment and waiting
    their turn: every job gets a slot, and no GPU ever has more than 2 holders at once (each
    child reports its claim after taking the lock and its release before giving it back, so a
    measured overlap is a real one)."""
    procs = [holders.start(2, timeout=20, hold=0.3, go=True, slots=2) for _ in range(9)]
    go(*procs)
    results = [finish(proc) for proc in procs]
    by_index: dict[int, list[tuple[float, float]]] = {}
    for index, start, end in results:
        by_index.setdefault(index, []).append((start, end))
    assert set(by_index) == {0, 1}, by_index
    assert sum(len(spans) for spans in by_index.values()) == 9
    for index, spans in by_index.items():
        assert most_at_once(spans) <= 2, f"GPU {index} had more than 2 holders: {sorted(spans)}"
    # and the second slot is used: 9 claims started together, each held for 0.3 s
    assert max(most_at_once(spans) for spans in by_index.values()) == 2


def test_most_at_once_counts_overlaps() -> None:
    """The overlap count the test above relies on."""
    assert most_at_once([(0, 1), (1, 2)]) == 1
    assert most_at_once([(0, 2), (1, 3), (1.5, 4)]) == 3


# ---------------------------------------------------------------- claim_gpu in one process


def test_release_returns_the_same_gpu_and_is_idempotent(lock_dir: Path) -> None:
    first = claim_gpu(2, lock_dir, timeout_s=0)
    assert first.index == 0 and first.path == lock_dir / "gpu0.lock"
    second = claim_gpu(2, lock_dir, timeout_s=0)
    assert second.index == 1  # first is really held, even against this same process

    first.release()
    first.release()
    assert not first.held

    again = claim_gpu(2, lock_dir, timeout_s=0)
    assert again.index == 0
    for claim in (again, second):
        claim.release()


def test_waiting_claim_gets_a_gpu_released_meanwhile(lock_dir: Path) -> None:
    held = claim_gpu(1, lock_dir, timeout_s=0)
    timer = threading.Timer(0.3, held.release)
    timer.start()
    try:
        start = time.monotonic()
        with claim_gpu(1, lock_dir, timeout_s=5.0, poll_s=0.05) as claim:
            assert claim.index == 0
            assert time.monotonic() - start >= 0.25
    finally:
        timer.cancel()
        held.release()


def test_claim_gpu_rejects_zero_devices(lock_dir: Path) -> None:
    with pytest.raises(ValueError):
        claim_gpu(0, lock_dir, timeout_s=0)


def test_module_does_not_import_torch() -> None:
    source = str(REPO_ROOT / "workflow_lib" / "devices.py")
    code = (  # load the file alone, so a heavy workflow_lib/__init__.py cannot blur the test
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('devices', {source!r})\n"
        "module = sys.modules['devices'] = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        "assert 'torch' not in sys.modules, 'devices.py imported torch at module level'\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert result.stdout.strip() == "ok", result.stderr


# ---------------------------------------------------------------- select_device


@pytest.fixture
def torch_threads() -> Iterator[int]:
    """A thread count different from the current one; the original is restored afterwards."""
    import torch

    before = torch.get_num_threads()
    yield 1 if before != 1 else 2
    torch.set_num_threads(before)


@pytest.fixture
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch reports two GPUs; anything that would really touch CUDA is not patched."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


def test_cpu_sets_threads(lock_dir: Path, torch_threads: int) -> None:
    import torch

    choice = select_device("cpu", lock_dir, cpu_threads=torch_threads)
    assert choice.device == "cpu" and choice.claim is None
    assert torch.get_num_threads() == torch_threads
    assert "cpu" in choice.describe() and "\n" not in choice.describe()


def test_cuda_without_cuda_raises_clear_error(lock_dir: Path, no_cuda: None) -> None:
    with pytest.raises(RuntimeError, match="'cuda' was requested but torch sees no usable CUDA"):
        select_device("cuda", lock_dir, cpu_threads=1)


def test_auto_without_cuda_uses_cpu(lock_dir: Path, no_cuda: None, torch_threads: int) -> None:
    import torch

    choice = select_device("auto", lock_dir, cpu_threads=torch_threads)
    assert choice.device == "cpu" and choice.claim is None
    assert torch.get_num_threads() == torch_threads


def test_this_machine_has_no_cuda_so_auto_is_cpu(lock_dir: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert select_device("auto", lock_dir, cpu_threads=1).device == "cpu"
    with pytest.raises(RuntimeError):
        select_device("cuda", lock_dir, cpu_threads=1)


def test_auto_with_cuda_visible_devices_uses_first_visible_without_lock(
    lock_dir: Path, fake_cuda: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    monkeypatch.setattr(torch.cuda, "device_count", _must_not_be_called)
    choice = select_device("auto", lock_dir, cpu_threads=1)
    assert choice.device == "cuda:0"
    assert choice.claim is None
    assert not lock_dir.exists()
    assert "CUDA_VISIBLE_DEVICES=3" in choice.describe()


def _must_not_be_called() -> int:
    raise AssertionError("device_count must not be consulted when the scheduler chose the GPU")


def test_cuda_without_visible_devices_claims_distinct_gpus(
    lock_dir: Path, fake_cuda: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    first = select_device("cuda", lock_dir, cpu_threads=1, claim_timeout_s=0)
    # dropping the result must not free the GPU: the lock lives until release or exit
    assert select_device("auto", lock_dir, cpu_threads=1, claim_timeout_s=0).device == "cuda:1"
    gc.collect()
    with pytest.raises(RuntimeError, match="No free GPU"):
        select_device("cuda", lock_dir, cpu_threads=1, claim_timeout_s=0)

    assert first.device == "cuda:0"
    assert isinstance(first.claim, GpuClaim) and first.claim.index == 0
    assert "gpu0.lock" in first.describe()
    first.release()
    first.release()
    with select_device("cuda", lock_dir, cpu_threads=1, claim_timeout_s=1) as again:
        assert isinstance(again, DeviceChoice) and again.device == "cuda:0"
    # the leaked cuda:1 claim above is held by this process's open fd until pytest exits


def test_unknown_request_is_rejected(lock_dir: Path) -> None:
    with pytest.raises(ValueError, match="auto, cpu, cuda"):
        select_device("tpu", lock_dir, cpu_threads=1)


# ---------------------------------------------------------------- compute.jobs_per_gpu


def test_slots_per_gpu_fill_every_gpu_once_before_sharing(lock_dir: Path) -> None:
    """jobs_per_gpu 2 on 2 fake GPUs: 4 slots, spread (0, 1, 0, 1); a fifth claim times out."""
    claims = [claim_gpu(2, lock_dir, timeout_s=0, slots_per_device=2) for _ in range(4)]
    try:
        assert [(c.index, c.slot) for c in claims] == [(0, 0), (1, 0), (0, 1), (1, 1)]
        assert len({c.path for c in claims}) == 4
        assert claims[0].path.name == "gpu0.lock" and claims[2].path.name == "gpu0.slot1.lock"
        with pytest.raises(RuntimeError, match="2 slot"):
            claim_gpu(2, lock_dir, timeout_s=0, slots_per_device=2)
        # One job per GPU (the default) still sees both GPUs as taken.
        with pytest.raises(RuntimeError):
            claim_gpu(2, lock_dir, timeout_s=0)
        claims[2].release()  # a slot of GPU 0 frees: the next claim takes exactly that one
        again = claim_gpu(2, lock_dir, timeout_s=0, slots_per_device=2)
        assert (again.index, again.slot) == (0, 1)
        claims[2] = again
    finally:
        for claim in claims:
            claim.release()
    with pytest.raises(ValueError):
        claim_gpu(2, lock_dir, timeout_s=0, slots_per_device=0)


def test_select_device_takes_jobs_per_gpu_from_the_environment(
    lock_dir: Path, fake_cuda: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Snakefile exports WORKFLOW_JOBS_PER_GPU; 3 slots on 2 fake GPUs = 6 jobs at once."""
    from workflow_lib.devices import JOBS_PER_GPU_ENV

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv(JOBS_PER_GPU_ENV, "3")
    choices = [select_device("cuda", lock_dir, cpu_threads=1, claim_timeout_s=0) for _ in range(6)]
    try:
        assert [c.device for c in choices] == ["cuda:0", "cuda:1"] * 3
        assert "slot 2 of 3" in choices[-1].describe()
        with pytest.raises(RuntimeError):
            select_device("cuda", lock_dir, cpu_threads=1, claim_timeout_s=0)
    finally:
        for choice in choices:
            choice.release()
    monkeypatch.setenv(JOBS_PER_GPU_ENV, "zero")
    with pytest.raises(ValueError, match=JOBS_PER_GPU_ENV):
        select_device("cuda", lock_dir, cpu_threads=1, claim_timeout_s=0)


def test_workflow_passes_jobs_per_gpu_to_every_job() -> None:
    """rules/common.smk puts compute.jobs_per_gpu into every job's command ({params.cli})."""
    text = (REPO_ROOT / "rules/common.smk").read_text()
    assert " WORKFLOW_JOBS_PER_GPU={int(S['compute']['jobs_per_gpu'])} python -m workflow_lib.cli" in text


def test_select_device_logs_where_the_job_runs(
    lock_dir: Path, fake_cuda: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Every job's log names its device (benchmarks/gpu_check.py checks the demo's jobs by it)."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with caplog.at_level("INFO", logger="workflow_lib.devices"):
        with select_device("cuda", lock_dir, cpu_threads=1, claim_timeout_s=0, jobs_per_gpu=2):
            pass
        select_device("cpu", lock_dir, cpu_threads=1)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("job uses device cuda:0 (claimed GPU 0 of 2, slot 0 of 2)"), lines
    assert lines[1].startswith("job uses device cpu (requested cpu"), lines
