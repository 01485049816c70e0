"""Training and whole-clip inference throughput of the paper's three presets.

    python benchmarks/training_throughput.py [--device auto|cpu|cuda] [--steps N] [--warmup N]
                                             [--batch N] [--infer-clips N] [--threads N]
                                             [--peak-gflops G] [--compile] [--tta-shifts N]

Settings come from config.yaml resolved with ``run_preset=paper`` (docs/method.md "Network" table:
widths 48/64/64, batches 100/100/50, mixup alpha 0.2/0.3/0.3; 384-frame excerpts of 3,000-frame
spectrograms; 41 classes as in FSDKaggle2018). For each preset it measures

* training: excerpts/s through ``training._run_epoch`` itself, the loop the workflow trains
  with (``ClipBank.excerpts`` + ``random_starts``, mixup with the reversed batch, soft-target
  cross-entropy, backward, Adam step; bf16 autocast on CUDA when compute.amp is on), on random
  spectrograms; a few warm-up steps first, then ``--steps`` timed steps;
* inference: clips/s of ``training.predict_whole`` on whole 3,000-frame clips (the validation
  and test path), batch compute.eval_batch_size; with ``--tta-shifts N`` also with test-time
  augmentation (``method.tta_shifts``), printed as a multiple of the plain inference's time.

The model is prepared as a training job prepares it (``training.prepare_model`` and
``make_optimizer``: on CUDA channels_last, cudnn.benchmark, fused Adam; ``--compile`` adds
torch.compile), and the step's random draws come from the job's ``DeviceSampler``.

FLOPs are counted, not assumed: torch's FLOP counter (``torch.utils.flop_counter``) over one
forward + backward of a 2-excerpt batch (per excerpt: half of it) and one forward of a whole
clip. It counts convolutions and matrix products (2 FLOPs per multiply-add), i.e. all but the
element-wise work. GFLOP/s = counted FLOPs x measured rate. The share of peak divides that by
the machine's peak: on a CPU estimated as threads x clock (``cpu MHz`` of /proc/cpuinfo) x
FP32 FLOPs per cycle and core from the ISA flags (how it was derived is printed); on CUDA the
dense bf16 peak of known GPUs; ``--peak-gflops`` overrides either.

On a CPU the paper's batches take minutes per step (about 30 GFLOP per excerpt for nf 64), so
the CPU defaults are a batch of 16, 2 timed steps and 4 inference clips; the output says so.
Per-example throughput can grow with the batch on a CPU, so CPU figures at batch 16 may
understate the paper's batches somewhat. The GPU defaults keep the paper's batches.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from workflow_lib.config import resolve_settings  # noqa: E402
from workflow_lib.data import ClipBank  # noqa: E402
from workflow_lib.job_settings import fit_settings  # noqa: E402
from workflow_lib.machine import cpu_model, cpuinfo, load_average  # noqa: E402
from workflow_lib.model import build_model, count_parameters  # noqa: E402
from workflow_lib.training import (  # noqa: E402
    DeviceFeatures,
    DeviceSampler,
    FitSettings,
    RunOptions,
    _run_epoch,
    make_optimizer,
    predict_whole,
    prepare_model,
)

N_CLASSES = 41  # FSDKaggle2018 (docs/method.md "Data contract")
N_DISTINCT = 16  # distinct random clips; the bank's clips point at them in turn


def fp32_flops_per_cycle(info: dict[str, str]) -> tuple[int, str]:
    """FP32 FLOPs per cycle and core from the ISA flags, and why.

    FMA = 2 FLOPs per lane; two FMA pipes per core on every x86 core with AVX2 since Haswell
    and Zen 1. AVX-512: 2 x 16 lanes on Intel server cores and AMD Zen 5 (family 26); Zen 4
    (family 25) executes 512-bit operations on its two 256-bit pipes, so it stays at 32.
    """
    flags = set(info.get("flags", "").split())
    vendor, family = info.get("vendor_id", ""), info.get("cpu family", "")
    if "avx512f" in flags and not (vendor == "AuthenticAMD" and family != "26"):
        return 64, "AVX-512 + FMA: 2 pipes x 16 FP32 lanes x 2 (FMA)"
    if "avx512f" in flags:
        return 32, (f"AVX-512 on AMD family {family} (Zen 4: two 256-bit pipes): 2 pipes x 8 lanes x 2 (FMA)")
    if "avx2" in flags and "fma" in flags:
        return 32, "AVX2 + FMA: 2 pipes x 8 FP32 lanes x 2 (FMA)"
    if "avx" in flags:
        return 16, "AVX without FMA: 8 lanes x (1 add + 1 mul)"
    return 8, "SSE: 4 lanes x (1 add + 1 mul)"


# Dense bf16 tensor-core peaks (TFLOP/s, vendor data sheets, without sparsity).
GPU_BF16_PEAK_TFLOPS = {
    "H200": 989.0,
    "H100 SXM": 989.0,
    "H100 80GB HBM3": 989.0,
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "A100": 312.0,
    "L40S": 362.0,
    "A10G": 70.0,
    "L4": 121.0,
    "RTX 4090": 165.0,
}


def peak_gflops(device: torch.device, override: float | None) -> tuple[float | None, str]:
    """The machine's peak in GFLOP/s for this run, and how it was derived."""
    if override:
        return override, f"--peak-gflops {override:g} (given)"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, tflops in GPU_BF16_PEAK_TFLOPS.items():
            if key in name:
                return tflops * 1000, f"{name}: dense bf16 peak {tflops:g} TFLOP/s (data sheet)"
        return None, f"{name}: peak unknown, pass --peak-gflops"
    info = cpuinfo()
    try:
        mhz = float(info["cpu MHz"])
    except (KeyError, ValueError):
        return None, "no 'cpu MHz' in /proc/cpuinfo, pass --peak-gflops"
    per_cycle, why = fp32_flops_per_cycle(info)
    threads = torch.get_num_threads()
    peak = threads * mhz / 1000 * per_cycle
    return peak, (
        f"{threads} core(s) (torch threads) x {mhz / 1000:.3f} GHz (cpu MHz) x "
        f"{per_cycle} FP32 FLOP/cycle ({why}) = {peak:.0f} GFLOP/s"
    )


