"""Resolve and validate the workflow settings.

``config.yaml`` holds the paper's values under ``method`` and named overrides under
``run_presets``. The Snakefile calls :func:`resolve_settings` once at start, so a typo or an
out-of-range value stops the run with one readable sentence instead of a traceback hours later.
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from .audio import sox_effects_problems
from .dataset_layouts import LAYOUTS, has_pool, layout_of, train_listing_keys, transductive
from .errors import UserError
from .io import write_json
from .job_settings import WAVEFORM_AUGMENTATION_DEFAULTS, smooths_towards_confusion
from .policies import CHAIN_KEYS, REGISTRY, chain_schema_properties, names_for
from .task import TASKS, Task, task_of_settings

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "schemas" / "config.schema.yaml"


class ConfigError(UserError, ValueError):
    """A setting is missing, misspelt or out of range; the message names the key."""


def deep_merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``base`` with ``overrides`` merged in recursively (dicts merge, others replace)."""
    merged = copy.deepcopy(dict(base))
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _key_path(error: jsonschema.ValidationError) -> str:
    return ".".join(str(part) for part in error.absolute_path) or "(top level)"


def _describe(error: jsonschema.ValidationError) -> str:
    """Turn a jsonschema error into a sentence that names the config key."""
    best = jsonschema.exceptions.best_match([error])
    hint = best.schema.get("description") if isinstance(best.schema, dict) else None
    message = f"config key {_key_path(best)}: {best.message}"
    return f"{message} ({hint})" if hint else message


def load_schema() -> dict[str, Any]:
    """The JSON schema of config.yaml, read from ``schemas/``, with the trust policies' part of
    a chain (the policy names and each policy's keys) added from the registry
    (policies.chain_schema_properties) and the dataset layouts from ``dataset_layouts.LAYOUTS``:
    a new policy or layout needs no schema edit."""
    with open(SCHEMA_PATH) as handle:
        schema = yaml.safe_load(handle)
    schema["properties"]["chains"]["additionalProperties"]["properties"].update(chain_schema_properties())
    schema["properties"]["dataset"]["properties"]["layout"]["enum"] = sorted(LAYOUTS)
    return schema


def validate_settings(settings: Mapping[str, Any]) -> None:
    """Raise :class:`ConfigError` listing every schema violation and inconsistency."""
    validator = jsonschema.Draft202012Validator(load_schema())
    problems = non_finite_numbers({k: v for k, v in settings.items() if k != "run_presets"})
    problems += [_describe(e) for e in sorted(validator.iter_errors(settings), key=str)]
    if not problems:
        problems = _cross_checks(settings)
    if problems:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(problems))


def non_finite_numbers(tree: Any, prefix: str = "") -> list[str]:
    """A sentence per NaN or infinite number in the settings.

    YAML reads ``.nan`` and ``.inf`` as floats, and a JSON schema cannot refuse NaN: every
    comparison with it is false, so ``minimum``/``maximum`` let it through, and a threshold
    of NaN would then trust nothing, a max_fraction or gamma of NaN crash after the
    iteration-0 training. (``run_presets`` is checked once merged, as the resolved settings.)
    """
    if isinstance(tree, Mapping):
        items = [(f"{prefix}{key}", value) for key, value in tree.items()]
    elif isinstance(tree, list):
        items = [(f"{prefix.rstrip('.')}[{n}]", value) for n, value in enumerate(tree)]
    else:
        return []
    problems = []
    for key, value in items:
        if isinstance(value, float) and not math.isfinite(value):
            problems.append(
                f"config key {key}: {value} is not a finite number (NaN and infinity are refused; "
                "where a key can be switched off, null does that)"
            )
        else:
            problems += non_finite_numbers(value, f"{key}.")
    return problems


