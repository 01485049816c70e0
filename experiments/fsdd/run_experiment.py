#!/usr/bin/env python
"""The noisy-label experiment on recorded speech (FSDD), with its baselines, in one command.

    .venv/bin/python experiments/fsdd/run_experiment.py            # the CPU-sized experiment

Steps:

1. Build a noisy-label dataset in the FSDKaggle2018 layout from the Free Spoken Digit Dataset
   (``{digit}_{speaker}_{take}.wav``) with ``workflow_lib.noisy_dataset``: one speaker held out
   as the test set, a share of the remaining clips verified, a share of the unverified labels
   replaced by a wrong digit (true labels kept in ``train_true_labels.csv``). The audio is
   symlinked, not copied. A build whose settings match is reused (so nothing reruns).
2. Run the workflow on it: the repository's ``config.yaml``, then this folder's ``config.yaml``
   (the CPU-sized settings and the baselines), then any ``--overlay`` files; Snakemake merges
   them recursively. The working directory is ``<out>/work``.
3. Copy ``results/baselines/{systems.csv,iterations.csv,systems.png}`` and
   ``results/summary.csv`` to ``<out>/`` and write ``<out>/experiment.json`` (dataset counts,
   the resolved settings that matter, the Snakemake command, wall time).

A killed run resumes where it stopped when started again (training checkpoints every epoch).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))

from workflow_lib.noisy_dataset import NoisyDatasetSettings, build_noisy_dataset  # noqa: E402

#: Environment variable with the FSDD recordings folder: the default of --fsdd.
FSDD_ENV = "SV_FSDD_DIR"
NAME_PATTERN = r"^(?P<label>\d+)_(?P<group>[a-z]+)_(?P<take>\d+)\.wav$"
COPIED = {"results/baselines/systems.csv": "systems.csv",
          "results/baselines/iterations.csv": "iterations.csv",
          "results/baselines/systems.png": "systems.png",
          "results/summary.csv": "summary.csv"}


def snakemake_binary() -> str:
    beside = Path(sys.executable).with_name("snakemake")
    if beside.is_file():
        return str(beside)
    found = shutil.which("snakemake")
    if found is None:
        raise SystemExit("snakemake not found (activate the project's virtual environment)")
    return found


def subset_source(fsdd: Path, takes: int | None, folder: Path) -> Path:
    """The FSDD folder itself, or a folder of symlinks to takes 0 ... takes-1 of every digit
    and speaker (a small real-audio version for tests)."""
    if takes is None:
        return fsdd
    import re

    regex = re.compile(NAME_PATTERN)
    wanted = sorted(p for p in fsdd.glob("*.wav")
                    if (m := regex.match(p.name)) and int(m.group("take")) < takes)
    if not wanted:
        raise SystemExit(f"no FSDD recordings with take < {takes} in {fsdd}")
    folder.mkdir(parents=True, exist_ok=True)
    present = {p.name for p in folder.iterdir()}
    if present != {p.name for p in wanted}:
        for name in present:
            (folder / name).unlink()
        for path in wanted:
            os.symlink(path.resolve(), folder / path.name)
    return folder


def build_dataset(args: argparse.Namespace, out: Path) -> dict:
    """Build (or reuse) the noisy dataset; returns its build_info."""
    source = subset_source(args.fsdd, args.takes, out / "source_subset")
    settings = NoisyDatasetSettings(test_groups=(args.test_speaker,), verified_fraction=args.verified_fraction,
                                    noise_rate=args.noise_rate, public_fraction=args.public_fraction,
                                    copy_mode="symlink", seed=args.seed)
    dataset = out / "dataset"
    info_path = dataset / "build_info.json"
    if info_path.is_file():
        info = json.loads(info_path.read_text())
        if info["settings"] == settings.to_json() and info["source"]["audio_dir"] == str(source):
            print(f"reusing the dataset in {dataset}", file=sys.stderr)
            return info
    print(f"building the dataset in {dataset}", file=sys.stderr)
    return build_noisy_dataset(source, dataset, settings, name_pattern=NAME_PATTERN, overwrite=True)


def snakemake_command(args: argparse.Namespace, out: Path) -> list[str]:
    command = [snakemake_binary(), "--snakefile", str(REPO / "Snakefile"),
               "--configfile", str(REPO / "config.yaml"), str(HERE / "config.yaml"),
               *[str(Path(o).resolve()) for o in args.overlay],
               "--config", f"dataset_root={(out / 'dataset').resolve()}",
               "--directory", str(out / "work"), "--cores", str(args.cores),
               "--rerun-incomplete", "--printshellcmds"]
    if args.dry_run:
        command.append("-n")
    return command + list(args.snakemake_args)


def resolved_settings(args: argparse.Namespace) -> dict:
    """The settings the workflow resolves from the same config files (for experiment.json)."""
    import yaml

    from workflow_lib.config import deep_merge, resolve_settings

    config: dict = {}
    for path in [REPO / "config.yaml", HERE / "config.yaml", *map(Path, args.overlay)]:
        config = deep_merge(config, yaml.safe_load(Path(path).read_text()) or {})
    config["dataset_root"] = "<dataset>"
    s = resolve_settings(config)
    return {"run_preset": s["run_preset"], "method": s["method"], "baselines": s["baselines"],
            "preprocessing": {"shards": s["preprocessing"]["shards"]}, "compute": s["compute"]}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=HERE / "results",
                   help="output folder (dataset/, work/, systems.csv ...); default %(default)s")
    p.add_argument("--fsdd", type=Path, default=os.environ.get(FSDD_ENV) or None,
                   help=f"the FSDD recordings folder (default: ${FSDD_ENV})")
    p.add_argument("--test-speaker", default="theo", help="held-out speaker (test set)")
    p.add_argument("--verified-fraction", type=float, default=0.4)
    p.add_argument("--noise-rate", type=float, default=0.3, help="share of unverified labels made wrong")
    p.add_argument("--public-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=2018, help="dataset seed")
    p.add_argument("--takes", type=int, default=None,
                   help="use only takes 0 ... N-1 of each digit and speaker (a small version)")
    p.add_argument("--overlay", action="append", default=[],
                   help="extra config file merged after experiments/fsdd/config.yaml (repeatable)")
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--dry-run", action="store_true", help="build the dataset, plan, run nothing")
    p.add_argument("snakemake_args", nargs="*", help="passed on to snakemake (after --)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.fsdd is None:
        print(f"error: where are the FSDD recordings? Pass --fsdd DIR or set {FSDD_ENV}", file=sys.stderr)
        return 1
    if not args.fsdd.is_dir():
        print(f"error: FSDD recordings not found at {args.fsdd} (--fsdd)", file=sys.stderr)
        return 1
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    settings = resolved_settings(args)
    info = build_dataset(args, out)
    command = snakemake_command(args, out)
    print("$ " + " ".join(command), file=sys.stderr, flush=True)
    started = time.time()
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    done = subprocess.run(command, env=env)
    seconds = time.time() - started
    if done.returncode != 0 or args.dry_run:
        return done.returncode
    for source, name in COPIED.items():
        if (out / "work" / source).is_file():
            shutil.copyfile(out / "work" / source, out / name)
    record = {"dataset": {k: info[k] for k in ("n_train", "n_verified", "n_unverified", "n_corrupted",
                                                "n_test", "classes", "settings")},
              "settings": settings, "snakemake_command": command,
              "wall_seconds": round(seconds, 1), "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
    (out / "experiment.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"done in {seconds / 60:.1f} min: {out / 'systems.csv'}, {out / 'systems.png'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
