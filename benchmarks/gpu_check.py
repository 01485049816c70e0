"""The first command on a GPU machine: does the CUDA path run, how fast, how much memory.

    python benchmarks/gpu_check.py [--out gpu_check.json] [--dag run|dry-run|skip] [--compile]
        [--steps matmul,throughput,fold,paper_run,startup,demo_dag] [--jobs-per-gpu 2]

One run (at most about 8 minutes on one GPU; the sizes below are chosen for it) writes one JSON
and prints a table of:

1. environment: torch and CUDA versions, the device, bf16 support;
2. a measured matmul rate (bf16 on CUDA, float32 on the CPU), the yardstick for "share of peak";
3. training and whole-clip inference throughput of the three paper presets through
   benchmarks/training_throughput.py's ``measure_preset`` (excerpts/s, GFLOP/s from torch's FLOP
   counter, share of the measured matmul rate);
4. one paper-preset fold (vgg_gap_spec1_2: width 64, batch 100) for a few epochs through
   ``training.fit`` on an FSDKaggle2018-sized synthetic bank (7,105 training + 928 validation
   clips, lengths spread over 0.3-30 s): step time, epoch time, checkpoint time, peak memory
   (torch.cuda.max_memory_allocated) against the memory model of workflow_lib/gpu_memory.py;
5. the whole paper run's GPU-hours estimated from the schedule's FLOP count and (3)'s rates;
6. a network job's start-up in fresh processes (benchmarks/gpu_startup.py: import, CUDA
   context, first training step with cudnn.benchmark on and off);
7. the demo DAG end to end with ``compute.jobs_per_gpu`` (``--jobs-per-gpu``, default 2) and
   ``--resources gpu=<slots>`` (Snakemake's gpu resource counts slots, README "On a GPU
   workstation"): wall time, and the device each network job's log names (every one must be a
   GPU).

The JSON is rewritten after every step, so a lease that ends mid-run keeps the figures so far;
``--steps`` runs a subset (with the steps it needs).

Without a GPU it runs the same steps in a reduced form on the CPU (tiny batches, a tiny fold,
the demo DAG with one preset and two epochs), and says so: no figure of that form is a GPU
figure. tests/test_gpu_check.py runs the CPU form with ``--dag dry-run``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))  # training_throughput beside this script

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from training_throughput import measure_preset, paper_settings  # noqa: E402

from workflow_lib.data import ClipBank  # noqa: E402
from workflow_lib.gpu_memory import (  # noqa: E402
    FSDKAGGLE2018,
    HOP_OF_VERSION,
    LENGTH_ASSUMPTIONS,
    SAMPLE_RATE,
    NetShape,
    dropout_mask_bytes,
    frames_of_seconds,
    fsdkaggle2018_seconds,
    training_job_bytes,
)
from workflow_lib.io import write_json  # noqa: E402
from workflow_lib.machine import cpu_model, load_average  # noqa: E402
from workflow_lib.model import build_model  # noqa: E402
from workflow_lib.training import CheckpointPolicy, FitSettings, RunOptions, evaluate, fit  # noqa: E402

N_CLASSES = 41
FOLD_PRESET = "vgg_gap_spec1_2"  # the widest net at the largest batch: the most memory
NETWORK_RULES = ("train", "self_verify", "predict")  # log folders of the jobs that run networks


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def environment(device: torch.device) -> dict:
    """Versions, the device and what it supports."""
    gpu = device.type == "cuda"
    return {
        "gpu_found": gpu,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(device) if gpu else f"cpu: {cpu_model()}",
        "device_memory_gib": torch.cuda.get_device_properties(device).total_memory / 2**30 if gpu else None,
        "bf16_supported": torch.cuda.is_bf16_supported() if gpu else None,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "load_average": load_average(),
    }


def matmul_rate(device: torch.device, size: int, repeats: int) -> dict:
    """Measured dense matmul GFLOP/s: bf16 on CUDA (the autocast dtype), float32 on the CPU."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    a @ b  # warm-up (cuBLAS handles, kernel choice)
    synchronize(device)
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize(device)
    seconds = time.perf_counter() - started
    return {"dtype": str(dtype), "size": size, "gflops": 2 * size**3 * repeats / seconds / 1e9}


