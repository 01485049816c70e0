# Baselines scored like the method, in the same run (config key `baselines`, off by default;
# workflow_lib/baselines.py). Per preset, on the same folds, network and training budget:
#   (a)  verified_only    verified clips only: it0, then the method's fine-tuning iterations
#   (b)  noisy_it0        iteration 0: all clips with their given labels, no self-verification
#   (b') noisy_finetuned  (b) continued with the method's fine-tuning iterations, every label trusted
#   (c)  the method       the chosen iteration (results/selection, results/predictions)
#   (d)  no_threshold     with baselines.no_threshold: self-verification with the threshold off
#                         (the authors' script), sharing it0 with (b)/(c), its own it1 ... itN
# (a), (b') and (d) are chains it0 ... itN, each iteration chosen by the method's model selection.
# -> results/baselines/systems.csv (one row per system), iterations.csv, systems.png

from workflow_lib import baselines as B  # noqa: E402  (paths and the systems spec)

BASE = f"{RESULTS}/baselines"
NO_THRESHOLD = bool(BASELINES["enabled"] and BASELINES["no_threshold"])
SYSTEMS_SPEC = B.systems_spec(RESULTS, PRESETS, ITERATIONS, NO_THRESHOLD)
CHAINS = "verified_only|noisy|no_threshold" if NO_THRESHOLD else "verified_only|noisy"


rule baseline_train_list:
    input:
        folds=f"{RESULTS}/folds.csv",
    output:
        f"{BASE}/{{kind}}_list.csv",
    wildcard_constraints:
        kind="verified_only|all_clips",
    params:
        cli=CLI,
        kind=lambda wildcards: "noisy" if wildcards.kind == "all_clips" else wildcards.kind,
    log:
        f"{RESULTS}/logs/baselines/{{kind}}_list.log",
    conda:
        CONDA_ENV
    shell:
        "{params.cli} baseline-list --kind {params.kind:q} --folds {input.folds}"
        " --out {output} 2> {log}"


rule train_verified_only:
    input:
        unpack(training_inputs),
        train_list=f"{BASE}/verified_only_list.csv",
    output:
        best=f"{BASE}/{{preset}}/verified_only/models/fold{{fold}}/it0/best.pt",
        history=f"{BASE}/{{preset}}/verified_only/models/fold{{fold}}/it0/history.csv",
    wildcard_constraints:
        preset=r"[^/]+",
        fold=r"\d+",
    params:
        cli=CLI,
        settings=lambda wildcards: as_json(training_settings(wildcards.preset, 0)),
        out_dir=lambda wildcards, output: Path(output.best).parent,
        lock_dir=GPU_LOCK_DIR,
    threads: TRAINING_THREADS
    resources:
        gpu=GPUS_PER_TRAINING_JOB,
    log:
        f"{RESULTS}/logs/baselines/train_verified_only/{{preset}}_fold{{fold}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/baselines/train_verified_only/{{preset}}_fold{{fold}}.tsv"
    conda:
        CONDA_ENV
    shell:
        "{params.cli} train --manifest {input.manifest} --folds {input.folds}"
        " --classes {input.classes} --fold {wildcards.fold} --out-dir {params.out_dir:q}"
        " --threads {threads} --lock-dir {params.lock_dir:q} --train-list {input.train_list}"
        " --settings {params.settings:q} 2> {log}"


rule baseline_test_posteriors:
    input:
        unpack(
            lambda wildcards: {"selection": f"{BASE}/{wildcards.preset}/{wildcards.system}/selection.csv"}
            if wildcards.system != "noisy_it0"
            else {}
        ),
        models=lambda wildcards: list(
            B.system_models(RESULTS, wildcards.preset, wildcards.system, FOLDS, ITERATIONS).values()
        ),
        test_manifest=lambda wildcards: f"{RESULTS}/spectrograms/v{METHOD['nets'][wildcards.preset]['spectrogram']}/test.csv",
        classes=f"{RESULTS}/data/classes.csv",
    output:
        f"{BASE}/{{preset}}/{{system}}/test.csv",
    wildcard_constraints:
        preset=r"[^/]+",
        system=f"noisy_it0|{CHAINS}",
    params:
        cli=CLI,
        models=lambda wildcards: list(
            f"{i}:{k}={path}"
            for (i, k), path in B.system_models(RESULTS, wildcards.preset, wildcards.system, FOLDS, ITERATIONS).items()
        ),
        selection=lambda wildcards, input: ["--selection", input.selection] if "selection" in input.keys() else [],
        settings=as_json(prediction_settings()),
        lock_dir=GPU_LOCK_DIR,
    threads: TRAINING_THREADS
    resources:
        gpu=GPUS_PER_TRAINING_JOB,
    log:
        f"{RESULTS}/logs/baselines/test_posteriors/{{preset}}_{{system}}.log",
    conda:
        CONDA_ENV
    shell:
        "{params.cli} baseline-predict --models {params.models:q} {params.selection:q}"
        " --test-manifest {input.test_manifest} --classes {input.classes} --out {output}"
        " --threads {threads} --lock-dir {params.lock_dir:q} --settings {params.settings:q} 2> {log}"


