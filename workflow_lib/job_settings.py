"""Every job's settings, built once from the resolved config (issue 20, "one settings path").

Each builder is a pure function of the resolved settings (``config.resolve_settings``) and the
job's wildcards, returns plain JSON-able values, and is unit-tested without Snakemake. The rules
call these through ``rules/common.smk`` and pass the result to the job on its command line; the
CLI turns it into the job's one typed settings object, passed by keyword.

No third-party imports beyond numpy/pandas: the Snakefile imports this module at every start.
"""

from __future__ import annotations

import copy
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

from .choice import chooses_by_cv
from .dataset_layouts import DEFAULT_LAYOUT, LAYOUTS, POOL_KEYS, TRANSDUCTIVE_NOTE, layout_of, transductive
from .policies import policy_named
from .soft_targets import SoftRelabelSettings
from .task import SINGLE, Task, task_of_settings

# --- data: dataset validation and demo data jobs ---------------------------------------------


def validation_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The validation jobs' settings (rules validate_dataset, validate_test): the ``dataset``
    settings the chosen layout reads.

    Keys of the other layouts are left out, and so is ``layout`` when it is the default: a
    single-label run's settings, and so its validation jobs, stay exactly as they were before
    the multi-label layout existed (no rerun of a finished run).
    """
    dataset = settings["dataset"]
    layout = layout_of(dataset)
    other = {key for name, entry in LAYOUTS.items() if name != layout.name for key in entry.keys}
    other.update(POOL_KEYS)  # the pool's own job reads them (pool_validation_settings)
    if layout.name == DEFAULT_LAYOUT:
        other.add("layout")
    return {key: value for key, value in dataset.items() if key not in other}


def pool_validation_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The pool's validation job's settings (rule validate_pool): the pool keys, the symlink
    rule the training audio is validated with (the pool is untrusted input too), the layout
    (how a true label set is written) and, when the pool is the test audio, its folder (never
    the test CSV: its labels are not read for the pool)."""
    dataset = settings["dataset"]
    pool = {key: dataset[key] for key in POOL_KEYS if key in dataset}
    return {
        **pool,
        "layout": layout_of(dataset).name,
        "follow_external_symlinks": bool(dataset.get("follow_external_symlinks", False)),
        **({"test_audio_dir": dataset["test_audio_dir"]} if pool.get("unlabelled_test_audio") else {}),
    }


def demo_data_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The demo-data job's settings (rule demo_dataset): the ``demo_data`` section, plus the
    ``task`` whose demo to write when it is not single-label (so a single-label run's demo
    job, and its recorded params, stay as they were)."""
    task = task_of_settings(settings)
    extra = {} if task.name == SINGLE.name else {"task": task.name}
    return {**settings["demo_data"], **extra}


# --- preprocessing: the spectrogram shards and the waveform copies ----------------------------

#: ``preprocessing.waveform_augmentation`` keys with their defaults (workflow_lib/waveform_augment.py);
#: ``copies: 0`` is off.
WAVEFORM_AUGMENTATION_DEFAULTS: dict[str, Any] = {
    "copies": 0,
    "time_stretch": [0.8, 1.0],
    "shift": 0.5,
    "rollover": True,
    "gain_db": [-6.0, 6.0],
    "noise_dir": "",
    "snr_db": [3.0, 30.0],
}


def preprocessing_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The preprocess_shard jobs' settings: ``preprocessing`` less ``waveform_augmentation``
    (the copies have jobs of their own), so the originals' jobs, and Snakemake's record of
    them, are the same with augmentation on or off and turning it on recomputes no original."""
    return {k: v for k, v in settings["preprocessing"].items() if k != "waveform_augmentation"}


def waveform_augmentation_settings(settings: Mapping[str, Any]) -> dict[str, Any] | None:
    """The copy jobs' settings (waveform_augment.WaveformAugmentation): every key resolved and
    the copies' base seed, derived from ``method.seed``; None when off (absent or copies 0)."""
    given = settings["preprocessing"].get("waveform_augmentation") or {}
    resolved = {**WAVEFORM_AUGMENTATION_DEFAULTS, **given}
    if resolved["copies"] == 0:
        return None
    ranges = {k: [float(v) for v in resolved[k]] for k in ("time_stretch", "gain_db", "snr_db")}
    seed = derive_seed(settings["method"]["seed"], "waveform_augmentation")
    return {**resolved, **ranges, "shift": float(resolved["shift"]), "seed": seed}


