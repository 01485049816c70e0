# Settings, paths and small helpers shared by every rule file.
import json
import os
import shlex
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

# The repository root: the folder above rules/. Not workflow.basedir, which is the folder of
# the *main* Snakefile; when a host workflow imports this one as a module that is the host's.
REPO = str(Path(workflow.current_basedir).parent)

# workflow_lib is imported from this repository, wherever Snakemake was started. The path is
# put on sys.path only for the import (later `from workflow_lib import x` find the package
# through its __path__), so a host workflow's own imports see an unchanged sys.path.
sys.path.insert(0, REPO)
try:
    from workflow_lib import __version__ as VERSION
    from workflow_lib.config import (
        ConfigError,
        check_dataset_root,
        check_noise_dir,
        check_run_identity,
        gpus_per_training_job,
        preset_shadowed,
        record_run_identity,
        resolve_settings,
        run_identity,
        user_settings,
    )
    from workflow_lib.bundle import BUNDLE_FILES
    from workflow_lib.choice import chooses_by_cv
    from workflow_lib.dataset_layouts import has_pool, layout_of, train_listing_keys
    from workflow_lib.fingerprint import DigestCache, folder_fingerprint, split_fingerprints
    from workflow_lib.layout import (
        COPIES_SPLIT,
        MODEL_FILES,
        POOL_FILES,
        TRUST_FILES,
        Layout,
        overlong_values,
        spec_files,
        systems_spec,
    )
    from workflow_lib.job_settings import (
        chain_choice_spec,
        chain_evaluation_arguments,
        chain_fusion_settings,
        chain_note,
        compared_settings,
        demo_data_settings,
        derive_seed,
        fit_settings,
        pool_trust_settings,
        pool_validation_settings,
        prediction_settings,
        preprocessing_settings,
        smooths_towards_confusion,
        tagger_settings,
        task_arguments,
        trust_settings,
        uses_pool,
        validation_settings,
        waveform_augmentation_settings,
        with_pool,
        with_valid_posteriors,
    )
    from workflow_lib.shards import listed_file_counts, resolve_shards
    from workflow_lib.task import task_of_settings
finally:
    sys.path.remove(REPO)

RESULTS = "results"

# Settings the user gave (--config, extra --configfile) win over the run preset's.
USER_SETTINGS = user_settings(
    workflow.config_settings.configfiles,
    workflow.config_settings.config,
    Path(REPO) / "config.yaml",
)
try:
    S = resolve_settings(config, USER_SETTINGS)
    check_dataset_root(S)
    check_noise_dir(S)
    RUN_IDENTITY = run_identity(S)
    check_run_identity(Path(RESULTS), RUN_IDENTITY)
except ConfigError as error:
    raise WorkflowError(str(error)) from None
for key in preset_shadowed(config["run_presets"][S["run_preset"]] or {}, USER_SETTINGS):
    print(f"config: your {key} overrides the value of run preset {S['run_preset']}", file=sys.stderr)
LOCKS = Path(".snakemake/locks")
if not (workflow.remote_exec or workflow.subprocess_exec) and LOCKS.is_dir() and any(LOCKS.iterdir()):
    print(
        "note: .snakemake/locks/ is not empty: another snakemake may be running in this folder."
        " If none is (e.g. after a kill -9), run `snakemake --unlock` once, then your command"
        " with --rerun-incomplete (README 'When things go wrong').",
        file=sys.stderr,
    )


onstart:
    record_run_identity(Path(RESULTS), RUN_IDENTITY)
    DATASET_DIGESTS.save()


