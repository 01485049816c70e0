#!/usr/bin/env python
"""The noisy-label experiment on recorded drum samples (Debian's hydrogen-drumkits), in one command.

    .venv/bin/python experiments/drums/run_experiment.py --test-kit the_black_pearl_1_0
    .venv/bin/python experiments/drums/run_experiment.py --study --out drums_study \
        --test-kits bja_pacific forzeestereo the_black_pearl_1_0 millo_multilayered2 \
        millo_multilayered3 colomboacousticdrumkit --seeds 2018

The FSDD driver (experiments/fsdd/run_experiment.py) with another dataset step; everything
else (config merge, Snakemake command, experiment.json, --study resumption and tables,
--copy-to) is that driver's code, imported:

1. Build the labelled drum corpus once with ``workflow_lib.drum_corpus`` in ``<out>/source``
   (``--study``: shared by every repetition): one clip per layer file of the kits' instruments
   that map to the class vocabulary, cut to ``--max-seconds``; kit = group. A corpus whose
   settings match is reused.
2. Build the repetition's noisy-label dataset from it with ``workflow_lib.noisy_dataset`` (the
   FSDD builder, ``--labels-csv`` source): one kit held out as the test set, a share of the
   rest verified, a share of the unverified labels made wrong (``--noise-model uniform`` or
   ``pairs`` with ``--pairs``), true labels kept; the audio symlinked.
3. Run the workflow with the repository's ``config.yaml`` and experiments/fsdd/config.yaml
   unchanged (the same CPU-sized preset and the same chains; clips cut to 1.5 s fill its 256
   spectrogram frames), then any ``--overlay`` files.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))

from workflow_lib.drum_corpus import build_drum_source, source_settings  # noqa: E402
from workflow_lib.errors import UserError  # noqa: E402
from workflow_lib.noisy_dataset import (  # noqa: E402
    NOISE_MODELS,
    NoisyDatasetSettings,
    _parse_pairs,
    build_noisy_dataset,
)


def _load_fsdd_driver() -> types.ModuleType:
    """The FSDD driver, imported by path (both scripts are called run_experiment.py)."""
    spec = importlib.util.spec_from_file_location(
        "fsdd_run_experiment", REPO / "experiments/fsdd/run_experiment.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


driver = _load_fsdd_driver()
KITS_DIR = Path("/usr/share/hydrogen/data/drumkits")


def ensure_source(args: argparse.Namespace, source: Path) -> Path:
    """The labelled drum corpus in ``source``: reused when built with the same settings."""
    wanted = source_settings(args.kits_dir, args.kits, args.max_seconds, args.min_kits)
    info_path = source / "corpus_info.json"
    if info_path.is_file() and json.loads(info_path.read_text()).get("source") == wanted:
        print(f"reusing the drum corpus in {source}", file=sys.stderr)
        return source
    print(f"building the drum corpus in {source}", file=sys.stderr)
    info = build_drum_source(
        args.kits_dir, source, args.max_seconds, args.kits, args.min_kits, overwrite=True
    )
    print(
        f"{info['n_clips']} clips, {len(info['classes'])} classes: {info['clips_per_class']}", file=sys.stderr
    )
    return source


def build_dataset(args: argparse.Namespace, out: Path) -> dict:
    """The repetition's noisy dataset in ``<out>/dataset`` (or the earlier identical build)."""
    source = ensure_source(args, out.parent / "source" if args.study else out / "source")
    settings = NoisyDatasetSettings(
        test_groups=(args.test_group,),
        verified_fraction=args.verified_fraction,
        noise_rate=args.noise_rate,
        noise_model=args.noise_model or ("pairs" if args.pairs else "uniform"),
        pairs=args.pairs,
        public_fraction=args.public_fraction,
        copy_mode="symlink",
        seed=args.seed,
    )
    audio, dataset = source / "audio", out / "dataset"
    earlier = driver.reusable_build(dataset, settings, audio)
    if earlier is not None:
        return earlier
    print(f"building the dataset in {dataset}", file=sys.stderr)
    return build_noisy_dataset(audio, dataset, settings, labels_csv=source / "labels.csv", overwrite=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """This driver's arguments plus the FSDD driver's shared ones (add_run_arguments)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=HERE / "results", help="output folder (default: %(default)s)")
    p.add_argument("--kits-dir", type=Path, default=KITS_DIR, help="folder of Hydrogen kit folders")
    p.add_argument("--kits", nargs="+", default=None, help="kit folder names or slugs to use (default: all)")
    p.add_argument("--max-seconds", type=float, default=1.5, help="clips are cut to this length")
    p.add_argument("--min-kits", type=int, default=3, help="classes found in fewer kits are left out")
    p.add_argument("--test-kit", dest="test_group", default="the_black_pearl_1_0", help="held-out kit (slug)")
    p.add_argument("--test-kits", dest="test_groups", nargs="+", default=None, help="--study: held-out kits")
    p.add_argument(
        "--noise-model",
        choices=NOISE_MODELS,
        default=None,
        help="default: 'pairs' with --pairs, else 'uniform'",
    )
    p.add_argument(
        "--pairs",
        type=_parse_pairs,
        default=None,
        help="directed pairs, e.g. hihat_closed:hihat_open,crash:ride",
    )
    driver.add_run_arguments(p)
    args = p.parse_args(argv)
    args.experiment_configs = [driver.HERE / "config.yaml"]
    args.multi_label = False
    return args


def main(argv: list[str] | None = None) -> int:
    """One repetition, or the study (--study); 0 on success, 1 on a rejected setting."""
    args = parse_args(argv)
    if not args.kits_dir.is_dir():
        print(
            f"error: no drum kits at {args.kits_dir} (apt-get install hydrogen-drumkits, or --kits-dir)",
            file=sys.stderr,
        )
        return 1
    out = args.out.resolve()
    try:
        if args.study:
            return driver.run_study(args, out, build_dataset)
        overlay = driver.write_overlay(args, out, None)
        if overlay is not None:
            args.overlay = [*args.overlay, str(overlay)]
        return driver.run_one(args, out, build_dataset)
    except (UserError, ValueError, FileExistsError) as exc:  # a rejected corpus, setting or record
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