# --- training: initial training and fine-tuning jobs -----------------------------------------


def derive_seed(base: int, *parts: object) -> int:
    """A stable per-job seed: the same job always gets the same one, different jobs differ."""
    return (base + zlib.crc32("/".join(map(str, parts)).encode())) % (2**31)


def fit_settings(
    settings: Mapping[str, Any], preset: str, iteration: int, chain: str | None = None
) -> dict[str, Any]:
    """Settings of one training job: initial training (iteration 0) or fine-tuning (>= 1).

    ``chain``: the fine-tuning job's chain, whose ``consistency`` option (if set) adds
    ``fit.consistency`` (:func:`consistency_settings`), ``soft_relabel`` ``fit.soft_relabel``
    and ``mixup`` a mixup alpha (:func:`mixup_settings`); iteration-0 jobs are shared by the
    chains with the same start, so these options never apply there.

    Returns plain JSON-able values (the rule passes them on the command line, the train command
    turns them into a ``stages.TrainingJob``). ``task`` names the task for label sets only:
    the rules record these settings (less :data:`RUN_ONLY_SETTINGS`) and rerun a job whose
    record differs, so single-label jobs keep the record they had before tasks existed.
    """
    method, compute = settings["method"], settings["compute"]
    net = method["nets"][preset]
    initial = iteration == 0
    stage = method["initial_training"] if initial else method["fine_tuning"]
    fit = {
        "epochs": stage["epochs"],
        "constant_epochs": stage["constant_epochs"],
        "lr": stage["lr"] if initial else net["finetune_lr"],
        "batch_size": net["batch_size"],
        "excerpt_frames": method["excerpt_frames"],
        "mixup_alpha": net["mixup_alpha"] if initial else None,
        "seed": derive_seed(method["seed"], preset, iteration),
        "eval_batch_size": compute["eval_batch_size"],
        "amp": compute["amp"],
    }
    augment = augment_settings(net.get("augment"), initial)
    if augment is not None:  # only when on: every other job's settings stay as they were
        fit["augment"] = augment
    spec = settings["chains"].get(chain, {}) if chain is not None and not initial else {}
    fit.update(chain_fit_options(spec, net["mixup_alpha"]))
    if "augment" in fit and fit["augment"] is None:  # the chain's augment is all off: none
        del fit["augment"]
    dropout = [method["dropout"]["conv"], method["dropout"]["head"]]
    net = {key: value for key, value in net.items() if key != "augment"}  # a fit setting
    job = {
        "preset": preset,
        "net": {**net, "dropout": dropout},
        "fit": fit,
        "frames": method["spectrogram_frames"],
        "device": compute["device"],
        "run": {
            "checkpoint_every": compute["checkpoint_every"],
            "compile": compute["compile"],
            "cudnn_benchmark": compute["cudnn_benchmark"],
        },
    }
    waveform = waveform_augmentation_settings(settings)
    if waveform is not None:  # only when on: the job trains on the copies too (stages.with_copies)
        job["copies"] = waveform
    task = task_of_settings(settings)
    return job if task is SINGLE else {**job, "task": task.name}


def chain_fit_options(spec: Mapping[str, Any], net_mixup_alpha: float | None) -> dict[str, Any]:
    """The fit settings a chain's fine-tuning options add (``chains.<name>``), each only when
    the chain sets it, so every other job's settings and record stay as they were."""
    options: dict[str, Any] = {}
    if "consistency" in spec:
        options["consistency"] = consistency_settings(spec["consistency"])
    if "soft_relabel" in spec:  # soft relabelling (workflow_lib/soft_targets.py)
        # the record of the fit settings: the default towards (the prior), named or not, is left
        # out, so the jobs keep the record they had before the key existed
        options["soft_relabel"] = SoftRelabelSettings(**spec["soft_relabel"]).record()
    if "mixup" in spec:  # mixup in fine-tuning, partners from the batch or elsewhere
        options.update(mixup_settings(spec["mixup"], net_mixup_alpha))
    if "augment" in spec:  # in place of the preset's fine-tuning augmentation; None: all off
        options["augment"] = augment_settings({**spec["augment"], "fine_tuning": True}, initial=False)
    return options


