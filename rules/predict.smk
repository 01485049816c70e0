# Automatic model selection per preset, prediction with the chosen iteration's fold models,
# fusion of the presets, the submission, and the evaluation when the test labels are known.


rule select_iteration:
    input:
        histories=lambda wildcards: [history_file(wildcards.preset, k, i) for i in ITERATIONS for k in FOLDS],
    output:
        f"{RESULTS}/selection/{{preset}}.csv",
    params:
        cli=CLI,
        histories=lambda wildcards, input: list(
            f"{i}:{k}={path}" for (i, k), path in zip([(i, k) for i in ITERATIONS for k in FOLDS], input.histories)
        ),
    log:
        f"{RESULTS}/logs/select_iteration/{{preset}}.log",
    conda:
        CONDA_ENV
    shell:
        "{params.cli} select --histories {params.histories:q} --out {output} 2> {log}"


rule predict:
    input:
        unpack(training_inputs),
        selection=f"{RESULTS}/selection/{{preset}}.csv",
        models=lambda wildcards: [model_file(wildcards.preset, k, i) for i in ITERATIONS for k in FOLDS],
        test_manifest=lambda wildcards: f"{RESULTS}/spectrograms/v{METHOD['nets'][wildcards.preset]['spectrogram']}/test.csv",
    output:
        test=f"{RESULTS}/predictions/{{preset}}/test.csv",
        valid=f"{RESULTS}/predictions/{{preset}}/valid_oof.csv",
    params:
        cli=CLI,
        model_dir=lambda wildcards: f"{RESULTS}/models/{wildcards.preset}",
        settings=as_json(prediction_settings()),
        lock_dir=GPU_LOCK_DIR,
    threads: TRAINING_THREADS
    resources:
        gpu=GPUS_PER_TRAINING_JOB,
    log:
        f"{RESULTS}/logs/predict/{{preset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/predict/{{preset}}.tsv"
    conda:
        CONDA_ENV
    shell:
        "{params.cli} predict --selection {input.selection} --model-dir {params.model_dir:q}"
        " --train-manifest {input.manifest} --test-manifest {input.test_manifest}"
        " --folds {input.folds} --classes {input.classes} --out-test {output.test}"
        " --out-valid {output.valid} --threads {threads} --lock-dir {params.lock_dir:q}"
        " --settings {params.settings:q} 2> {log}"


rule fuse:
    input:
        tests=expand(f"{RESULTS}/predictions/{{preset}}/test.csv", preset=PRESETS),
        valids=expand(f"{RESULTS}/predictions/{{preset}}/valid_oof.csv", preset=PRESETS),
        classes=f"{RESULTS}/data/classes.csv",
        test_manifest=f"{RESULTS}/spectrograms/v{VERSIONS[0]}/test.csv",
    output:
        probs=f"{RESULTS}/predictions/fused_test.csv",
        weights=f"{RESULTS}/predictions/fusion_weights.csv",
        submission=f"{RESULTS}/submission.csv",
        status=f"{RESULTS}/submission_status.csv",
    params:
        cli=CLI,
        tests=lambda wildcards, input: list(f"{p}={f}" for p, f in zip(PRESETS, input.tests)),
        valids=lambda wildcards, input: list(f"{p}={f}" for p, f in zip(PRESETS, input.valids)),
        settings=as_json(METHOD["fusion"]),
    log:
        f"{RESULTS}/logs/fuse.log",
    conda:
        CONDA_ENV
    shell:
        "{params.cli} fuse --tests {params.tests:q} --valids {params.valids:q}"
        " --classes {input.classes} --out-probs {output.probs} --out-weights {output.weights}"
        " --out-submission {output.submission} --test-manifest {input.test_manifest}"
        " --out-status {output.status} --settings {params.settings:q} 2> {log}"


rule evaluate:
    input:
        test=f"{RESULTS}/data/test.csv",
        classes=f"{RESULTS}/data/classes.csv",
        presets=expand(f"{RESULTS}/predictions/{{preset}}/test.csv", preset=PRESETS),
        fused=f"{RESULTS}/predictions/fused_test.csv",
    output:
        summary=f"{RESULTS}/evaluation/summary.csv",
        per_class=f"{RESULTS}/evaluation/per_class.csv",
        confusion=f"{RESULTS}/evaluation/confusion.csv",
    params:
        cli=CLI,
        systems=lambda wildcards, input: list(
            [f"{p}={f}" for p, f in zip(PRESETS, input.presets)] + [f"fusion={input.fused}"]
        ),
        out_dir=lambda wildcards, output: Path(output.summary).parent,
    log:
        f"{RESULTS}/logs/evaluate.log",
    conda:
        CONDA_ENV
    shell:
        "{params.cli} evaluate --test {input.test} --classes {input.classes}"
        " --systems {params.systems:q} --out-dir {params.out_dir:q} 2> {log}"


rule summary:
    input:
        selections=expand(f"{RESULTS}/selection/{{preset}}.csv", preset=PRESETS),
        self_verify=[self_verified_list(p, i) for p in PRESETS for i in ITERATIONS[:-1]],
        scores=f"{RESULTS}/evaluation/summary.csv",
        status=f"{RESULTS}/submission_status.csv",
    output:
        f"{RESULTS}/summary.csv",
    params:
        cli=CLI,
        presets=list(PRESETS),
        dirs=lambda wildcards, input: list(str(Path(f).parent) for f in input.self_verify),
    log:
        f"{RESULTS}/logs/summary.log",
    conda:
        CONDA_ENV
    shell:
        "{params.cli} summary --presets {params.presets:q}"
        " --selections {input.selections} --self-verify-dirs {params.dirs:q}"
        " --scores {input.scores} --submission-status {input.status} --out {output} 2> {log}"