def preset_throughput(device: torch.device, sizes: dict, matmul_gflops: float, compile_: bool) -> list[dict]:
    """The three paper presets through training_throughput.measure_preset."""
    settings = paper_settings()
    args = SimpleNamespace(compile=compile_, **sizes["throughput"])
    rows = []
    for preset in settings["method"]["presets"]:
        row = measure_preset(preset, settings, device, args)
        row["train_share_of_matmul"] = row["train_gflops"] / matmul_gflops
        row["infer_share_of_matmul"] = row["infer_gflops"] / matmul_gflops
        rows.append(row)
    return rows


def synthetic_bank(n_frames: np.ndarray, frames: int, device: torch.device, seed: int) -> ClipBank:
    """Random spectrograms of the given lengths (cut at the length fix), built on the device."""
    lengths = torch.as_tensor(np.minimum(n_frames, frames), dtype=torch.int64)
    offsets = torch.cumsum(lengths, 0) - lengths
    generator = torch.Generator(device=device).manual_seed(seed)
    data = torch.randn(int(lengths.sum()), 128, generator=generator, device=device)
    return ClipBank(data, offsets.to(device), lengths.to(device), frames)


#: The GPU form's sizes, and the CPU form's (tiny: it proves the script runs, not a speed).
SIZES = {
    "gpu": {
        "matmul": {"size": 8192, "repeats": 50},
        "throughput": {"steps": 20, "warmup": 5, "batch": None, "infer_clips": 256},
        "fold": {"clips": FSDKAGGLE2018["train"], "valid": FSDKAGGLE2018["verified"] // 4, "epochs": 3},
        "fold_net": None,  # the paper preset's own
    },
    "cpu": {
        "matmul": {"size": 1024, "repeats": 8},
        "throughput": {"steps": 1, "warmup": 1, "batch": 2, "infer_clips": 1},
        "fold": {"clips": 32, "valid": 8, "epochs": 2},
        "fold_net": {"width": 4, "batch_size": 8, "excerpt_frames": 192, "frames": 256},
    },
}


def fold_net(sizes: dict) -> tuple[NetShape, float]:
    """The fold's network (the paper preset, or the CPU form's tiny one) and its mixup alpha."""
    job = paper_settings()["method"]["nets"][FOLD_PRESET]
    settings = paper_settings()
    shape = {
        "width": job["width"],
        "batch_size": job["batch_size"],
        "excerpt_frames": settings["method"]["excerpt_frames"],
        "frames": settings["method"]["spectrogram_frames"],
    }
    shape.update(sizes["fold_net"] or {})
    return NetShape(n_classes=N_CLASSES, eval_batch_size=32, **shape), job["mixup_alpha"]


def fold_frames(sizes: dict) -> tuple[np.ndarray, np.ndarray]:
    """Frame counts of the fold's training and validation clips: FSDKaggle2018-like lengths
    (evenly over 0.3-30 s, spectrogram version 1), every 4th clip held out."""
    seconds = fsdkaggle2018_seconds(sizes["fold"]["clips"], LENGTH_ASSUMPTIONS[0])
    n_frames = frames_of_seconds(seconds, SAMPLE_RATE, HOP_OF_VERSION[1])
    held_out = np.arange(len(n_frames)) % FSDKAGGLE2018["folds"] == 0
    return n_frames[~held_out], n_frames[held_out][: sizes["fold"]["valid"]]


def fold_run(device: torch.device, sizes: dict, workdir: Path) -> dict:
    """A few epochs of one fold through training.fit: epoch, step, validation and checkpoint
    time, and the peak memory against the memory model."""
    net, alpha = fold_net(sizes)
    net = NetShape(**{**net.__dict__, "mask_bytes": dropout_mask_bytes(device, net.amp_bytes)})
    train_frames, valid_frames = fold_frames(sizes)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    train_bank = synthetic_bank(train_frames, net.frames, device, 1)
    valid_bank = synthetic_bank(valid_frames, net.frames, device, 2)
    rng = np.random.default_rng(0)
    train_targets, valid_targets = (rng.integers(0, N_CLASSES, len(f)) for f in (train_frames, valid_frames))
    epochs = sizes["fold"]["epochs"]
    settings = FitSettings(
        epochs, 1e-3, epochs, net.batch_size, net.excerpt_frames, alpha, 0, net.eval_batch_size
    )
    torch.manual_seed(0)
    model = build_model(net.width, N_CLASSES)
    stamps: list[float] = []
    state = fit(
        model,
        train_bank,
        train_targets,
        valid_bank,
        valid_targets,
        settings,
        workdir / "resume.pt",
        "gpu_check",
        on_epoch=lambda history: stamps.append(time.perf_counter()),
        options=RunOptions(CheckpointPolicy(epochs=1, minutes=None)),
    )
    peak = torch.cuda.max_memory_allocated(device) - before if device.type == "cuda" else None
    synchronize(device)
    started = time.perf_counter()
    evaluate(model, valid_bank, valid_targets, net.eval_batch_size, True)
    synchronize(device)
    valid_s = time.perf_counter() - started
    epoch_s = [row["seconds"] for row in state.history]
    checkpoint_s = [b - a - s for a, b, s in zip(stamps, stamps[1:], epoch_s[1:])]
    steps = len(train_frames) // net.batch_size
    later = float(np.median(epoch_s[1:] if len(epoch_s) > 1 else epoch_s))
    modelled = training_job_bytes(net, train_frames, valid_frames).allocated
    return {
        "preset": FOLD_PRESET if sizes["fold_net"] is None else f"tiny (width {net.width})",
        "net": net.__dict__,
        "train_clips": len(train_frames),
        "valid_clips": len(valid_frames),
        "epochs": epochs,
        "epoch_s": epoch_s,
        "validation_s": valid_s,
        "step_s": max(later - valid_s, 0.0) / max(steps, 1),
        "checkpoint_s": checkpoint_s,
        "peak_allocated_bytes": peak,
        "modelled_bytes": modelled,
        "peak_over_model": peak / modelled if peak else None,
        "final_train_loss": state.history[-1]["train_loss"],
    }


def startup(device: torch.device) -> list[dict]:
    """A network job's start-up in fresh processes (benchmarks/gpu_startup.py), cudnn.benchmark
    on (what the training path does on CUDA) and off."""
    rows = []
    for setting in ("on", "off") if device.type == "cuda" else ("on",):
        command = [sys.executable, str(REPO / "benchmarks" / "gpu_startup.py"), "--cudnn-benchmark", setting]
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            rows.append({"cudnn_benchmark": setting == "on", "failed": done.stderr[-2000:]})
        else:
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return rows


def paper_run_flops(row: dict, method: dict) -> dict:
    """One preset's FLOPs in the paper's schedule (4 folds): initial training and fine-tuning
    (training excerpts, and whole-clip validation after every epoch), self-verification
    (K excerpts of every training clip per iteration: judged and reference clips).

    Fine-tuning trains on the fold's verified clips plus at most max_per_class trusted clips
    per class (the cap as the upper estimate of what the policy adds).
    """
    d, folds = FSDKAGGLE2018, FSDKAGGLE2018["folds"]
    sv, ft, initial = method["self_verification"], method["fine_tuning"], method["initial_training"]
    train_clips = d["train"] * (folds - 1) / folds
    valid_clips = d["verified"] / folds
    trusted = (sv["max_per_class"] or d["train"]) * N_CLASSES
    ft_clips = min(d["verified"] * (folds - 1) / folds + trusted, train_clips)
    epochs = initial["epochs"] + sv["iterations"] * ft["epochs"]
    train_excerpts = folds * (initial["epochs"] * train_clips + sv["iterations"] * ft["epochs"] * ft_clips)
    forward_excerpt = row["infer_gflop"] * 1e9 * method["excerpt_frames"] / method["spectrogram_frames"]
    return {
        "train": train_excerpts * row["train_gflop"] * 1e9,
        "inference": folds * epochs * valid_clips * row["infer_gflop"] * 1e9
        + sv["iterations"] * sv["excerpts"] * d["train"] * forward_excerpt,
    }


def paper_run_estimate(rows: list[dict]) -> dict:
    """The whole paper run's FLOPs and device-hours at the measured rates of each preset."""
    method = paper_settings()["method"]
    per_preset, total_flop, total_h = {}, 0.0, 0.0
    for row in rows:
        flops = paper_run_flops(row, method)
        hours = (flops["train"] / row["train_gflops"] + flops["inference"] / row["infer_gflops"]) / 1e9 / 3600
        per_preset[row["preset"]] = {"eflop": sum(flops.values()) / 1e18, "hours": hours}
        total_flop += sum(flops.values())
        total_h += hours
    return {"eflop": total_flop / 1e18, "device_hours": total_h, "per_preset": per_preset}


def network_job_devices(results: Path) -> dict[str, str]:
    """{log file: the device its job names} for every job that runs a network."""
    devices = {}
    for rule in NETWORK_RULES:
        for log in sorted((results / "logs" / rule).rglob("*.log")):
            named = [
                line.split("job uses device ", 1)[1].split()[0]
                for line in log.read_text().splitlines()
                if "job uses device " in line
            ]
            devices[str(log.relative_to(results))] = named[0] if named else "not logged"
    return devices


def dag_overrides(gpu: bool, jobs_per_gpu: int) -> dict:
    """compute.jobs_per_gpu (and the device); the CPU form: one preset, two epochs."""
    overrides: dict = {"compute": {"jobs_per_gpu": jobs_per_gpu, "device": "cuda" if gpu else "cpu"}}
    if not gpu:
        overrides["method"] = {"presets": ["vgg_gap_spec1_1"]}
        overrides["run_presets"] = {
            "demo": {
                "method": {
                    "initial_training": {"epochs": 2, "constant_epochs": 1},
                    "self_verification": {"iterations": 1},
                    "fine_tuning": {"epochs": 1, "constant_epochs": 1},
                }
            }
        }
    return overrides


def demo_dag(mode: str, gpu: bool, workdir: Path, timeout_s: float, jobs_per_gpu: int = 2) -> dict:
    """The demo workflow with ``jobs_per_gpu`` slots on one GPU (--resources gpu=<slots>: Snakemake's
    gpu resource counts slots)."""
    if mode == "skip":
        return {"status": "skipped", "reason": "--dag skip"}
    workdir.mkdir(parents=True, exist_ok=True)
    overrides = workdir / "gpu_check_overrides.yaml"
    overrides.write_text(yaml.safe_dump(dag_overrides(gpu, jobs_per_gpu)))
    bin_dir = Path(sys.executable).parent
    # `python -m snakemake`, not the console script beside the interpreter: on a GPU image whose
    # packages were installed with `pip --target`, that script is not next to python.
    command = [
        sys.executable,
        "-m",
        "snakemake",
        "--cores",
        str(max(os.cpu_count() or 1, jobs_per_gpu)),
        "--resources",
        f"gpu={jobs_per_gpu}",
    ]
    command += [
        "--snakefile",
        str(REPO / "Snakefile"),
        "--configfile",
        str(REPO / "config.yaml"),
        str(overrides),
    ]
    command += ["--directory", str(workdir)] + (["-n"] if mode == "dry-run" else [])
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    started = time.perf_counter()
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        devices = network_job_devices(workdir / "results")
        return {
            "status": "timed out",
            "timeout_s": timeout_s,
            "jobs_per_gpu": jobs_per_gpu,
            "command": " ".join(command),
            "network_jobs_started": len(devices),
            "devices": devices,
        }
    wall = time.perf_counter() - started
    result = {"status": mode, "rc": done.returncode, "wall_s": wall, "command": " ".join(command)}
    result["jobs_per_gpu"] = jobs_per_gpu
    if done.returncode != 0:
        return result | {"status": "failed", "output_tail": (done.stdout + done.stderr)[-3000:]}
    if mode == "dry-run":
        totals = [line.split()[-1] for line in done.stdout.splitlines() if line.startswith("total")]
        return result | {"jobs": int(totals[0]) if totals else None}
    devices = network_job_devices(workdir / "results")
    wanted = "cuda" if gpu else "cpu"
    return result | {
        "network_jobs": len(devices),
        "devices": devices,
        "all_on_expected_device": bool(devices) and all(d.startswith(wanted) for d in devices.values()),
    }


def print_throughput(report: dict) -> None:
    mm = report["matmul"]
    print(f"matmul {mm['size']}^2 {mm['dtype']}: {mm['gflops']:.0f} GFLOP/s (the yardstick below)")
    print(f"{'preset':<16} {'batch':>5} {'excerpts/s':>10} {'GFLOP/s':>9} {'of matmul':>9} {'clips/s':>8}")
    for r in report["throughput"]:
        print(
            f"{r['preset']:<16} {r['batch']:>5} {r['excerpts_per_s']:>10.1f} {r['train_gflops']:>9.0f} "
            f"{100 * r['train_share_of_matmul']:>8.1f}% {r['clips_per_s']:>8.1f}"
        )


def print_fold(f: dict) -> None:
    peak = f"{f['peak_allocated_bytes'] / 2**30:.2f} GiB" if f["peak_allocated_bytes"] else "n/a (CPU)"
    print(
        f"fold ({f['preset']}, {f['train_clips']} + {f['valid_clips']} clips, {f['epochs']} epochs): epochs "
        f"{', '.join(f'{s:.1f}' for s in f['epoch_s'])} s, step {1000 * f['step_s']:.1f} ms, validation "
        f"{f['validation_s']:.1f} s, checkpoint {', '.join(f'{s:.2f}' for s in f['checkpoint_s'])} s; "
        f"peak {peak}, modelled {f['modelled_bytes'] / 2**30:.2f} GiB"
    )


def print_startup(rows: list[dict]) -> None:
    for r in rows:
        if "failed" in r:
            print(f"start-up (cudnn.benchmark {r['cudnn_benchmark']}): FAILED {r['failed'][-300:]}")
            continue
        print(
            f"start-up of a demo job (cudnn.benchmark {r['cudnn_benchmark']}): "
            f"import {r['import_torch_s']:.1f} s, context {r['context_s']:.1f} s, "
            f"first step {r['first_step_s']:.2f} s (next {1000 * r['next_step_s']:.1f} ms), "
            f"first eval {r['first_eval_batch_s']:.2f} s, "
            f"other-size eval {r['other_size_eval_batch_s']:.2f} s"
        )


def print_dag(dag: dict) -> None:
    slots = f"jobs_per_gpu {dag['jobs_per_gpu']}" if "jobs_per_gpu" in dag else "demo DAG"
    print(f"demo DAG ({slots}): {dag['status']}" + (f", {dag['wall_s']:.0f} s" if "wall_s" in dag else ""))
    if "devices" in dag:
        on_gpu = sum(d.startswith("cuda") for d in dag["devices"].values())
        print(f"  {len(dag['devices'])} network jobs logged, {on_gpu} of them on a CUDA device")


def print_report(report: dict) -> None:
    """The JSON's figures as a table (the steps that ran)."""
    env = report["environment"]
    print(f"device: {env['device']} (torch {env['torch']}, CUDA {env['cuda']}, bf16 {env['bf16_supported']})")
    if not env["gpu_found"]:
        print("NO GPU FOUND: the reduced CPU form ran (tiny sizes); none of these figures is a GPU figure.")
    if "throughput" in report:
        print_throughput(report)
    if "fold" in report:
        print_fold(report["fold"])
    if "paper_run" in report:
        e = report["paper_run"]
        hours = e["device_hours"]
        print(f"paper run: {e['eflop']:.2f} EFLOP -> {hours:.1f} h on this device at the rates above")
    if "startup" in report:
        print_startup(report["startup"])
    if "demo_dag" in report:
        print_dag(report["demo_dag"])


#: The steps in order, and the steps each needs before it.
STEPS = {
    "matmul": (),
    "throughput": ("matmul",),
    "fold": (),
    "paper_run": ("throughput",),
    "startup": (),
    "demo_dag": (),
}


def chosen_steps(names: str) -> list[str]:
    """The steps of ``--steps`` (comma-separated), in run order, with what each needs."""
    wanted = {name.strip() for name in names.split(",") if name.strip()}
    unknown = wanted - set(STEPS)
    if unknown:
        raise SystemExit(f"--steps: unknown step(s) {sorted(unknown)}; the steps are {list(STEPS)}")
    for name in list(wanted):
        wanted |= set(STEPS[name]) | {n for need in STEPS[name] for n in STEPS[need]}
    return [name for name in STEPS if name in wanted]


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"), help="the JSON to write")
    parser.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated subset of {list(STEPS)}")
    parser.add_argument("--dag", choices=["run", "dry-run", "skip"], default="run", help="the demo DAG step")
    parser.add_argument("--dag-timeout", type=float, default=400.0, help="seconds for the demo DAG")
    parser.add_argument("--jobs-per-gpu", type=int, default=2, help="compute.jobs_per_gpu of the demo DAG")
    parser.add_argument("--workdir", type=Path, help="where the fold and the demo run (default: a temp dir)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the throughput nets")
    args = parser.parse_args()
    if args.jobs_per_gpu < 1:
        parser.error("--jobs-per-gpu must be at least 1")
    args.steps = chosen_steps(args.steps)
    return args


def main() -> int:
    args = parse_arguments()
    gpu = torch.cuda.is_available()
    device = torch.device("cuda:0" if gpu else "cpu")
    sizes = SIZES["gpu" if gpu else "cpu"]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        report = {
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "environment": environment(device),
        }
        steps = {
            "matmul": lambda: matmul_rate(device, **sizes["matmul"]),
            "throughput": lambda: preset_throughput(device, sizes, report["matmul"]["gflops"], args.compile),
            "fold": lambda: fold_run(device, sizes, workdir),
            "paper_run": lambda: paper_run_estimate(report["throughput"]),
            "startup": lambda: startup(device),
            "demo_dag": lambda: demo_dag(
                args.dag, gpu, workdir / "demo", args.dag_timeout, args.jobs_per_gpu
            ),
        }
        finished: list[str] = []
        for name in args.steps:
            report[name] = steps[name]()
            finished.append(name)
            # Written after every step: a lease that ends mid-run still leaves the figures so far.
            write_json(report | {"finished_steps": finished}, args.out)
    report["total_s"] = time.perf_counter() - started
    write_json(report | {"finished_steps": finished}, args.out)
    print_report(report)
    print(f"total {report['total_s']:.0f} s; JSON: {args.out}")
    return 0 if report.get("demo_dag", {}).get("status") not in ("failed", "timed out") else 1


if __name__ == "__main__":
    sys.exit(main())