#: The keys of ``method.nets.<preset>.augment`` a training job reads (augment.AUGMENT_KEYS;
#: this module imports no torch), with their "off" values.
AUGMENT_OFF: dict[str, Any] = {
    "time_masks": 0,
    "time_mask_width": 0,
    "freq_masks": 0,
    "freq_mask_width": 0,
    "noise_std": 0.0,
    "roll": False,
}


def augment_settings(augment: Mapping[str, Any] | None, initial: bool) -> dict[str, Any] | None:
    """A training job's ``fit.augment`` from a preset's ``augment`` mapping: every key
    (absent ones off), or None when it is absent, all off, or the job fine-tunes and the
    mapping's ``fine_tuning`` is not true (the default: like the paper's mixup, augmentation
    belongs to initial training; fine-tuning adapts the network to cleaner labels)."""
    if augment is None or not (initial or augment.get("fine_tuning", False)):
        return None
    resolved = {key: augment.get(key, off) for key, off in AUGMENT_OFF.items()}
    masks = any(resolved[f"{axis}_masks"] and resolved[f"{axis}_mask_width"] for axis in ("time", "freq"))
    return resolved if masks or resolved["noise_std"] > 0 or resolved["roll"] else None


#: The defaults of ``chains.<name>.consistency`` (besides ``weight``, which it must set).
CONSISTENCY_DEFAULTS: dict[str, Any] = {"rampup_epochs": 0, "unlabelled": True}


def consistency_settings(consistency: Mapping[str, Any]) -> dict[str, Any]:
    """A fine-tuning job's ``fit.consistency`` from a chain's ``consistency`` mapping: every key
    resolved (``augment``: every key of :data:`AUGMENT_OFF`, absent ones off, so with no
    augmentation the two views differ by dropout only), the keys of
    workflow_lib.consistency.ConsistencySettings."""
    augment = consistency.get("augment", {})
    return {
        "weight": consistency["weight"],
        **{key: consistency.get(key, default) for key, default in CONSISTENCY_DEFAULTS.items()},
        "augment": {key: augment.get(key, off) for key, off in AUGMENT_OFF.items()},
    }


def mixup_settings(mixup: Mapping[str, Any], preset_alpha: float) -> dict[str, Any]:
    """A fine-tuning job's mixup keys from a chain's ``mixup`` mapping: ``mixup_alpha`` (the
    chain's ``alpha``, absent: the preset's own, ``method.nets.<preset>.mixup_alpha``) and,
    for partners other than the batch, ``mixup_partners`` (``batch`` adds no key, so such a
    job's settings are those of in-batch mixup however it was written)."""
    partners = mixup.get("partners", "batch")
    extra = {} if partners == "batch" else {"mixup_partners": partners}
    return {"mixup_alpha": mixup.get("alpha", preset_alpha), **extra}


#: Settings of a job that change how it runs, never what it computes (paths into the job
#: settings of :func:`fit_settings` and of the prediction job): the checkpoint interval and
#: torch.compile (``run``), the whole-clip evaluation batch (``fit.eval_batch_size``, the
#: prediction job's ``batch_size``; networks in eval mode give each clip the same output in
#: any batch). Rules pass them to the job unrecorded, so changing one retrains nothing.
RUN_ONLY_SETTINGS: tuple[tuple[str, ...], ...] = (("run",), ("fit", "eval_batch_size"), ("batch_size",))


def compared_settings(job: Mapping[str, Any]) -> dict[str, Any]:
    """The job settings less :data:`RUN_ONLY_SETTINGS`: what Snakemake records and compares
    (a change reruns the job)."""
    kept = copy.deepcopy(dict(job))
    for path in RUN_ONLY_SETTINGS:
        parent = kept
        for key in path[:-1]:
            parent = parent.get(key) if isinstance(parent, dict) else None
        if isinstance(parent, dict):
            parent.pop(path[-1], None)
    return kept


# --- trust: self-verification jobs (trust policies) ------------------------------------------