def count_flops(
    model: torch.nn.Module,
    excerpt: int,
    frames: int,
    device: torch.device,
) -> tuple[float, float]:
    """(training FLOPs per excerpt: forward + backward; inference FLOPs per whole clip)."""
    from torch.utils.flop_counter import FlopCounterMode

    probe = copy.deepcopy(model).to(device).train()  # batch-norm statistics of the real one stay
    with FlopCounterMode(display=False) as counter:
        probe(torch.randn(2, 1, 128, excerpt, device=device)).logsumexp(1).sum().backward()
    train = counter.get_total_flops() / 2
    probe.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        probe(torch.randn(1, 1, 128, frames, device=device))
    return train, float(counter.get_total_flops())


def paper_settings() -> dict:
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["run_preset"] = "paper"
    return resolve_settings(config)


def random_bank(n_clips: int, frames: int, device: torch.device, seed: int) -> ClipBank:
    """``n_clips`` clips of ``frames`` frames backed by N_DISTINCT random spectrograms.

    Every clip is a real ClipBank entry (own offset and length); they share storage so that a
    bank of thousands of 3,000-frame clips does not need gigabytes of memory.
    """
    generator = torch.Generator().manual_seed(seed)
    data = torch.randn(N_DISTINCT * frames, 128, generator=generator).to(device)
    offsets = (torch.arange(n_clips) % N_DISTINCT) * frames
    lengths = torch.full((n_clips,), frames, dtype=torch.int64)
    return ClipBank(data, offsets.to(device), lengths.to(device), frames)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_training(
    model, forward, fit: FitSettings, frames: int, device: torch.device, args
) -> tuple[float, float]:
    """Seconds of ``args.steps`` steps of ``training._run_epoch`` (after ``args.warmup`` warm-up
    steps), and the timed steps' loss: over a bank of batch * steps clips one epoch is exactly
    that many steps."""
    features = DeviceFeatures.for_device(device)
    optimizer = make_optimizer(model, fit.lr, device, features)
    sampler = DeviceSampler(0, device)
    rng = np.random.default_rng(0)
    timed_bank = random_bank(fit.batch_size * args.steps, frames, device, 2)
    targets = torch.from_numpy(rng.integers(0, N_CLASSES, len(timed_bank))).to(device)
    if args.warmup:
        warm_bank = random_bank(fit.batch_size * args.warmup, frames, device, 1)
        warm_targets = torch.from_numpy(rng.integers(0, N_CLASSES, len(warm_bank))).to(device)
        _run_epoch(forward, optimizer, warm_bank, warm_targets, fit, sampler, device, N_CLASSES, features)
    synchronize(device)
    started = time.perf_counter()
    loss, _ = _run_epoch(forward, optimizer, timed_bank, targets, fit, sampler, device, N_CLASSES, features)
    synchronize(device)
    return time.perf_counter() - started, loss


def time_inference(forward, fit: FitSettings, frames: int, device: torch.device, args, shifts: int) -> float:
    """Seconds of ``training.predict_whole`` over ``args.infer_clips`` whole clips, as
    validation and prediction run it; ``shifts`` > 0: with test-time augmentation (that many
    time-shifted copies averaged, the predict job's ``method.tta_shifts``). One warm-up batch first."""
    eval_batch = min(fit.eval_batch_size, args.infer_clips)
    predict_whole(forward, random_bank(eval_batch, frames, device, 3), eval_batch, fit.amp, shifts=shifts)
    bank = random_bank(args.infer_clips, frames, device, 4)
    synchronize(device)
    started = time.perf_counter()
    probs = predict_whole(forward, bank, eval_batch, fit.amp, shifts=shifts)
    synchronize(device)
    assert probs.shape == (args.infer_clips, N_CLASSES)
    return time.perf_counter() - started


