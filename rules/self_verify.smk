# Self-verification of iteration i: the four fold models of iteration i judge the unverified
# clips of their own validation parts; the accepted ones join the list that fine-tunes i+1.


rule self_verify:
    input:
        unpack(training_inputs),
        models=lambda wildcards: [model_file(wildcards.preset, k, wildcards.it) for k in FOLDS],
        train=f"{RESULTS}/data/train.csv",
    output:
        decisions=f"{RESULTS}/self_verify/{{preset}}/it{{it}}/decisions.csv",
        per_class=f"{RESULTS}/self_verify/{{preset}}/it{{it}}/per_class.csv",
        train_list=f"{RESULTS}/self_verify/{{preset}}/it{{it}}/train_self_verified.csv",
    wildcard_constraints:
        it=r"\d+",
    params:
        cli=CLI,
        models=lambda wildcards, input: list(f"{k}={path}" for k, path in zip(FOLDS, input.models)),
        settings=lambda wildcards: as_json(self_verify_settings(wildcards.preset, int(wildcards.it))),
        out_dir=lambda wildcards, output: Path(output.decisions).parent,
        lock_dir=GPU_LOCK_DIR,
    threads: TRAINING_THREADS
    resources:
        gpu=GPUS_PER_TRAINING_JOB,
    log:
        f"{RESULTS}/logs/self_verify/{{preset}}_it{{it}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/self_verify/{{preset}}_it{{it}}.tsv"
    conda:
        CONDA_ENV
    shell:
        "{params.cli} self-verify --models {params.models:q} --manifest {input.manifest}"
        " --folds {input.folds} --classes {input.classes} --train {input.train}"
        " --out-dir {params.out_dir:q} --threads {threads} --lock-dir {params.lock_dir:q}"
        " --settings {params.settings:q} 2> {log}"