def chain_policy(settings: Mapping[str, Any], chain: str) -> dict[str, Any]:
    """The resolved trust-policy settings of one chain (policies.PolicySettings.from_mapping).

    The caps and correction every policy takes, and the policy's own keys (the registry's);
    a key the chain leaves out that the policy defaults to the method's (``threshold``) is
    method.self_verification's, so the chain ``self_verification`` is the paper's rule with the
    run preset's values. Other absent keys: the parameter's default, in the job.
    """
    spec = settings["chains"][chain]
    sv = settings["method"]["self_verification"]
    policy = policy_named(spec["policy"])
    resolved = {
        "name": policy.name,
        "max_per_class": spec.get("max_per_class", sv["max_per_class"]),
        "max_fraction": spec.get("max_fraction"),
        "correct_labels": spec.get("correct_labels", False),
        "min_trusted_share": settings["trust"]["min_trusted_share"],
    }
    if "correct_threshold" in spec:
        resolved["correct_threshold"] = spec["correct_threshold"]
    from_method = policy.method_defaults()
    for key in policy.keys:
        if key in spec:
            resolved[key] = spec[key]
        elif key in from_method:
            resolved[key] = sv[from_method[key]]
    return resolved


def trust_settings(settings: Mapping[str, Any], chain: str, preset: str, iteration: int) -> dict[str, Any]:
    """Settings of one trust job (iteration ``iteration`` of ``chain``'s ``preset`` models):
    the task, the K-excerpt judging, the chain's policy and where in the chain it runs. The
    keys are self_verify.TrustSettings' fields (the job builds it from them once).

    The seed does not depend on the chain, so every chain judges the same excerpts.
    """
    method, compute = settings["method"], settings["compute"]
    sv = method["self_verification"]
    return {
        "task": task_of_settings(settings).name,
        "excerpts": sv["excerpts"],
        "excerpt_frames": method["excerpt_frames"],
        "seed": derive_seed(method["seed"], "self_verify", preset, iteration),
        "amp": compute["amp"],
        "policy": chain_policy(settings, chain),
        "iteration": iteration,
        "iterations": sv["iterations"],
        "frames": method["spectrogram_frames"],
        "device": compute["device"],
    }


def uses_pool(settings: Mapping[str, Any], chain: str) -> bool:
    """Whether ``chain`` judges and trains on the unlabelled pool (``chains.<name>.pool``; the
    config check requires dataset.unlabelled_audio_dir with it)."""
    return bool(settings["chains"][chain].get("pool", False))


def smooths_towards_confusion(chain: Mapping[str, Any]) -> bool:
    """Whether a chain (``chains.<name>``) smooths its fine-tuning targets towards the confusion
    rows of the previous iteration's out-of-fold posteriors (``soft_relabel.towards``), so its
    jobs read that iteration's ``valid_posteriors.csv`` and it runs in single-label mode only."""
    return chain.get("soft_relabel", {}).get("towards") == "confusion"


def with_valid_posteriors(job: Mapping[str, Any], valid_posteriors: str) -> dict[str, Any]:
    """A fine-tuning job's settings (:func:`fit_settings`) plus ``valid_posteriors``: the file
    its confusion rows come from. Only the chains of :func:`smooths_towards_confusion` get the
    key (as only pool chains get ``pool``), so every other job's settings, and the command line
    of the rule, stay as they were."""
    return {**job, "valid_posteriors": valid_posteriors}


def pool_trust_settings(
    settings: Mapping[str, Any], chain: str, preset: str, iteration: int
) -> dict[str, Any]:
    """Settings of one pool judging job (rule judge_pool): :func:`trust_settings` (the chain's
    policy, caps and K-excerpt judging) with a seed of its own, so judging the pool never
    shifts the excerpts of the unverified clips' judgement."""
    trust = trust_settings(settings, chain, preset, iteration)
    return {**trust, "seed": derive_seed(settings["method"]["seed"], "pool", preset, iteration)}


def with_pool(job: Mapping[str, Any], pool_list: str, pool_manifest: str) -> dict[str, Any]:
    """A pool chain's fine-tuning job settings (:func:`fit_settings`) plus ``pool``: the
    trusted pool clips of the previous iteration and the pool's spectrogram manifest. Only
    pool chains get the key, so every other job's settings stay as they were."""
    return {**job, "pool": {"list": pool_list, "manifest": pool_manifest}}


# --- prediction, fusion, evaluation, export --------------------------------------------------


def task_entry(task: Task) -> dict[str, str]:
    """The ``task`` key of a job's JSON settings: ``{"task": "multi-label"}``, or nothing for
    single-label, the default every reader assumes (``task_named(s.get("task", ...))``), so
    the settings of single-label jobs, and with them Snakemake's record of finished jobs, stay
    as they were."""
    return {} if task is SINGLE else {"task": task.name}


