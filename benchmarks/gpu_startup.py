"""What a network job pays before its first useful step, in a fresh process: for small nets
(the demo's) this start-up, not the arithmetic, decides a job's wall time on a GPU.

    python benchmarks/gpu_startup.py [--cudnn-benchmark on|off] [--preset vgg_gap_spec1_1]

Prints one JSON object: seconds to import torch, to create the CUDA context, to move the
preset's network (demo run preset) to the device in the training layout, the first training
step and the mean of the next ones, the first whole-clip evaluation batch, and one evaluation
batch of another size (as the last, partial batch of a validation pass is). With
``cudnn.benchmark`` on, every new input shape is tuned once: that is the price the training
path pays on CUDA (workflow_lib/training.py ``prepare_model``); ``off`` shows it by difference.
benchmarks/gpu_check.py runs this twice (on, off) as its ``startup`` step.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

STARTED = time.perf_counter()
import torch  # noqa: E402

IMPORT_S = time.perf_counter() - STARTED

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from workflow_lib.config import resolve_settings  # noqa: E402
from workflow_lib.job_settings import fit_settings  # noqa: E402
from workflow_lib.model import build_model  # noqa: E402
from workflow_lib.training import (  # noqa: E402
    DeviceFeatures,
    FitSettings,
    RunOptions,
    make_optimizer,
    prepare_model,
)

N_CLASSES = 41
N_BINS = 128


def timed(device: torch.device, work) -> float:
    """Seconds of ``work()`` including the device's queue."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    work()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


def demo_job(preset: str) -> tuple[FitSettings, dict, int]:
    """The preset's training settings in the demo run preset (the repository's config.yaml)."""
    import yaml

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    job = fit_settings(resolve_settings(config | {"run_preset": "demo"}), preset, 0)
    return FitSettings(**job["fit"]), job["net"], job["frames"]


def measure(device: torch.device, preset: str, cudnn_benchmark: bool, steps: int) -> dict:
    """The phases of a job's start, in order, in this (fresh) process."""
    fit, net, frames = demo_job(preset)
    figures = {"import_torch_s": IMPORT_S}
    figures["context_s"] = timed(device, lambda: torch.zeros(1, device=device))
    features = replace(DeviceFeatures.for_device(device), cudnn_benchmark=cudnn_benchmark)
    model = build_model(net["width"], N_CLASSES, tuple(net["dropout"]))
    holder: dict = {}
    figures["to_device_s"] = timed(
        device, lambda: holder.update(forward=prepare_model(model, device, RunOptions(features=features)))
    )
    forward, optimizer = holder["forward"], make_optimizer(model, fit.lr, device, features)
    batch = torch.randn(fit.batch_size, 1, N_BINS, fit.excerpt_frames, device=device)
    targets = torch.randint(0, N_CLASSES, (fit.batch_size,), device=device)

    def autocast() -> torch.autocast:
        return torch.autocast(device.type, dtype=features.amp_dtype, enabled=features.amp_dtype is not None)

    def train_step() -> None:
        with autocast():
            loss = torch.nn.functional.cross_entropy(forward(batch.contiguous(memory_format=memory)), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    memory = torch.channels_last if features.channels_last else torch.contiguous_format
    model.train()
    figures["first_step_s"] = timed(device, train_step)
    figures["next_step_s"] = timed(device, lambda: [train_step() for _ in range(steps)]) / steps
    model.eval()
    for name, size in (("first_eval_batch_s", fit.eval_batch_size), ("other_size_eval_batch_s", 7)):
        clips = torch.randn(size, 1, N_BINS, frames, device=device).contiguous(memory_format=memory)
        with torch.no_grad(), autocast():
            figures[name] = timed(device, lambda clips=clips: forward(clips))
    figures["total_s"] = time.perf_counter() - STARTED
    return {"preset": preset, "device": str(device), "cudnn_benchmark": cudnn_benchmark, **figures}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cudnn-benchmark", choices=["on", "off"], default="on")
    parser.add_argument("--preset", default="vgg_gap_spec1_1")
    parser.add_argument("--steps", type=int, default=10, help="training steps after the first")
    args = parser.parse_args()
    device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    print(json.dumps(measure(device, args.preset, args.cudnn_benchmark == "on", args.steps)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
