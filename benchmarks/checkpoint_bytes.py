"""Bytes written by training checkpoints in the paper's run: the policy vs one per epoch.

    python benchmarks/checkpoint_bytes.py [--epochs 500] [--seconds-per-epoch S ...]

A count, not a run. For each paper preset (config.yaml, run_preset=paper; 41 classes) it
builds the network, gives Adam its state, and writes one checkpoint with
``training.save_checkpoint`` (model, Adam moments, best parameters, generator states, a full
history) to measure its size. The number of checkpoints comes from
``training.checkpoint_epochs``, the rule ``fit`` follows, for compute.checkpoint_every of
config.yaml and epochs taking S seconds (the time trigger depends on it). Before the policy
every epoch wrote one checkpoint of the same content; the printed share is new / before.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import yaml  # noqa: E402

from workflow_lib.config import resolve_settings  # noqa: E402
from workflow_lib.job_settings import fit_settings  # noqa: E402
from workflow_lib.model import build_model  # noqa: E402
from workflow_lib.training import (  # noqa: E402
    HISTORY_COLUMNS,
    CheckpointPolicy,
    DeviceSampler,
    TrainState,
    checkpoint_epochs,
    save_checkpoint,
)

N_CLASSES = 41


def checkpoint_size(width: int, dropout: tuple[float, float], epochs: int) -> int:
    """Bytes of one checkpoint of a width-``width`` net at the end of an ``epochs`` run."""
    model = build_model(width, N_CLASSES, dropout)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for parameter in model.parameters():
        parameter.grad = torch.zeros_like(parameter)
    optimizer.step()  # creates both Adam moments for every parameter
    history = [dict.fromkeys(HISTORY_COLUMNS, 0.5) for _ in range(epochs)]
    state = TrainState(
        epochs,
        history,
        0.5,
        {k: v.clone() for k, v in model.state_dict().items()},
        DeviceSampler(0, "cpu").get_state(),
        torch.get_rng_state(),
        None,
        "f" * 64,
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "resume.pt"
        save_checkpoint(path, model, optimizer, state)
        return path.stat().st_size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=500)
    parser.add_argument("--seconds-per-epoch", type=float, nargs="+", default=[1.0, 15.0, 60.0, 600.0])
    args = parser.parse_args()
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["run_preset"] = "paper"
    settings = resolve_settings(config)
    policy = CheckpointPolicy.from_settings(settings["compute"]["checkpoint_every"])
    print(f"command: python benchmarks/checkpoint_bytes.py {' '.join(sys.argv[1:])}".rstrip())
    print(
        f"policy: compute.checkpoint_every = {settings['compute']['checkpoint_every']} "
        f"(config.yaml, run_preset=paper); {args.epochs} epochs per initial-training job"
    )
    print(
        f"{'preset':<16} {'nf':>3} {'MB/ckpt':>8} {'s/epoch':>8} {'ckpts before':>12} "
        f"{'GB before':>9} {'ckpts now':>9} {'GB now':>7} {'now/before':>10}"
    )
    for preset in settings["method"]["presets"]:
        job = fit_settings(settings, preset, 0)
        size = checkpoint_size(job["net"]["width"], tuple(job["net"]["dropout"]), args.epochs)
        for seconds in args.seconds_per_epoch:
            now = len(checkpoint_epochs(args.epochs, policy, seconds))
            print(
                f"{preset:<16} {job['net']['width']:>3} {size / 1e6:>8.1f} {seconds:>8g} "
                f"{args.epochs:>12} {args.epochs * size / 1e9:>9.1f} {now:>9} "
                f"{now * size / 1e9:>7.2f} {100 * now / args.epochs:>9.1f}%"
            )
    print(
        "before: one checkpoint after every epoch (same content); now: the policy above. "
        "The time trigger adds checkpoints only when an epoch takes more than "
        f"{60 * policy.minutes / policy.epochs if policy.minutes and policy.epochs else 0:g} s."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
