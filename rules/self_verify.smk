# Self-verification of iteration i in a chain: the fold models of iteration i judge the
# unverified clips of their own validation parts (K-excerpt posteriors, kept in posteriors.csv)
# and the chain's trust policy picks the clips the list of iteration i+1 trusts.


rule self_verify:
    input:
        unpack(training_inputs),
        models=lambda wildcards: [
            L.model_file(wildcards.chain, wildcards.preset, k, int(wildcards.it)) for k in FOLDS
        ],
        train=L.data("train.csv"),
    output:
        **{role: L.trust_file("{chain}", "{preset}", "{it}", name) for role, name in TRUST_FILES.items()},
    log:
        L.log("self_verify/{chain}/{preset}_it{it}"),
    benchmark:
        L.benchmark("self_verify/{chain}/{preset}_it{it}")
    wildcard_constraints:
        it=r"\d+",
    priority: chain_priority
    conda:
        CONDA_ENV
    threads: TRAINING_THREADS
    resources:
        gpu=GPUS_PER_TRAINING_JOB,
    params:
        cli=CLI,
        models=lambda wildcards, input: [f"{k}={path}" for k, path in zip(FOLDS, input.models)],
        settings=lambda wildcards: as_json(
            self_verify_settings(wildcards.chain, wildcards.preset, int(wildcards.it))
        ),
        out_dir=lambda wildcards, output: Path(output.decisions).parent,
        lock_dir=GPU_LOCK_DIR,
    shell:
        "{params.cli} self-verify --models {params.models:q} --manifest {input.manifest}"
        " --folds {input.folds} --classes {input.classes} --train {input.train}"
        " --out-dir {params.out_dir:q} --threads {threads} --lock-dir {params.lock_dir:q}"
        " --settings {params.settings:q} 2> {log}"


if POOL_CHAINS:

    # The unlabelled pool after iteration i of a chain with `pool: true`: every fold model of
    # iteration i judges every pool clip (K-excerpt posteriors, averaged over the folds: none
    # of them trained on a pool clip) and the chain's policy picks the clips, under their
    # predicted label, that the fine-tuning of iteration i+1 adds (workflow_lib/pool.py).
    rule judge_pool:
        input:
            models=lambda wildcards: [
                L.model_file(wildcards.chain, wildcards.preset, k, int(wildcards.it)) for k in FOLDS
            ],
            manifest=lambda wildcards: L.spectrograms(METHOD["nets"][wildcards.preset]["spectrogram"], "pool"),
            pool=L.data("pool.csv"),
            classes=L.data("classes.csv"),
        output:
            **{role: L.trust_file("{chain}", "{preset}", "{it}", name) for role, name in POOL_FILES.items()},
        log:
            L.log("judge_pool/{chain}/{preset}_it{it}"),
        benchmark:
            L.benchmark("judge_pool/{chain}/{preset}_it{it}")
        wildcard_constraints:
            it=r"\d+",
            chain="|".join(POOL_CHAINS),
        priority: chain_priority
        conda:
            CONDA_ENV
        threads: TRAINING_THREADS
        resources:
            gpu=GPUS_PER_TRAINING_JOB,
        params:
            cli=CLI,
            models=lambda wildcards, input: [f"{k}={path}" for k, path in zip(FOLDS, input.models)],
            settings=lambda wildcards: as_json(
                pool_trust_settings(S, wildcards.chain, wildcards.preset, int(wildcards.it))
            ),
            out_dir=lambda wildcards, output: Path(output.decisions).parent,
            lock_dir=GPU_LOCK_DIR,
        shell:
            "{params.cli} judge-pool --models {params.models:q} --manifest {input.manifest}"
            " --pool {input.pool} --classes {input.classes} --out-dir {params.out_dir:q}"
            " --threads {threads} --lock-dir {params.lock_dir:q} --settings {params.settings:q} 2> {log}"