def _cross_checks(settings: Mapping[str, Any]) -> list[str]:
    """Relations between keys that a JSON schema cannot express."""
    method = settings["method"]
    problems = []
    unknown = [p for p in method["presets"] if p not in method["nets"]]
    if unknown:
        problems.append(
            f"config key method.presets: {unknown} not defined under method.nets "
            f"(defined: {sorted(method['nets'])})"
        )
    if method["excerpt_frames"] > method["spectrogram_frames"]:
        problems.append("config key method.excerpt_frames: must not exceed method.spectrogram_frames")
    problems += augment_problems(settings)
    for stage in ("initial_training", "fine_tuning"):
        if method[stage]["constant_epochs"] > method[stage]["epochs"]:
            problems.append(f"config key method.{stage}.constant_epochs: must not exceed epochs")
    demo = settings["demo_data"]
    if demo["min_seconds"] > demo["max_seconds"]:
        problems.append("config key demo_data.min_seconds: must not exceed demo_data.max_seconds")
    problems += [
        f"config key preprocessing.sox_effects: {p}"
        for p in sox_effects_problems(settings["preprocessing"]["sox_effects"])
    ]
    problems += waveform_problems(settings["preprocessing"].get("waveform_augmentation") or {})
    return problems + _chain_checks(settings) + unused_dataset_keys(settings) + pool_problems(settings)


def _transductive_problems(dataset: Mapping[str, Any]) -> list[str]:
    """The test audio as the pool excludes another pool folder and any true labels of the
    pool (they would be test labels, which a transductive run never reads), and needs a test
    folder."""
    if not transductive(dataset):
        return []
    problems = [
        f"config key dataset.{key}: not with dataset.unlabelled_test_audio: true (the pool is then "
        "the test audio, whose labels are never read for it)"
        for key in ("unlabelled_audio_dir", "unlabelled_true_labels_csv")
        if dataset.get(key)
    ]
    if not dataset.get("test_audio_dir"):
        problems.append(
            "config key dataset.unlabelled_test_audio: needs dataset.test_audio_dir (the test audio)"
        )
    return problems


def pool_problems(settings: Mapping[str, Any]) -> list[str]:
    """The unlabelled pool is used by the run's chains with ``pool: true`` and only there: a
    pool no run chain uses, or such a chain without a pool, is an error (never silently
    ignored); the demo has no pool; a pool chain's policy must judge a clip from its
    posteriors alone (the pool's are a mean over the folds, with no fold's reference clips)."""
    dataset, chains = settings["dataset"], settings["chains"]
    users = [c for c in settings["run_chains"] if chains.get(c, {}).get("pool", False)]
    key = "unlabelled_test_audio" if transductive(dataset) else "unlabelled_audio_dir"
    problems = _transductive_problems(dataset)
    if dataset.get("unlabelled_true_labels_csv") and not dataset.get("unlabelled_audio_dir"):
        problems.append(
            "config key dataset.unlabelled_true_labels_csv: set only with dataset.unlabelled_audio_dir"
        )
    if has_pool(dataset) and not users:
        problems.append(
            f"config key dataset.{key}: no chain of run_chains sets pool: true, so "
            "nothing would use the pool (add such a chain, e.g. pseudo_labels, or unset it)"
        )
    if has_pool(dataset) and not settings["dataset_root"]:
        problems.append(f"config key dataset.{key}: the demo dataset has no pool (set dataset_root)")
    for name in users:
        if not has_pool(dataset):
            problems.append(
                f"config key chains.{name}.pool: needs dataset.unlabelled_audio_dir (the pool's "
                "folder) or dataset.unlabelled_test_audio: true"
            )
        policy = REGISTRY[chains[name]["policy"]]
        if policy.needs_reference or policy.needs_embeddings:
            problems.append(
                f"config key chains.{name}.pool: policy {policy.name} reads each fold's reference "
                "clips, and pool clips are judged by the mean of every fold model; use another policy"
            )
    return problems