def measure_preset(preset: str, settings: dict, device: torch.device, args) -> dict:
    """One preset's training and inference rates, FLOP counts and (CUDA) peak memory."""
    job = fit_settings(settings, preset, 0)
    net, frames = job["net"], job["frames"]
    fit = FitSettings(**{**job["fit"], **({"batch_size": args.batch} if args.batch else {})})
    torch.manual_seed(0)
    model = build_model(net["width"], N_CLASSES, tuple(net["dropout"]))
    train_flops, infer_flops = count_flops(model, fit.excerpt_frames, frames, torch.device("cpu"))
    forward = prepare_model(model, device, RunOptions(compile=args.compile))
    train_s, loss = time_training(model, forward, fit, frames, device, args)
    if not np.isfinite(loss):
        raise RuntimeError(f"{preset}: training loss is {loss}")
    infer_s = time_inference(forward, fit, frames, device, args, shifts=0)
    shifts = getattr(args, "tta_shifts", 0)  # gpu_check.py's arguments have none
    tta_s = time_inference(forward, fit, frames, device, args, shifts) if shifts else None
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    return {
        "preset": preset,
        "width": net["width"],
        "params": count_parameters(model),
        "batch": fit.batch_size,
        "paper_batch": job["fit"]["batch_size"],
        "mixup": fit.mixup_alpha,
        "excerpt": fit.excerpt_frames,
        "steps": args.steps,
        "train_s": train_s,
        "excerpts_per_s": fit.batch_size * args.steps / train_s,
        "infer_clips": args.infer_clips,
        "eval_batch": min(fit.eval_batch_size, args.infer_clips),
        "infer_s": infer_s,
        "clips_per_s": args.infer_clips / infer_s,
        "tta_ratio": tta_s / infer_s if tta_s else None,
        "peak_gib": peak,
        "train_gflop": train_flops / 1e9,
        "infer_gflop": infer_flops / 1e9,
        "train_gflops": train_flops * fit.batch_size * args.steps / train_s / 1e9,
        "infer_gflops": infer_flops * args.infer_clips / infer_s / 1e9,
    }


