# Per chain: automatic model selection per preset, prediction with the chosen iteration's fold
# models, fusion of the presets, the submission, the evaluation when the test labels are known
# and the summary. Then one systems table for every chain.
# The task (workflow_lib/task.py; multi-label for dataset.layout fsdkaggle2019): the fuse settings
# carry it and the evaluate/summary/systems jobs get --task (lwlrap; no confusion matrix).
TASK_ARGUMENTS = task_arguments(S)


rule select_iteration:
    input:
        histories=lambda wildcards: list(chain_histories(wildcards).values()),
    output:
        L.selection("{chain}", "{preset}"),
    log:
        L.log("select_iteration/{chain}/{preset}"),
    priority: chain_priority
    conda:
        CONDA_ENV
    params:
        cli=CLI,
        histories=lambda wildcards: pairs(chain_histories(wildcards)),
        tolerance=S["trust"]["selection_tolerance"],
    shell:
        "{params.cli} select --histories {params.histories:q}"
        " --tolerance {params.tolerance:q} --out {output} 2> {log}"


rule predict:
    input:
        unpack(training_inputs),
        selection=L.selection("{chain}", "{preset}"),
        models=lambda wildcards: list(chain_models(wildcards.chain, wildcards.preset).values()),
        test_manifest=lambda wildcards: L.spectrograms(
            METHOD["nets"][wildcards.preset]["spectrogram"], "test"
        ),
    output:
        test=L.predictions("{chain}", "{preset}", "test"),
        valid=L.predictions("{chain}", "{preset}", "valid_oof"),
    log:
        L.log("predict/{chain}/{preset}"),
    benchmark:
        L.benchmark("predict/{chain}/{preset}")
    priority: chain_priority
    conda:
        CONDA_ENV
    threads: TRAINING_THREADS
    resources:
        gpu=GPUS_PER_TRAINING_JOB,
    params:
        cli=CLI,
        models=lambda wildcards: pairs(chain_models(wildcards.chain, wildcards.preset)),
        settings=job_settings(prediction_settings(S)),
        compared=compared_json(prediction_settings(S)),
        lock_dir=GPU_LOCK_DIR,
    shell:
        "{params.cli} predict --selection {input.selection} --models {params.models:q}"
        " --train-manifest {input.manifest} --test-manifest {input.test_manifest}"
        " --folds {input.folds} --classes {input.classes} --out-test {output.test}"
        " --out-valid {output.valid} --threads {threads} --lock-dir {params.lock_dir:q}"
        " --settings {params.settings:q} 2> {log}"


rule fuse:
    input:
        tests=lambda wildcards: [L.predictions(wildcards.chain, p, "test") for p in PRESETS],
        valids=lambda wildcards: [L.predictions(wildcards.chain, p, "valid_oof") for p in PRESETS],
        classes=L.data("classes.csv"),
        test_manifest=L.spectrograms(VERSIONS[0], "test"),
    output:
        probs=L.fused("{chain}", "fused_test.csv"),
        weights=L.fused("{chain}", "fusion_weights.csv"),
        submission=L.submission("{chain}"),
        status=L.submission_status("{chain}"),
    log:
        L.log("fuse/{chain}"),
    priority: chain_priority
    conda:
        CONDA_ENV
    params:
        cli=CLI,
        tests=lambda wildcards, input: [f"{p}={f}" for p, f in zip(PRESETS, input.tests)],
        valids=lambda wildcards, input: [f"{p}={f}" for p, f in zip(PRESETS, input.valids)],
        settings=lambda wildcards: as_json(chain_fusion_settings(S, wildcards.chain)),
    shell:
        "{params.cli} fuse --tests {params.tests:q} --valids {params.valids:q}"
        " --classes {input.classes} --out-probs {output.probs} --out-weights {output.weights}"
        " --out-submission {output.submission} --test-manifest {input.test_manifest}"
        " --out-status {output.status} --settings {params.settings:q} 2> {log}"