def waveform_problems(augmentation: Mapping[str, Any]) -> list[str]:
    """A sentence per ``preprocessing.waveform_augmentation`` range given upside down, and
    for every other key set while ``copies`` is 0 (it would change nothing: a setting the user
    gives is never silently ignored)."""
    key = "config key preprocessing.waveform_augmentation"
    problems = [
        f"{key}.{name}: {augmentation[name]} has its lowest value above its highest"
        for name in ("time_stretch", "gain_db", "snr_db")
        if name in augmentation and augmentation[name][0] > augmentation[name][1]
    ]
    if augmentation.get("copies", 0) == 0:
        idle = sorted(set(augmentation) - {"copies"})
        if idle:
            problems.append(f"{key}: {idle} set but copies is 0 (off); set copies >= 1, or remove them")
    elif _no_step(augmentation):
        problems.append(f"{key}: every step is off, so the copies would equal their clips")
    resolved = {**WAVEFORM_AUGMENTATION_DEFAULTS, **augmentation}
    if "snr_db" in augmentation and not resolved["noise_dir"]:
        problems.append(f"{key}.snr_db: set without noise_dir, so no noise is mixed in; name a noise folder")
    if "rollover" in augmentation and resolved["shift"] == 0:
        problems.append(f"{key}.rollover: set with shift 0, so nothing is shifted; set shift > 0")
    return problems


def _no_step(augmentation: Mapping[str, Any]) -> bool:
    """Whether no step of a waveform augmentation is on (absent keys take their defaults)."""
    resolved = {**WAVEFORM_AUGMENTATION_DEFAULTS, **augmentation}
    return (
        list(resolved["time_stretch"]) == [1, 1]
        and resolved["shift"] == 0
        and list(resolved["gain_db"]) == [0, 0]
        and not resolved["noise_dir"]
    )


def check_noise_dir(settings: Mapping[str, Any]) -> None:
    """A named noise folder (preprocessing.waveform_augmentation.noise_dir) must exist and
    hold files, checked at start; the noise_files job checks each file
    (workflow_lib/waveform_augment.py)."""
    augmentation = settings["preprocessing"].get("waveform_augmentation") or {}
    folder = augmentation.get("noise_dir", "")
    if not folder or augmentation.get("copies", 0) == 0:
        return
    key = "config key preprocessing.waveform_augmentation.noise_dir"
    if not Path(folder).is_dir():
        raise ConfigError(f"{key}: {folder} is not a folder")
    walked = os.walk(folder, followlinks=False)  # a linked folder is never entered (a loop, or outside)
    if not any(not name.startswith(".") for _, _, files in walked for name in files):
        raise ConfigError(f"{key}: {folder} holds no files (background-noise recordings expected)")


def augment_problems(settings: Mapping[str, Any]) -> list[str]:
    """A sentence per spectrogram augmentation that cannot apply (a net preset's ``augment``, a
    chain's ``augment`` and its ``consistency.augment``): a time mask wider than the training
    excerpt, or masks without a width (a width without masks' count is harmless, accepted).
    The schema bounds the frequency width by the 128 bins."""
    method, chains = settings["method"], settings["chains"]
    found = [(f"method.nets.{preset}.augment", net.get("augment")) for preset, net in method["nets"].items()]
    found += [(f"chains.{name}.augment", spec.get("augment")) for name, spec in chains.items()]
    found += [
        (f"chains.{name}.consistency.augment", spec["consistency"].get("augment"))
        for name, spec in chains.items()
        if "consistency" in spec
    ]
    return [
        problem
        for key, augment in found
        for problem in _augment_problems(f"config key {key}", augment or {}, method)
    ]