# Chains (config keys `chains`, `run_chains`): iteration 0 + a trust policy. Every chain runs
# the same rules through the {chain} wildcard; chains with the same `start` share iteration 0.
CHAINS = S["run_chains"]
STARTS = {chain: S["chains"][chain]["start"] for chain in CHAINS}
L = Layout(RESULTS, STARTS)  # the results/ layout (workflow_lib/layout.py)
EXPORT_DIR = f"{RESULTS}/export"  # the self-contained tagger (rules/export.smk)
# chain_choice (workflow_lib/choice.py): `first` uses the first of run_chains; `cv` writes
# results/chosen/ (rule choose_chain), and with several chains the systems table and the
# export wait for that pick (one chain or `first`: nothing waits, the DAG is as before).
CHOICE_OUTPUTS = [L.chosen(n) for n in ("choice.csv", "chains.csv", "summary.csv")]
CHOSEN = {"choice": L.chosen("choice.csv")} if chooses_by_cv(S) else {}
METHOD = S["method"]
DEMO = not S["dataset_root"]
DATA_ROOT = L.demo_data() if DEMO else S["dataset_root"]
SPLITS = ["train", "test"]
# The unlabelled pool (dataset.unlabelled_audio_dir, workflow_lib/pool.py): validated and
# preprocessed as a split of its own, judged and trained on by the chains with `pool: true`
# only. Off (the default): no pool rule, no pool input, every job as before.
POOL = has_pool(S["dataset"])
POOL_CHAINS = [chain for chain in CHAINS if uses_pool(S, chain)]
# Chains whose fine-tuning smooths towards the confusion rows (soft_relabel.towards: confusion).
CONFUSION_CHAINS = [chain for chain in CHAINS if smooths_towards_confusion(S["chains"][chain])]
PREPROCESSED_SPLITS = SPLITS + (["pool"] if POOL else [])
# The task (workflow_lib/task.py): single-label, or multi-label (dataset.layout fsdkaggle2019:
# label sets, sigmoid outputs, lwlrap). Rules ask it, they do not branch on a flag.
TASK = task_of_settings(S)
# The dataset layout (workflow_lib/dataset_layouts.py): its config keys, its demo's files.
LAYOUT = layout_of(S["dataset"])
# Config keys of the layout's training listings (verified first): train_csv, or curated_csv
# and noisy_csv.
TRAIN_LISTINGS = train_listing_keys(S["dataset"])


def snakemake_workers():
    """Jobs Snakemake may run at once: --cores (the machine's cores when not given), and on a
    cluster no more than --jobs."""
    try:
        cores = int(workflow.cores)
    except (WorkflowError, TypeError):
        cores = os.cpu_count() or 1
    nodes = workflow.nodes
    return min(cores, int(nodes)) if isinstance(nodes, int) and 0 < nodes < sys.maxsize else cores


# Shards per split (preprocessing.shards: a number, or auto = from files and cores).
N_SHARDS = {
    split: resolve_shards(S["preprocessing"]["shards"], count, snakemake_workers())
    for split, count in listed_file_counts(S, None if DEMO else DATA_ROOT).items()
}


def shards_of(split):
    """The shard numbers of a split; the waveform copies are sharded as the training clips."""
    return list(range(N_SHARDS["train" if split == COPIES_SPLIT else split]))


PRESETS = METHOD["presets"]
VERSIONS = sorted({METHOD["nets"][p]["spectrogram"] for p in PRESETS})
# Waveform augmentation (preprocessing.waveform_augmentation, workflow_lib/waveform_augment.py):
# the copy jobs' settings, None when off (then no rule of the copies exists and the DAG is as
# without the option). NOISE_DIR: its noise folder, "" without noise.
WAVEFORM = waveform_augmentation_settings(S)
NOISE_DIR = WAVEFORM["noise_dir"] if WAVEFORM else ""


class Unrecorded:
    """A rule param Snakemake does not record, so changing it reruns no job.

    Snakemake records the params of builtin types (str, int, list, dict ...) with each output
    and, by its default --rerun-triggers (which include `params`), reruns a job when one
    differs. Any other object is left out of that record. The job still gets the value: shell
    commands format it with ``str()``. Used for what changes where or how a job runs, never
    what it computes: the checkout's path (CLI), the dataset root's spelling, the GPU lock
    folder, and the run-only settings of the training and prediction jobs
    (workflow_lib.job_settings.RUN_ONLY_SETTINGS; the recorded part is their `compared` param).
    """

    def __init__(self, text):
        self.text = str(text)

    def __str__(self):
        return self.text


# Every job's command starts with {params.cli}: `python -m workflow_lib.cli` with this
# repository first on PYTHONPATH for that one command only. So the same command works from the
# repository, from a host workflow that imports this one as a module, in a conda env and on a
# cluster node, and nothing is set for other workflows (no global shell.prefix; Snakemake's default
# bash strict mode, `set -euo pipefail`, stays in force). It is several shell words: write
# `{params.cli}` without the :q quoting of single values.
# WORKFLOW_JOBS_PER_GPU: compute.jobs_per_gpu, for the GPU claim of workflow_lib/devices.py.
CLI = Unrecorded(
    f"PYTHONPATH={shlex.quote(REPO)}${{PYTHONPATH:+:$PYTHONPATH}}"
    f" WORKFLOW_JOBS_PER_GPU={int(S['compute']['jobs_per_gpu'])} python -m workflow_lib.cli"
)
CONDA_ENV = "../envs/workflow.yaml"