def parse_arguments() -> argparse.Namespace:
    """The command line, with the device-dependent defaults filled in (the device in ``args.device``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument(
        "--steps", type=int, help="timed training steps per preset (default: 20 on CUDA, 2 on CPU)"
    )
    parser.add_argument("--warmup", type=int, help="warm-up steps (default: 3 on CUDA, 1 on CPU)")
    parser.add_argument(
        "--batch", type=int, help="training batch for every preset (default: the paper's on CUDA, 16 on CPU)"
    )
    parser.add_argument(
        "--infer-clips", type=int, help="whole clips to predict (default: 256 on CUDA, 4 on CPU)"
    )
    parser.add_argument(
        "--tta-shifts",
        type=int,
        default=0,
        help="also time inference with test-time augmentation (method.tta_shifts) and print its "
        "time as a multiple of the plain inference's (default 0: not measured)",
    )
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's choice)")
    parser.add_argument("--presets", nargs="+", help="subset of the paper presets")
    parser.add_argument(
        "--peak-gflops",
        type=float,
        help="the machine's peak in GFLOP/s (default: estimated from /proc/cpuinfo, or the GPU's data sheet)",
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (compute.compile)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA device")
    if args.tta_shifts < 0:
        parser.error("--tta-shifts must be 0 or more")
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    args.device = torch.device("cuda:0" if use_cuda else "cpu")
    gpu = use_cuda
    args.steps = args.steps or (20 if gpu else 2)
    args.warmup = args.warmup if args.warmup is not None else (3 if gpu else 1)
    args.batch = args.batch or (None if gpu else 16)
    args.infer_clips = args.infer_clips or (256 if gpu else 4)
    return args


def print_setup(args: argparse.Namespace, settings: dict) -> None:
    """What runs where, the command and the load, before anything is timed."""
    device = args.device
    print(f"torch {torch.__version__}, python {platform.python_version()}")
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        print(f"device: {device} = {name}, amp={settings['compute']['amp']} (bf16 autocast)")
    else:
        print(
            f"device: cpu = {cpu_model()}, {torch.get_num_threads()} torch thread(s), "
            f"amp off (CPU runs full precision)"
        )
    print(
        f"settings: config.yaml, run_preset=paper; {N_CLASSES} classes, "
        f"{settings['method']['excerpt_frames']}-frame excerpts, "
        f"{settings['method']['spectrogram_frames']}-frame whole clips; "
        f"{args.warmup} warm-up + {args.steps} timed training step(s) per preset"
    )
    if args.batch:
        print(
            f"NOTE: training batch {args.batch} for every preset instead of the paper's "
            f"(100/100/50) to keep the run short. Per-example throughput grows with the "
            f"batch, so these training figures understate the paper's batches; pass "
            f"--batch 100 (minutes per step on a CPU) to measure them."
        )
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"load average at start: {load_average()} on {os.cpu_count()} CPU(s)")


def print_rates(rows: list[dict], gpu: bool) -> None:
    """The rate table: per preset training excerpts/s, s/step, inference clips/s (CUDA: peak memory)."""
    header = (
        f"{'preset':<16} {'nf':>3} {'params':>11} {'batch':>5} {'mixup':>5} "
        f"{'train excerpts/s':>16} {'s/step':>7} {'infer clips/s':>13} {'eval batch':>10}"
    )
    print(header + (f" {'peak GiB':>8}" if gpu else ""))
    print("-" * (len(header) + (9 if gpu else 0)))
    for r in rows:
        batch = f"{r['batch']}" if r["batch"] == r["paper_batch"] else f"{r['batch']}*"
        line = (
            f"{r['preset']:<16} {r['width']:>3} {r['params']:>11,} {batch:>5} "
            f"{r['mixup']:>5} {r['excerpts_per_s']:>16.2f} {r['train_s'] / r['steps']:>7.2f} "
            f"{r['clips_per_s']:>13.2f} {r['eval_batch']:>10}"
        )
        print(line + (f" {r['peak_gib']:>8.2f}" if gpu else ""))
    if any(r["batch"] != r["paper_batch"] for r in rows):
        print("* not the paper's batch (see NOTE)")


def print_flops(rows: list[dict], peak: float | None) -> None:
    """GFLOP per example, GFLOP/s and the share of the machine's peak: an impossible rate shows."""
    share = (lambda g: f"{100 * g / peak:5.1f} %") if peak else (lambda g: "  n/a")
    print(
        f"{'preset':<16} {'GFLOP/excerpt':>13} {'train GFLOP/s':>13} {'of peak':>8} "
        f"{'GFLOP/clip':>10} {'infer GFLOP/s':>13} {'of peak':>8}"
    )
    for r in rows:
        print(
            f"{r['preset']:<16} {r['train_gflop']:>13.2f} {r['train_gflops']:>13.1f} "
            f"{share(r['train_gflops']):>8} {r['infer_gflop']:>10.2f} "
            f"{r['infer_gflops']:>13.1f} {share(r['infer_gflops']):>8}"
        )
    print(
        "(FLOPs: torch.utils.flop_counter, convolutions and matrix products, forward + "
        "backward for training; the peak as derived above)"
    )


def print_tta(rows: list[dict], shifts: int) -> None:
    """Test-time augmentation's inference time against the plain inference's, same process."""
    for r in rows:
        print(
            f"{r['preset']}: inference with tta_shifts {shifts} took {r['tta_ratio']:.2f} x the plain "
            f"inference's time (its forward passes: {shifts + 1} x)"
        )


def print_schedule(rows: list[dict]) -> None:
    """What the rates mean for the paper's schedule (docs/method.md: 500 epochs over ~7,100
    training clips per fold, i.e. 3/4 of 9,473; validation on ~930 whole clips per epoch)."""
    clips_per_fold, valid_per_fold = round(9473 * 3 / 4), round(3710 / 4)
    for r in rows:
        epoch_s = clips_per_fold / r["excerpts_per_s"] + valid_per_fold / r["clips_per_s"]
        print(
            f"{r['preset']}: one epoch of one fold (~{clips_per_fold} clips + {valid_per_fold} "
            f"validation clips) ~ {epoch_s / 60:.1f} min; 500 epochs ~ "
            f"{500 * epoch_s / 3600:.0f} h on this device"
        )


def main() -> int:
    args = parse_arguments()
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = paper_settings()
    presets = args.presets or settings["method"]["presets"]
    print_setup(args, settings)
    peak, peak_note = peak_gflops(args.device, args.peak_gflops)
    print(f"peak: {peak_note}")
    print()
    rows = []
    for preset in presets:
        rows.append(measure_preset(preset, settings, args.device, args))
        print(
            f"  {preset}: {rows[-1]['excerpts_per_s']:.2f} excerpts/s, {rows[-1]['clips_per_s']:.2f} clips/s"
        )
    print()
    print_rates(rows, args.device.type == "cuda")
    print()
    print_flops(rows, peak)
    if args.tta_shifts:
        print()
        print_tta(rows, args.tta_shifts)
    print(f"load average at end: {load_average()}")
    print()
    print_schedule(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