rule evaluate:
    input:
        test=L.data("test.csv"),
        classes=L.data("classes.csv"),
        presets=lambda wildcards: [L.predictions(wildcards.chain, p, "test") for p in PRESETS],
        fused=L.fused("{chain}", "fused_test.csv"),
    output:
        **({"confusion": L.evaluation("{chain}", "confusion.csv")} if TASK.confusion else {}),
        summary=L.evaluation("{chain}", "summary.csv"),
        per_class=L.evaluation("{chain}", "per_class.csv"),
    log:
        L.log("evaluate/{chain}"),
    priority: chain_priority
    conda:
        CONDA_ENV
    params:
        cli=CLI,
        systems=lambda wildcards, input: list(
            [f"{p}={f}" for p, f in zip(PRESETS, input.presets)] + [f"fusion={input.fused}"]
        ),
        out_dir=lambda wildcards, output: Path(output.summary).parent,
        task=lambda wildcards: chain_evaluation_arguments(S, wildcards.chain),
    shell:
        "{params.cli} evaluate --test {input.test} --classes {input.classes}"
        " --systems {params.systems:q} --out-dir {params.out_dir:q} {params.task:q} 2> {log}"


rule summary:
    input:
        selections=lambda wildcards: [L.selection(wildcards.chain, p) for p in PRESETS],
        self_verify=lambda wildcards: [
            L.trust_file(wildcards.chain, p, i, TRUST_FILES["per_class"])
            for p in PRESETS
            for i in ITERATIONS[:-1]
        ],
        scores=L.evaluation("{chain}", "summary.csv"),
        status=L.submission_status("{chain}"),
        classes=L.data("classes.csv"),
        # a pool chain's pool tables, read beside the trust tables (other chains: none)
        pool=lambda wildcards: [
            L.trust_file(wildcards.chain, p, i, POOL_FILES["per_class"])
            for p in PRESETS
            for i in ITERATIONS[:-1]
            if wildcards.chain in POOL_CHAINS
        ],
    output:
        L.summary("{chain}"),
    log:
        L.log("summary/{chain}"),
    priority: chain_priority
    conda:
        CONDA_ENV
    params:
        cli=CLI,
        presets=list(PRESETS),
        dirs=lambda wildcards, input: [str(Path(f).parent) for f in input.self_verify],
        task=TASK_ARGUMENTS,
    shell:
        "{params.cli} summary --presets {params.presets:q}"
        " --selections {input.selections} --self-verify-dirs {params.dirs:q}"
        " --scores {input.scores} --submission-status {input.status} --classes {input.classes}"
        " --out {output}"
        " {params.task:q} 2> {log}"


rule systems:
    input:
        spec_files(SYSTEMS_SPEC),
        **CHOSEN,
        test=L.data("test.csv"),
        classes=L.data("classes.csv"),
    output:
        systems=L.systems("systems.csv"),
        iterations=L.systems("systems_iterations.csv"),
        plot=report(L.systems("systems.png"), caption="../report/systems.rst", category="1. Results"),
    log:
        L.log("systems"),
    conda:
        CONDA_ENV
    params:
        cli=CLI,
        spec=as_json(SYSTEMS_SPEC),
        min_share=S["trust"]["min_trusted_share"],
        task=TASK_ARGUMENTS,
        choice=[f"--choice={path}" for path in CHOSEN.values()],
    shell:
        "{params.cli} systems --test {input.test} --classes {input.classes}"
        " --spec {params.spec:q} --min-trusted-share {params.min_share:q} --out {output.systems}"
        " --out-iterations {output.iterations} --out-plot {output.plot} {params.task:q}"
        " {params.choice:q} 2> {log}"


# chain_choice: cv (workflow_lib/choice.py): once every chain's selection and summary exist,
# the chain with the best CV score of its chosen iterations (the verified validation clips;
# never a test figure) is picked for the tagger and the export.
rule choose_chain:
    input:
        selections=[L.selection(c, p) for c in CHAINS for p in PRESETS],
        summaries=[L.summary(c) for c in CHAINS],
    output:
        CHOICE_OUTPUTS,
    log:
        L.log("choose_chain"),
    conda:
        CONDA_ENV
    params:
        cli=CLI,
        spec=as_json(
            chain_choice_spec(
                {c: {p: L.selection(c, p) for p in PRESETS} for c in CHAINS},
                {c: L.summary(c) for c in CHAINS},
            )
        ),
        tolerance=S["trust"]["selection_tolerance"],
        out_dir=lambda wildcards, output: Path(output[0]).parent,
    shell:
        "{params.cli} choose-chain --spec {params.spec:q} --tolerance {params.tolerance:q}"
        " --out-dir {params.out_dir:q} 2> {log}"