if NO_THRESHOLD:

    rule self_verify_no_threshold:
        input:
            unpack(training_inputs),
            models=lambda wildcards: [B.chain_file(RESULTS, wildcards.preset, "no_threshold", k, wildcards.it) for k in FOLDS],
            train=f"{RESULTS}/data/train.csv",
        output:
            decisions=f"{BASE}/{{preset}}/no_threshold/self_verify/it{{it}}/decisions.csv",
            per_class=f"{BASE}/{{preset}}/no_threshold/self_verify/it{{it}}/per_class.csv",
            train_list=f"{BASE}/{{preset}}/no_threshold/self_verify/it{{it}}/train_self_verified.csv",
        wildcard_constraints:
            preset=r"[^/]+",
            it=r"\d+",
        params:
            cli=CLI,
            models=lambda wildcards, input: list(f"{k}={path}" for k, path in zip(FOLDS, input.models)),
            settings=lambda wildcards: as_json(
                self_verify_settings(wildcards.preset, int(wildcards.it), threshold_off=True)
            ),
            out_dir=lambda wildcards, output: Path(output.decisions).parent,
            lock_dir=GPU_LOCK_DIR,
        threads: TRAINING_THREADS
        resources:
            gpu=GPUS_PER_TRAINING_JOB,
        log:
            f"{RESULTS}/logs/baselines/self_verify_no_threshold/{{preset}}_it{{it}}.log",
        benchmark:
            f"{RESULTS}/benchmarks/baselines/self_verify_no_threshold/{{preset}}_it{{it}}.tsv"
        conda:
            CONDA_ENV
        shell:
            "{params.cli} self-verify --models {params.models:q} --manifest {input.manifest}"
            " --folds {input.folds} --classes {input.classes} --train {input.train}"
            " --out-dir {params.out_dir:q} --threads {threads} --lock-dir {params.lock_dir:q}"
            " --settings {params.settings:q} 2> {log}"


rule fine_tune_chain:
    input:
        unpack(training_inputs),
        train_list=lambda wildcards: B.chain_list(RESULTS, wildcards.preset, wildcards.chain, int(wildcards.it) - 1),
        init=lambda wildcards: B.chain_file(RESULTS, wildcards.preset, wildcards.chain, wildcards.fold, int(wildcards.it) - 1),
    output:
        best=f"{BASE}/{{preset}}/{{chain}}/models/fold{{fold}}/it{{it}}/best.pt",
        history=f"{BASE}/{{preset}}/{{chain}}/models/fold{{fold}}/it{{it}}/history.csv",
    wildcard_constraints:
        preset=r"[^/]+",
        chain=CHAINS,
        fold=r"\d+",
        it=r"[1-9]\d*",
    params:
        cli=CLI,
        settings=lambda wildcards: as_json(training_settings(wildcards.preset, int(wildcards.it))),
        out_dir=lambda wildcards, output: Path(output.best).parent,
        lock_dir=GPU_LOCK_DIR,
    threads: TRAINING_THREADS
    resources:
        gpu=GPUS_PER_TRAINING_JOB,
    log:
        f"{RESULTS}/logs/baselines/fine_tune_{{chain}}/{{preset}}_fold{{fold}}_it{{it}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/baselines/fine_tune_{{chain}}/{{preset}}_fold{{fold}}_it{{it}}.tsv"
    conda:
        CONDA_ENV
    shell:
        "{params.cli} train --manifest {input.manifest} --folds {input.folds}"
        " --classes {input.classes} --fold {wildcards.fold} --out-dir {params.out_dir:q}"
        " --threads {threads} --lock-dir {params.lock_dir:q} --train-list {input.train_list}"
        " --init {input.init} --settings {params.settings:q} 2> {log}"


rule select_chain:
    input:
        histories=lambda wildcards: [
            B.chain_file(RESULTS, wildcards.preset, wildcards.chain, k, i, "history.csv")
            for i in ITERATIONS
            for k in FOLDS
        ],
    output:
        f"{BASE}/{{preset}}/{{chain}}/selection.csv",
    wildcard_constraints:
        preset=r"[^/]+",
        chain=CHAINS,
    params:
        cli=CLI,
        histories=lambda wildcards, input: list(
            f"{i}:{k}={path}" for (i, k), path in zip([(i, k) for i in ITERATIONS for k in FOLDS], input.histories)
        ),
    log:
        f"{RESULTS}/logs/baselines/select_{{chain}}/{{preset}}.log",
    conda:
        CONDA_ENV
    shell:
        "{params.cli} select --histories {params.histories:q} --out {output} 2> {log}"


rule baseline_systems:
    input:
        B.spec_files(SYSTEMS_SPEC),
        test=f"{RESULTS}/data/test.csv",
        classes=f"{RESULTS}/data/classes.csv",
    output:
        systems=f"{BASE}/systems.csv",
        iterations=f"{BASE}/iterations.csv",
        plot=report(f"{BASE}/systems.png", caption="../report/systems.rst", category="1. Results"),
    params:
        cli=CLI,
        spec=as_json(SYSTEMS_SPEC),
    log:
        f"{RESULTS}/logs/baselines/systems.log",
    conda:
        CONDA_ENV
    shell:
        "{params.cli} baseline-systems --test {input.test} --classes {input.classes}"
        " --spec {params.spec:q} --out {output.systems} --out-iterations {output.iterations}"
        " --out-plot {output.plot} 2> {log}"