def as_json(value):
    """Settings for a rule's params, as one shell-quotable JSON string."""
    return json.dumps(value, sort_keys=True)


def job_settings(value):
    """A job's settings (as_json) for its command line, unrecorded: its `compared` param
    (compared_json) is what Snakemake records, without the run-only settings."""
    return Unrecorded(as_json(value))


def compared_json(value):
    """The part of a job's settings that decides its results (job_settings.compared_settings)."""
    return as_json(compared_settings(value))


def dataset_file(key):
    """A file of the dataset, relative to its root ('' if the key is empty)."""
    name = S["dataset"][key]
    return f"{DATA_ROOT}/{name}" if name else ""


def present_dataset_files(keys):
    """The dataset files of these config keys that are set and present (the demo always
    writes them): inputs of the validation jobs."""
    files = [dataset_file(key) for key in keys]
    return [f for f in files if f and (DEMO or Path(f).is_file())]


def training_listing_files():
    """Further training lists and the true labels (the first list is validate_dataset's
    named input)."""
    return present_dataset_files([*TRAIN_LISTINGS[1:], "true_labels_csv"])


def test_listing_files():
    return present_dataset_files(["test_csv"])


# Per-split content fingerprints of a given dataset (workflow_lib/fingerprint.py: why content
# digests, what is and is not detected), params of the validation jobs. The demo dataset is
# made by rule demo_dataset, so its changes reach the DAG as that job's outputs. The digest
# cache is saved when a run starts (onstart): a dry run writes nothing.
DATASET_DIGESTS = DigestCache(None if DEMO else Path(RESULTS) / ".cache" / "dataset_digests.json")
DATASET_FINGERPRINTS = (
    {"train": "(demo dataset)", "test": "(demo dataset)"}
    if DEMO
    else split_fingerprints(DATA_ROOT, S["dataset"], DATASET_DIGESTS)
)


FOLDS = list(range(METHOD["folds"]))
ITERATIONS = list(range(METHOD["self_verification"]["iterations"] + 1))  # it0 ... itN
COMPUTE = S["compute"]
# Where jobs run, not what they compute: unrecorded (changing it reruns nothing).
GPU_LOCK_DIR = Unrecorded(COMPUTE["gpu_lock_dir"] or f"{RESULTS}/.gpu_locks")
GPUS_PER_TRAINING_JOB = gpus_per_training_job(COMPUTE)
TRAINING_THREADS = COMPUTE["training_threads"]


wildcard_constraints:
    chain="|".join(CHAINS),
    start="|".join(sorted(set(STARTS.values()))),
    preset="|".join(PRESETS),
    fold=r"\d+",


def chain_priority(wildcards):
    """The first chain of run_chains (the method) is scheduled first, then the next ..."""
    return len(CHAINS) - CHAINS.index(wildcards.chain)


def start_priority(wildcards):
    """Iteration 0 of a start: the priority of the most urgent chain that uses it."""
    return max(len(CHAINS) - n for n, chain in enumerate(CHAINS) if STARTS[chain] == wildcards.start)


def training_inputs(wildcards):
    """Spectrograms of the preset's version, the folds and the class list."""
    version = METHOD["nets"][wildcards.preset]["spectrogram"]
    return {
        "manifest": L.spectrograms(version, "train"),
        "folds": L.folds,
        "classes": L.data("classes.csv"),
    }


def copies_input(wildcards):
    """The training jobs' waveform copies of the preset's version (the job finds them beside
    its manifest, spectrograms/v{version}/train_copies.csv); none when off."""
    version = METHOD["nets"][wildcards.preset]["spectrogram"]
    return {"copies": L.spectrograms(version, COPIES_SPLIT)} if WAVEFORM else {}


def training_settings(preset, iteration, chain=None):
    """Settings of one training job: initial training (it0) or fine-tuning (it >= 1, of
    ``chain``: its consistency option; a pool chain's: the pool clips its previous iteration
    trusted; a chain smoothing towards the confusion rows: its previous iteration's
    valid_posteriors.csv) (workflow_lib.job_settings.fit_settings, with_pool,
    with_valid_posteriors)."""
    job = fit_settings(S, preset, iteration, chain)
    if iteration == 0:
        return job
    if chain in CONFUSION_CHAINS:
        job = with_valid_posteriors(job, L.valid_posteriors(chain, preset, iteration - 1))
    if chain not in POOL_CHAINS:
        return job
    version = METHOD["nets"][preset]["spectrogram"]
    return with_pool(job, L.pool_list(chain, preset, iteration - 1), L.spectrograms(version, "pool"))