def prediction_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The predict job's settings: the length-fixed spectrogram frames, the evaluation batch
    size and the device (the task comes from the checkpoints, stages.load_fold_models), and
    ``tta_shifts`` only when test-time augmentation is on (method.tta_shifts > 0): with it off
    the settings, and Snakemake's record of finished predict jobs, stay as they were."""
    shifts = settings["method"].get("tta_shifts", 0)
    return {
        "frames": settings["method"]["spectrogram_frames"],
        "batch_size": settings["compute"]["eval_batch_size"],
        "device": settings["compute"]["device"],
    } | ({"tta_shifts": shifts} if shifts else {})


def fusion_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The fuse job's settings (fusion.FusionSettings.from_json): config ``method.fusion`` and
    the task (:func:`task_entry`)."""
    return {**settings["method"]["fusion"], **task_entry(task_of_settings(settings))}


def chain_note(settings: Mapping[str, Any], chain: str) -> str:
    """What every table of ``chain`` must say about its test figures: the transductive note
    when the test audio was its pool (dataset.unlabelled_test_audio and ``pool: true``), else
    '' (and no job setting changes)."""
    return TRANSDUCTIVE_NOTE if transductive(settings["dataset"]) and uses_pool(settings, chain) else ""


def chain_fusion_settings(settings: Mapping[str, Any], chain: str) -> dict[str, Any]:
    """:func:`fusion_settings` of ``chain``'s fuse job, with its ``note`` only when it has one."""
    note = chain_note(settings, chain)
    return fusion_settings(settings) | ({"note": note} if note else {})


def chain_evaluation_arguments(settings: Mapping[str, Any], chain: str) -> list[str]:
    """:func:`task_arguments` of ``chain``'s evaluate job, with ``--note`` only when it has one."""
    note = chain_note(settings, chain)
    return task_arguments(settings) + (["--note", note] if note else [])


def task_arguments(settings: Mapping[str, Any]) -> list[str]:
    """The ``--task`` option of the evaluate, summary and systems commands."""
    return ["--task", task_of_settings(settings).name]


def chain_choice_spec(
    selections: Mapping[str, Mapping[str, str]], summaries: Mapping[str, str]
) -> dict[str, Any]:
    """The choose-chain job's ``--spec``: {"selections": {chain: {preset: selection CSV}},
    "summaries": {chain: summary CSV}} (workflow_lib/choice.py reads nothing else)."""
    return {
        "selections": {c: dict(by_preset) for c, by_preset in selections.items()},
        "summaries": dict(summaries),
    }


def tagger_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The part of the resolved workflow settings a tagger needs (JSON-able): the export job's
    settings, and what ``tag`` reads from a run's config."""
    method, pre = settings["method"], settings["preprocessing"]
    chains = settings["run_chains"]
    # chain_choice: cv: the chain is read from results/chosen/choice.csv (export.run_layout)
    by_cv = {"chain_choice": "cv", "starts": {c: settings["chains"][c]["start"] for c in chains}}
    return (
        task_entry(task_of_settings(settings))
        | {
            "sample_rate": pre["sample_rate"],
            "sox_effects": list(pre["sox_effects"]),
            "spectrograms": pre["spectrograms"],
            "frames": method["spectrogram_frames"],
            "folds": method["folds"],
            "presets": list(method["presets"]),
            "nets": _nets(method, method["presets"]),
            "fusion": method["fusion"]["method"],
            "batch_size": settings["compute"]["eval_batch_size"],
            "dataset": settings["dataset_root"] or "the synthetic demo dataset",
            # the exported chain (the first of run_chains) and its iteration-0 start (layout.py)
            "chain": chains[0],
            "start": settings["chains"][chains[0]]["start"],
        }
        | (by_cv if chooses_by_cv(settings) else {})
    )


def _nets(method: Mapping[str, Any], presets: Sequence[str]) -> dict[str, dict[str, Any]]:
    """{preset: its spectrogram version and width}: what the tagger checks checkpoints against."""
    return {
        p: {"spectrogram": method["nets"][p]["spectrogram"], "width": method["nets"][p]["width"]}
        for p in presets
    }