def _augment_problems(key: str, augment: Mapping[str, Any], method: Mapping[str, Any]) -> list[str]:
    problems = []
    if augment.get("time_mask_width", 0) > method["excerpt_frames"]:
        problems.append(
            f"{key}.time_mask_width: {augment['time_mask_width']} frames exceeds the training "
            f"excerpt (method.excerpt_frames: {method['excerpt_frames']})"
        )
    for axis in ("time", "freq"):
        if augment.get(f"{axis}_masks", 0) > 0 and augment.get(f"{axis}_mask_width", 0) == 0:
            problems.append(
                f"{key}.{axis}_masks: {augment[f'{axis}_masks']} masks of width 0 change nothing "
                f"(set {axis}_mask_width, or {axis}_masks: 0)"
            )
    return problems


def unused_dataset_keys(settings: Mapping[str, Any], user: Mapping[str, Any] | None = None) -> list[str]:
    """Keys of the other dataset layout that were set: the chosen layout does not read them,
    so they are an error rather than silently ignored. Set means: a value other than the
    schema's default, or given by the user (``--config``, an extra config file)."""
    dataset = settings["dataset"]
    layout = layout_of(dataset)
    defaults = load_schema()["properties"]["dataset"]["properties"]
    given = (user or {}).get("dataset") or {}
    given = given if isinstance(given, Mapping) else {}
    problems = []
    for other in LAYOUTS.values():
        for key in other.keys if other != layout else ():
            if key in given or dataset.get(key, defaults[key]["default"]) != defaults[key]["default"]:
                problems.append(
                    f"config key dataset.{key}: read only by dataset.layout {other.name}, not by "
                    f"{layout.name} (which reads {', '.join(layout.keys)}); remove it or change the layout"
                )
    return problems


def _chain_checks(settings: Mapping[str, Any]) -> list[str]:
    """Each chain sets only keys its policy reads (a setting is never silently ignored), the
    keys it needs, and correct_labels only with a policy that can refuse a clip for its label;
    the policies of the run's chains have a function for the run's task."""
    problems = []
    chains = settings["chains"]
    unknown = [c for c in settings["run_chains"] if c not in chains]
    if unknown:
        problems.append(
            f"config key run_chains: {unknown} not defined under chains (defined: {sorted(chains)})"
        )
    for name, chain in chains.items():
        policy = REGISTRY[chain["policy"]]  # the schema's enum is the registry's names
        stray = sorted(set(chain) - CHAIN_KEYS - set(policy.keys))
        if stray:
            problems.append(f"config key chains.{name}: policy {policy.name} does not read {stray}")
        if not set(policy.required) <= set(chain):
            problems.append(f"config key chains.{name}: {policy.name} needs {' and '.join(policy.required)}")
        if chain.get("correct_labels") and not policy.correctable:
            problems.append(
                f"config key chains.{name}.correct_labels: policy {policy.name} never "
                "refuses a clip for its label, so it cannot correct one"
            )
        if "correct_threshold" in chain and not chain.get("correct_labels"):
            problems.append(f"config key chains.{name}.correct_threshold: set only with correct_labels: true")
        problems += _ceiling_checks(name, chain, settings["method"]["self_verification"]["threshold"])
    run = [c for c in settings["run_chains"] if c in chains]
    iterations = settings["method"]["self_verification"]["iterations"]
    problems += [problem for c in run for problem in _fine_tuning_checks(c, chains[c], iterations)]
    return problems + _task_chain_checks(chains, run, task_of_settings(settings))


#: The chain keys that act in fine-tuning only (job_settings.chain_fit_options): iteration-0
#: jobs are shared by the chains with the same start.
FINE_TUNING_ONLY_KEYS = ("consistency", "soft_relabel", "mixup", "augment")


def _fine_tuning_checks(name: str, chain: Mapping[str, Any], iterations: int) -> list[str]:
    """A run chain's fine-tuning options with no fine-tuning iteration would change nothing,
    so they are refused rather than ignored."""
    if iterations > 0:
        return []
    return [
        f"config key chains.{name}.{key}: acts in fine-tuning only, and "
        "method.self_verification.iterations is 0 (no fine-tuning job); remove it or run iterations"
        for key in FINE_TUNING_ONLY_KEYS
        if key in chain
    ]


