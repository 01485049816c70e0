# The tables and pictures registered with report(), so that `snakemake --report report.html`
# gathers them. Categories are numbered because the report lists them alphabetically: the
# results tables first, then the pictures in the order of the method.


rule report_tables:
    input:
        summary=f"{RESULTS}/summary.csv",
        systems=[f"{RESULTS}/baselines/systems.csv"] if BASELINES["enabled"] else [],
    output:
        report(
            f"{RESULTS}/report/results.html",
            caption="../report/results.rst",
            category="1. Results",
        ),
    params:
        cli=CLI,
        systems=lambda wildcards, input: ["--systems", input.systems[0]] if input.systems else [],
    log:
        f"{RESULTS}/logs/report_tables.log",
    conda:
        CONDA_ENV
    shell:
        "{params.cli} report-tables --summary {input.summary} {params.systems:q} --out {output} 2> {log}"


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
            category="2. Training",
            subcategory="{preset}",
        ),
        counts=report(
            f"{RESULTS}/plots/{{preset}}_self_verified.png",
            caption="../report/self_verified.rst",
            category="3. Self-verification",
            subcategory="{preset}",
        ),
    params:
        cli=CLI,
        histories=lambda wildcards, input: list(
            f"{i}:{k}={path}" for (i, k), path in zip([(i, k) for i in ITERATIONS for k in FOLDS], input.histories)
        ),
        self_verify=lambda wildcards, input: list(f"{i}={path}" for i, path in enumerate(input.self_verify)),
    log:
        f"{RESULTS}/logs/plot_training/{{preset}}.log",
    conda:
        CONDA_ENV
    shell:
        "{params.cli} plot-training --preset {wildcards.preset:q}"
        " --histories {params.histories:q} --self-verify {params.self_verify:q}"
        " --out-curves {output.curves} --out-counts {output.counts} 2> {log}"


rule plot_evaluation:
    input:
        confusion=f"{RESULTS}/evaluation/confusion.csv",
        per_class=f"{RESULTS}/evaluation/per_class.csv",
    output:
        confusion=report(
            f"{RESULTS}/plots/confusion.png", caption="../report/confusion.rst", category="4. Evaluation"
        ),
        per_class=report(
            f"{RESULTS}/plots/per_class.png", caption="../report/per_class.rst", category="4. Evaluation"
        ),
    params:
        cli=CLI,
    log:
        f"{RESULTS}/logs/plot_evaluation.log",
    conda:
        CONDA_ENV
    shell:
        "{params.cli} plot-evaluation --confusion {input.confusion}"
        " --per-class {input.per_class} --out-confusion {output.confusion}"
        " --out-per-class {output.per_class} 2> {log}"
