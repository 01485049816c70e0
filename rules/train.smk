# Folds, iteration 0 (one job per start, preset and fold, shared by the chains with that start)
# and fine-tuning (iterations 1 ... N, one job per chain, preset and fold). Training jobs ask
# for one GPU when CUDA is in use (--resources gpu=N).


rule folds:
    input:
        manifest=L.spectrograms(VERSIONS[0], "train"),
    output:
        L.folds,
    log:
        L.log("folds"),
    conda:
        CONDA_ENV
    params:
        cli=CLI,
        folds=METHOD["folds"],
        seed=METHOD["seed"],
    shell:
        "{params.cli} folds --manifest {input.manifest} --out {output}"
        " --folds {params.folds:q} --seed {params.seed:q} 2> {log}"


rule initial_list:
    input:
        folds=L.folds,
    output:
        L.initial_list("{start}"),
    log:
        L.log("initial_list/{start}"),
    conda:
        CONDA_ENV
    params:
        cli=CLI,
    shell:
        "{params.cli} initial-list --start {wildcards.start:q} --folds {input.folds}"
        " --out {output} 2> {log}"


rule train_initial:
    input:
        unpack(training_inputs),
        unpack(copies_input),
        train_list=L.initial_list("{start}"),
    output:
        best=f"{L.initial_dir('{start}', '{preset}', '{fold}')}/{MODEL_FILES['best']}",
        history=f"{L.initial_dir('{start}', '{preset}', '{fold}')}/{MODEL_FILES['history']}",
    log:
        L.log("train/{start}/{preset}_fold{fold}_it0"),
    benchmark:
        L.benchmark("train/{start}/{preset}_fold{fold}_it0")
    priority: start_priority
    conda:
        CONDA_ENV
    threads: TRAINING_THREADS
    resources:
        gpu=GPUS_PER_TRAINING_JOB,
    params:
        cli=CLI,
        settings=lambda wildcards: job_settings(training_settings(wildcards.preset, 0)),
        compared=lambda wildcards: compared_json(training_settings(wildcards.preset, 0)),
        out_dir=lambda wildcards, output: Path(output.best).parent,
        lock_dir=GPU_LOCK_DIR,
    shell:
        "{params.cli} train --manifest {input.manifest} --folds {input.folds}"
        " --classes {input.classes} --fold {wildcards.fold} --out-dir {params.out_dir:q}"
        " --threads {threads} --lock-dir {params.lock_dir:q} --train-list {input.train_list}"
        " --settings {params.settings:q} 2> {log}"


rule fine_tune:
    input:
        unpack(training_inputs),
        unpack(copies_input),
        unpack(pool_inputs),
        unpack(valid_posteriors_input),
        train_list=lambda wildcards: L.train_list(wildcards.chain, wildcards.preset, int(wildcards.it) - 1),
        init=lambda wildcards: L.model_file(
            wildcards.chain, wildcards.preset, wildcards.fold, int(wildcards.it) - 1
        ),
    output:
        best=f"{L.fine_tuned_dir('{chain}', '{preset}', '{fold}', '{it}')}/{MODEL_FILES['best']}",
        history=f"{L.fine_tuned_dir('{chain}', '{preset}', '{fold}', '{it}')}/{MODEL_FILES['history']}",
    log:
        L.log("train/{chain}/{preset}_fold{fold}_it{it}"),
    benchmark:
        L.benchmark("train/{chain}/{preset}_fold{fold}_it{it}")
    wildcard_constraints:
        it=r"[1-9]\d*",
    priority: chain_priority
    conda:
        CONDA_ENV
    threads: TRAINING_THREADS
    resources:
        gpu=GPUS_PER_TRAINING_JOB,
    params:
        cli=CLI,
        settings=lambda wildcards: job_settings(
            training_settings(wildcards.preset, int(wildcards.it), wildcards.chain)
        ),
        compared=lambda wildcards: compared_json(
            training_settings(wildcards.preset, int(wildcards.it), wildcards.chain)
        ),
        out_dir=lambda wildcards, output: Path(output.best).parent,
        lock_dir=GPU_LOCK_DIR,
    shell:
        "{params.cli} train --manifest {input.manifest} --folds {input.folds}"
        " --classes {input.classes} --fold {wildcards.fold} --out-dir {params.out_dir:q}"
        " --threads {threads} --lock-dir {params.lock_dir:q} --train-list {input.train_list}"
        " --init {input.init} --settings {params.settings:q} 2> {log}"