def _ceiling_checks(name: str, chain: Mapping[str, Any], method_threshold: float | None) -> list[str]:
    """threshold_ceiling must lie above every threshold the chain applies (its own, the
    method's when it leaves ``threshold`` out, or both ends of a schedule): a ceiling at or below
    the threshold would trust nothing, a mistake better caught at start than after training."""
    ceiling = chain.get("threshold_ceiling")
    if ceiling is None:
        return []
    keys = [k for k in ("threshold", "threshold_start", "threshold_end") if k in chain]
    thresholds = {k: chain[k] for k in keys} or {"method.self_verification.threshold": method_threshold}
    low = {k: v for k, v in thresholds.items() if v is not None and ceiling <= v}
    if not low:
        return []
    return [
        f"config key chains.{name}.threshold_ceiling: {ceiling} must be above the threshold "
        f"({', '.join(f'{k} {v}' for k, v in low.items())}), or no clip could be trusted"
    ]


#: The tasks whose decisions may replace a refused label by the predicted one (correct_labels).
CORRECTING_TASKS = [name for name, task in TASKS.items() if task.corrects_labels]


def _task_chain_checks(chains: Mapping[str, Any], run: list[str], task: Task) -> list[str]:
    """A run chain's policy must have a function for the run's task (the multi-label task
    judges labels one by one), correct_labels only where the task can replace a label, and
    soft relabelling towards the confusion rows only where a clip has one true class; chains
    defined but not run are free."""
    problems = []
    for name in run:
        policy = REGISTRY[chains[name]["policy"]]
        if task.name not in policy.functions:
            problems.append(
                f"config key chains.{name}.policy: {policy.name} is {', '.join(policy.task_names)} "
                f"only and cannot judge the {task.trust_unit} of a {task.name} run (dataset.layout "
                f"{' or '.join(task.layouts)}); one of {names_for(task)}, or leave the chain out of "
                "run_chains"
            )
        if chains[name].get("correct_labels") and not task.corrects_labels:
            problems.append(
                f"config key chains.{name}.correct_labels: {', '.join(CORRECTING_TASKS)} only (a "
                f"{task.name} clip keeps a subset of its given labels, none is replaced)"
            )
        if smooths_towards_confusion(chains[name]) and task.label_sets:
            problems.append(
                f"config key chains.{name}.soft_relabel.towards: confusion is single-label only (a "
                f"{task.name} run softens towards the class co-occurrence rows); leave it out or "
                "set prior, or leave the chain out of run_chains"
            )
    return problems


def gpus_per_training_job(compute: Mapping[str, Any]) -> int:
    """GPUs a training job asks Snakemake for: 0 on CPU, 1 when CUDA will be used.

    ``auto`` looks for NVIDIA devices in /proc without importing torch (fast start-up).
    """
    if compute["device"] == "cpu":
        return 0
    if compute["gpus_per_training_job"] != "auto":
        return int(compute["gpus_per_training_job"])
    gpus = Path("/proc/driver/nvidia/gpus")
    return 1 if compute["device"] == "cuda" or (gpus.is_dir() and any(gpus.iterdir())) else 0


#: Sections a run preset may override (and a user setting may then win back).
PRESET_SECTIONS = (
    "dataset",
    "demo_data",
    "preprocessing",
    "method",
    "compute",
    "chains",
    "run_chains",
    "chain_choice",
    "trust",
)