def valid_posteriors_input(wildcards):
    """A fine-tuning job smoothing towards the confusion rows also reads the previous
    iteration's out-of-fold posteriors of the verified clips (other chains: nothing)."""
    if wildcards.chain not in CONFUSION_CHAINS:
        return {}
    it = int(wildcards.it) - 1
    return {"valid_posteriors": L.valid_posteriors(wildcards.chain, wildcards.preset, it)}


def pool_inputs(wildcards):
    """A pool chain's fine-tuning also reads the pool clips the previous iteration trusted and
    the pool's spectrograms (other chains: nothing)."""
    if wildcards.chain not in POOL_CHAINS:
        return {}
    version = METHOD["nets"][wildcards.preset]["spectrogram"]
    return {
        "pool_list": L.pool_list(wildcards.chain, wildcards.preset, int(wildcards.it) - 1),
        "pool_manifest": L.spectrograms(version, "pool"),
    }


def chain_models(chain, preset, iterations=ITERATIONS):
    """{(iteration, fold): best.pt} of a chain's fold models."""
    return {(i, k): L.model_file(chain, preset, k, i) for i in iterations for k in FOLDS}


def pairs(mapping):
    """{(iteration, fold): path} -> ['i:k=path', ...] (the CLI's form; quoted with :q)."""
    return [f"{i}:{k}={path}" for (i, k), path in mapping.items()]


def chain_histories(wildcards):
    return {
        (i, k): L.history_file(wildcards.chain, wildcards.preset, k, i) for i in ITERATIONS for k in FOLDS
    }


def self_verify_settings(chain, preset, iteration):
    """Settings of one trust job (workflow_lib.job_settings.trust_settings)."""
    return trust_settings(S, chain, preset, iteration)


SYSTEMS_SPEC = systems_spec(
    L,
    CHAINS,
    PRESETS,
    ITERATIONS,
    # a transductive chain's description says so (chain_note; other chains: as given)
    {c: "; ".join(filter(None, [S["chains"][c].get("description", ""), chain_note(S, c)])) for c in CHAINS},
    {c: S["chains"][c]["policy"] for c in CHAINS},
    pool_chains=POOL_CHAINS,
)

FINAL_OUTPUTS = [
    L.data("problems.csv"),
    *expand(L.spectrograms("{version}", "{split}"), version=VERSIONS, split=SPLITS),
    *[L.submission(c) for c in CHAINS],
    *[L.summary(c) for c in CHAINS],
    *[L.plot(c, f"{p}_training_curves.png") for c in CHAINS for p in PRESETS],
    *[L.plot(c, TASK.evaluation_plot) for c in CHAINS],
    L.systems("systems.csv"),
    L.systems("systems.png"),
    f"{RESULTS}/report/results.html",
    *(f"{EXPORT_DIR}/{name}" for name in BUNDLE_FILES.values()),
    *(CHOICE_OUTPUTS if S["chain_choice"] == "cv" else []),
]


def check_name_lengths():
    """Chain and preset names are folder and file names of the layout: one too long for a
    file name (255 bytes, less what the layout adds) stops the run at start, not at the
    first job that writes there (after hours of training). Called once every rule is
    defined (Snakefile): the bound comes from their output, log and benchmark patterns."""
    patterns = [*FINAL_OUTPUTS]
    for rule_ in workflow.rules:
        patterns += [*map(str, rule_.output), *map(str, rule_.log)]
        patterns += [str(rule_.benchmark)] if rule_.benchmark else []
    values = {
        "chain": CHAINS,
        "preset": PRESETS,
        "start": sorted(set(STARTS.values())),
        "fold": [str(FOLDS[-1])],
        "it": [str(ITERATIONS[-1])],
        "split": PREPROCESSED_SPLITS,
        "version": [str(v) for v in VERSIONS],
        "shard": [str(max(N_SHARDS.values()) - 1)],
    }
    problems = overlong_values(patterns, values, {"chain": "run_chains", "preset": "method.presets"})
    if problems:
        raise WorkflowError("invalid configuration:\n  - " + "\n  - ".join(problems))
