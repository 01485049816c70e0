# Pictures, registered with report() so that `snakemake --report report.html` gathers them.


rule plot_training:
    input:
        histories=lambda wildcards: [history_file(wildcards.preset, k, i) for i in ITERATIONS for k in FOLDS],
        self_verify=lambda wildcards: [
            f"{RESULTS}/self_verify/{wildcards.preset}/it{i}/per_class.csv" for i in ITERATIONS[:-1]
        ],
    output:
        curves=report(
            f"{RESULTS}/plots/{{preset}}_training_curves.png",
            caption="../report/training_curves.rst",
            category="Training",
            subcategory="{preset}",
        ),
        counts=report(
            f"{RESULTS}/plots/{{preset}}_self_verified.png",
            caption="../report/self_verified.rst",
            category="Self-verification",
            subcategory="{preset}",
        ),
    params:
        histories=lambda wildcards, input: list(
            f"{i}:{k}={path}" for (i, k), path in zip([(i, k) for i in ITERATIONS for k in FOLDS], input.histories)
        ),
        self_verify=lambda wildcards, input: list(f"{i}={path}" for i, path in enumerate(input.self_verify)),
    log:
        f"{RESULTS}/logs/plot_training/{{preset}}.log",
    conda:
        CONDA_ENV
    shell:
        "python -m workflow_lib.cli plot-training --preset {wildcards.preset:q}"
        " --histories {params.histories:q} --self-verify {params.self_verify:q}"
        " --out-curves {output.curves} --out-counts {output.counts} 2> {log}"


rule plot_evaluation:
    input:
        confusion=f"{RESULTS}/evaluation/confusion.csv",
        per_class=f"{RESULTS}/evaluation/per_class.csv",
    output:
        confusion=report(
            f"{RESULTS}/plots/confusion.png", caption="../report/confusion.rst", category="Evaluation"
        ),
        per_class=report(
            f"{RESULTS}/plots/per_class.png", caption="../report/per_class.rst", category="Evaluation"
        ),
    log:
        f"{RESULTS}/logs/plot_evaluation.log",
    conda:
        CONDA_ENV
    shell:
        "python -m workflow_lib.cli plot-evaluation --confusion {input.confusion}"
        " --per-class {input.per_class} --out-confusion {output.confusion}"
        " --out-per-class {output.per_class} 2> {log}"