def leaf_keys(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a.b.c': value} for every non-mapping value of a nested mapping."""
    leaves: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            leaves.update(leaf_keys(value, path + "."))
        else:
            leaves[path] = value
    return leaves


def preset_shadowed(overrides: Mapping[str, Any], user: Mapping[str, Any]) -> list[str]:
    """Keys the user gave that the run preset also sets (the user's value wins)."""
    preset_leaves = leaf_keys(overrides)
    given = leaf_keys({k: v for k, v in user.items() if k in PRESET_SECTIONS})
    shadowed = []
    for key in given:
        # a user leaf shadows a preset leaf at the same path, or a whole preset subtree
        if key in preset_leaves or any(p.startswith(key + ".") for p in preset_leaves):
            shadowed.append(key)
    return sorted(shadowed)


def resolve_settings(config: Mapping[str, Any], user: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Apply the chosen run preset's overrides to ``config`` and validate the result.

    ``user``: the settings the user gave on top of config.yaml (``--config`` and any extra
    ``--configfile``). Snakemake has already merged them into ``config``, where the preset
    would silently override them; they are applied again after the preset, so a setting the
    user gives always wins (:func:`preset_shadowed` names the keys, for the log).
    """
    presets = config.get("run_presets", {})
    name = config.get("run_preset")
    if name not in presets:
        raise ConfigError(f"config key run_preset: {name!r} is not one of the run presets {sorted(presets)}")
    overrides = presets[name] or {}
    stray = sorted(set(overrides) - set(PRESET_SECTIONS))
    if stray:
        raise ConfigError(f"config key run_presets.{name}: cannot override {stray}")
    settings = deep_merge(config, overrides)
    if user:
        settings = deep_merge(settings, {k: v for k, v in user.items() if k in PRESET_SECTIONS})
    validate_settings(settings)
    problems = unused_dataset_keys(settings, user)
    if problems:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(problems))
    return settings


def user_settings(
    config_files: list[Path],
    command_line: Mapping[str, Any],
    default_file: Path,
) -> dict[str, Any]:
    """What the user gave besides ``default_file``: extra config files, then ``--config``."""
    given: dict[str, Any] = {}
    for path in config_files:
        if Path(path).resolve() != Path(default_file).resolve():
            with open(path) as handle:
                given = deep_merge(given, yaml.safe_load(handle) or {})
    return deep_merge(given, dict(command_line))


# --- one results folder, one run ---------------------------------------------------------

RUN_RECORD = "run.json"


def run_identity(settings: Mapping[str, Any]) -> dict[str, str]:
    """What ties a results folder to one run: the dataset and the run preset."""
    root = settings["dataset_root"]
    return {
        "dataset_root": str(Path(root).resolve()) if root else "(demo dataset)",
        "run_preset": settings["run_preset"],
    }


def check_dataset_root(settings: Mapping[str, Any]) -> None:
    """A dataset_root without its training list is an error, even when results exist
    (Snakemake would otherwise report "Nothing to be done")."""
    root = settings["dataset_root"]
    if not root:
        return
    key = train_listing_keys(settings["dataset"])[0]
    train_csv = Path(root) / settings["dataset"][key]
    if not train_csv.is_file():
        problem = "does not exist" if not Path(root).exists() else f"holds no {train_csv.name}"
        raise ConfigError(f"config key dataset_root: {root} {problem} (expected {train_csv})")


def check_run_identity(results: Path, identity: Mapping[str, str]) -> None:
    """Refuse to reuse a results folder made from another dataset or run preset."""
    record = Path(results) / RUN_RECORD
    if not record.is_file():
        return
    earlier = json.loads(record.read_text())
    differs = [k for k in identity if earlier.get(k) != identity[k]]
    if differs:
        was = ", ".join(f"{k}={earlier.get(k)}" for k in identity)
        now = ", ".join(f"{k}={identity[k]}" for k in identity)
        raise ConfigError(
            f"{results}/ holds the results of another run ({was}; see {record}); this command "
            f"asks for {now}. Run it in another folder (snakemake --directory OTHER ...) or move "
            f"{results}/ away; mixing them would overwrite or combine the two runs' outputs"
        )


def record_run_identity(results: Path, identity: Mapping[str, str]) -> None:
    """Write results/run.json (once; :func:`check_run_identity` compares later runs with it)."""
    record = Path(results) / RUN_RECORD
    if not record.is_file():
        write_json(dict(identity), record)
