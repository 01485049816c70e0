"""How confident are a run's iteration-0 fold models on the correctly labelled unverified clips?

Why: the paper's rule trusts a clip when the averaged posterior of its given label reaches the
threshold; nets that are accurate but under-confident trust few correct labels. For each run
(``NAME=WORKDIR``, the folder Snakemake ran in) this prints, from the chain's iteration-0
``decisions.csv`` (which holds each judged clip's true label in the FSDD experiment) and the
fold models' training histories:

* ``reach_<t>``: the share of the correctly labelled unverified clips whose averaged posterior
  of the given label reaches ``t`` (the experiment's threshold 0.9, the paper's 0.95);
* ``median_p``: the median of that posterior over the same clips;
* ``trusted``, ``precision``, ``recall``: what the chain's rule (with its cap) trusted;
* ``cv_acc``, ``cv_loss``: the mean over the folds of the best epoch's (lowest validation
  loss) verified-validation accuracy and loss.

    python experiments/fsdd/iteration0_confidence.py plain=study/lucas_s2018/work augmented=aug/lucas_s2018
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

THRESHOLDS = (0.9, 0.95)


def confidence_row(work: Path, chain: str, preset: str, folds: int) -> dict[str, float]:
    """The figures of one run (see the module docstring)."""
    trust = work / "results/chains" / chain / "trust" / preset / "it0/decisions.csv"
    decisions = pd.read_csv(trust, dtype={"given_label": str, "true_label": str, "trusted_label": str})
    if "true_label" not in decisions:
        raise SystemExit(f"{trust}: no true_label column (a dataset without true labels)")
    correct = decisions[decisions["given_label"] == decisions["true_label"]]
    accepted = decisions[decisions["accepted"].astype(bool)]
    right = int((accepted["trusted_label"] == accepted["true_label"]).sum())
    best = [
        pd.read_csv(work / "results/initial/all" / preset / f"fold{fold}/history.csv")
        .sort_values("valid_loss")
        .iloc[0]
        for fold in range(folds)
    ]
    return {
        "correct": len(correct),
        **{f"reach_{t}": float((correct["p_given"] >= t).mean()) for t in THRESHOLDS},
        "median_p": float(correct["p_given"].median()),
        "trusted": len(accepted),
        "precision": right / len(accepted) if len(accepted) else float("nan"),
        "recall": right / len(correct) if len(correct) else float("nan"),
        "cv_acc": float(np.mean([b["valid_acc"] for b in best])),
        "cv_loss": float(np.mean([b["valid_loss"] for b in best])),
    }


def main(argv: list[str] | None = None) -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("runs", nargs="+", help="NAME=WORKDIR, the folder Snakemake ran in")
    parser.add_argument("--chain", default="self_verification")
    parser.add_argument("--preset", default="vgg_gap_spec1_1")
    parser.add_argument("--folds", type=int, default=4)
    args = parser.parse_args(argv)
    rows = []
    for run in args.runs:
        name, _, work = run.partition("=")
        if not work:
            raise SystemExit(f"{run}: expected NAME=WORKDIR")
        rows.append({"run": name, **confidence_row(Path(work), args.chain, args.preset, args.folds)})
    print(pd.DataFrame(rows).round(3).to_string(index=False))


if __name__ == "__main__":
    main()
