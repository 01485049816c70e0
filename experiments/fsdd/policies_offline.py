#!/usr/bin/env python
"""Every trust policy on the kept out-of-fold posteriors of one FSDD repetition, offline.

    .venv/bin/python experiments/fsdd/policies_offline.py <repetition folder> [iteration]

Reads ``work/results/chains/<chain>/trust/<preset>/it<i>/{posteriors,valid_posteriors}.csv``
(default chain self_verification, iteration 0: the judgement whose list iteration 1 trains on)
and the dataset's true labels, and prints, per policy setting, the clips trusted, their
precision and their recall (trusted correctly labelled / all correctly labelled judged clips).
label_spreading needs the embeddings, which are not kept, and is left out.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from workflow_lib.policies import Clips, PolicySettings, apply_policy  # noqa: E402

SETTINGS = {
    "paper 0.9, cap 40 (the method here)": PolicySettings.of("paper", threshold=0.9, max_per_class=40),
    "paper 0.9, no cap": PolicySettings.of("paper", threshold=0.9),
    "paper no threshold, cap 40 (authors' script)": PolicySettings.of("paper", max_per_class=40),
    "calibrated 0.9, cap 40": PolicySettings.of("calibrated", threshold=0.9, max_per_class=40),
    "calibrated 0.9, no cap": PolicySettings.of("calibrated", threshold=0.9),
    "agreement, no cap": PolicySettings.of("agreement"),
    "confident_learning, no cap": PolicySettings.of("confident_learning"),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("repetition", type=Path)
    p.add_argument("iteration", type=int, nargs="?", default=0)
    p.add_argument("--chain", default="self_verification")
    p.add_argument("--preset", default="vgg_gap_spec1_1")
    args = p.parse_args(argv)
    base = args.repetition / f"work/results/chains/{args.chain}/trust/{args.preset}/it{args.iteration}"
    post = pd.read_csv(base / "posteriors.csv", dtype={"fname": str, "given_label": str})
    valid = pd.read_csv(base / "valid_posteriors.csv", dtype={"fname": str, "label": str})
    classes = [c for c in post.columns if c not in ("fname", "fold", "given_label")]
    truth = pd.read_csv(args.repetition / "dataset/train_true_labels.csv", dtype=str)
    true = post["fname"].map(truth.set_index("fname")["true_label"]).to_numpy()
    correct = post["given_label"].to_numpy() == true
    judged = Clips(post[["fname", "fold", "given_label"]], post[classes].to_numpy())
    reference = Clips(valid[["fname", "fold", "label"]], valid[classes].to_numpy())
    print(
        f"{base}: {len(post)} judged clips, {correct.sum()} correctly labelled, "
        f"median p_max {post[classes].max(axis=1).median():.3f}"
    )
    for name, settings in SETTINGS.items():
        out = apply_policy(judged, reference, classes, settings)
        trusted = out["accepted"].to_numpy()
        precision = (
            (out["trusted_label"].to_numpy()[trusted] == true[trusted]).mean()
            if trusted.any()
            else float("nan")
        )
        recall = (trusted & correct).sum() / max(1, correct.sum())
        print(f"  {name:46s} trusted {trusted.sum():5d}  precision {precision:.3f}  recall {recall:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
