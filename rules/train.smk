# Folds, initial training (iteration 0) and fine-tuning (iterations 1 ... N), one job per
# preset and fold. Training jobs ask for one GPU when CUDA is in use (--resources gpu=N).


rule folds:
    input:
        manifest=f"{RESULTS}/spectrograms/v{VERSIONS[0]}/train.csv",
    output:
        f"{RESULTS}/folds.csv",
    params:
        cli=CLI,
        folds=METHOD["folds"],
        seed=METHOD["seed"],
    log:
        f"{RESULTS}/logs/folds.log",
    conda:
        CONDA_ENV
    shell:
        "{params.cli} folds --manifest {input.manifest} --out {output}"
        " --folds {params.folds:q} --seed {params.seed:q} 2> {log}"


rule train_initial:
    input:
        unpack(training_inputs),
    output:
        best=f"{RESULTS}/models/{{preset}}/fold{{fold}}/it0/best.pt",
        history=f"{RESULTS}/models/{{preset}}/fold{{fold}}/it0/history.csv",
    params:
        cli=CLI,
        settings=lambda wildcards: as_json(training_settings(wildcards.preset, 0)),
        out_dir=lambda wildcards, output: Path(output.best).parent,
        lock_dir=GPU_LOCK_DIR,
    threads: TRAINING_THREADS
    resources:
        gpu=GPUS_PER_TRAINING_JOB,
    log:
        f"{RESULTS}/logs/train/{{preset}}_fold{{fold}}_it0.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{{preset}}_fold{{fold}}_it0.tsv"
    conda:
        CONDA_ENV
    shell:
        "{params.cli} train --manifest {input.manifest} --folds {input.folds}"
        " --classes {input.classes} --fold {wildcards.fold} --out-dir {params.out_dir:q}"
        " --threads {threads} --lock-dir {params.lock_dir:q} --settings {params.settings:q}"
        " 2> {log}"


rule fine_tune:
    input:
        unpack(training_inputs),
        train_list=lambda wildcards: self_verified_list(wildcards.preset, int(wildcards.it) - 1),
        init=lambda wildcards: model_file(wildcards.preset, wildcards.fold, int(wildcards.it) - 1),
    output:
        best=f"{RESULTS}/models/{{preset}}/fold{{fold}}/it{{it}}/best.pt",
        history=f"{RESULTS}/models/{{preset}}/fold{{fold}}/it{{it}}/history.csv",
    wildcard_constraints:
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
        f"{RESULTS}/logs/train/{{preset}}_fold{{fold}}_it{{it}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{{preset}}_fold{{fold}}_it{{it}}.tsv"
    conda:
        CONDA_ENV
    shell:
        "{params.cli} train --manifest {input.manifest} --folds {input.folds}"
        " --classes {input.classes} --fold {wildcards.fold} --out-dir {params.out_dir:q}"
        " --threads {threads} --lock-dir {params.lock_dir:q} --train-list {input.train_list}"
        " --init {input.init} --settings {params.settings:q} 2> {log}"
