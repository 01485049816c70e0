"""Which compute.jobs_per_gpu fits on a 16, 24, 40 or 80 GB card for an FSDKaggle2018-sized run.

    python benchmarks/gpu_memory_table.py [--cards 16 24 40 80]

The memory model of workflow_lib/gpu_memory.py (every term checked against the tensors' own
sizes on the CPU by tests/test_gpu_memory.py) for the paper presets of config.yaml
(``run_preset: paper``: widths 48/64/64, batches 100/100/50, bf16 autocast, 41 classes) on
9,473 training clips of 0.3-30 s (3,710 verified), 1,600 test clips, 4 folds. The spec gives
the length range only, so two assumptions are printed: lengths spread evenly over 0.3-30 s,
and every clip at least as long as the 3,000-frame length fix (the upper bound of the bank).

A job's share of a card = modelled allocations x ALLOCATOR_MARGIN + CONTEXT_BYTES (both
assumptions, see the module). Cards are counted in decimal GB (10^9 bytes), which is below
what the cards sold as 16/24/40/80 GB hold (e.g. 80 GB cards have about 79.6 GiB = 85.5e9
bytes): the table errs on the safe side. Any job kind can land in any slot, so the largest
kind decides. Computed, not measured: no GPU has run this code yet.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from workflow_lib.config import resolve_settings  # noqa: E402
from workflow_lib.gpu_memory import (  # noqa: E402
    ALLOCATOR_MARGIN,
    BOOL,
    CONTEXT_BYTES,
    LENGTH_ASSUMPTIONS,
    JobBytes,
    NetShape,
    fsdkaggle2018_jobs,
    jobs_that_fit,
)
from workflow_lib.job_settings import fit_settings  # noqa: E402

N_CLASSES = 41
CARDS_GB = (16, 24, 40, 80)


def paper_nets() -> dict[str, tuple[NetShape, int]]:
    """(NetShape, spectrogram version) of every paper preset, from config.yaml."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["run_preset"] = "paper"
    settings = resolve_settings(config)
    nets = {}
    for preset in settings["method"]["presets"]:
        job = fit_settings(settings, preset, 0)
        fit = job["fit"]
        net = NetShape(
            width=job["net"]["width"],
            n_classes=N_CLASSES,
            batch_size=fit["batch_size"],
            excerpt_frames=fit["excerpt_frames"],
            frames=job["frames"],
            eval_batch_size=fit["eval_batch_size"],
            amp_bytes=2 if fit["amp"] else 4,
            mask_bytes=BOOL,  # CUDA's dropout mask
        )
        nets[preset] = (net, job["net"]["spectrogram"])
    return nets


def table(cards_gb=CARDS_GB) -> list[str]:
    """The markdown rows: per length assumption, each job kind's largest share and the fit."""
    head = (
        "| clip lengths | training / self-verification / prediction job: GB allocated "
        "(GB of the card with margin and context) |"
    )
    lines = [
        head + "".join(f" {gb} GB |" for gb in cards_gb),
        "| --- | --- |" + " --- |" * len(cards_gb),
    ]
    for assumption in LENGTH_ASSUMPTIONS:
        worst: dict[str, JobBytes] = {}  # per job kind, the preset that needs most
        for net, version in paper_nets().values():
            for job in fsdkaggle2018_jobs(net, version, assumption):
                if job.job not in worst or job.on_card > worst[job.job].on_card:
                    worst[job.job] = job
        shares = " / ".join(f"{job.allocated / 1e9:.1f} ({job.on_card / 1e9:.1f})" for job in worst.values())
        largest = max(worst.values(), key=lambda job: job.on_card)
        fits = "".join(f" {jobs_that_fit(largest, int(gb * 1e9))} |" for gb in cards_gb)
        lines.append(f"| {assumption} | {shares} |{fits}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cards", type=int, nargs="+", default=list(CARDS_GB), help="card sizes in GB")
    args = parser.parse_args()
    print(
        f"jobs_per_gpu that fits (paper presets, FSDKaggle2018-sized; margin x{ALLOCATOR_MARGIN} "
        f"+ {CONTEXT_BYTES / 2**30:.0f} GiB CUDA context per job; computed, not measured):"
    )
    print("\n".join(table(tuple(args.cards))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
