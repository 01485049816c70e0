# The tables and pictures registered with report(), so that `snakemake --report report.html`
# gathers them. Categories are numbered because the report lists them alphabetically: the
# results tables first, then the pictures in the order of the method.


# The results page shows the summary of the chain the tagger uses: the first of run_chains,
# or with chain_choice: cv and several chains the picked one (results/chosen/summary.csv).
rule report_tables:
    input:
        summary=L.chosen("summary.csv") if CHOSEN else L.summary(CHAINS[0]),
        systems=L.systems("systems.csv"),
    output:
        report(
            f"{RESULTS}/report/results.html",
            caption="../report/results.rst",
            category="1. Results",
        ),
    log:
        L.log("report_tables"),
    conda:
        CONDA_ENV
    params:
        cli=CLI,
    shell:
        "{params.cli} report-tables --summary {input.summary} --systems {input.systems}"
        " --out {output} 2> {log}"


rule plot_training:
    input:
        histories=lambda wildcards: list(chain_histories(wildcards).values()),
        self_verify=lambda wildcards: [
            L.trust_file(wildcards.chain, wildcards.preset, i, "per_class.csv") for i in ITERATIONS[:-1]
        ],
    output:
        curves=report(
            L.plot("{chain}", "{preset}_training_curves.png"),
            caption="../report/training_curves.rst",
            category="2. Training",
            subcategory="{chain} {preset}",
        ),
        counts=report(
            L.plot("{chain}", "{preset}_self_verified.png"),
            caption="../report/self_verified.rst",
            category="3. Self-verification",
            subcategory="{chain} {preset}",
        ),
    log:
        L.log("plot_training/{chain}/{preset}"),
    conda:
        CONDA_ENV
    params:
        cli=CLI,
        histories=lambda wildcards: pairs(chain_histories(wildcards)),
        self_verify=lambda wildcards, input: [f"{i}={path}" for i, path in enumerate(input.self_verify)],
    shell:
        "{params.cli} plot-training --preset {wildcards.preset:q}"
        " --histories {params.histories:q} --self-verify {params.self_verify:q}"
        " --out-curves {output.curves} --out-counts {output.counts} 2> {log}"


# The multi-label task has no confusion matrix (several true and predicted labels per clip,
# TASK.confusion): the per-class picture (with each class's lwlrap) is the evaluation's only plot.
rule plot_evaluation:
    input:
        **({"confusion": L.evaluation("{chain}", "confusion.csv")} if TASK.confusion else {}),
        per_class=L.evaluation("{chain}", "per_class.csv"),
    output:
        **(
            {
                "confusion": report(
                    L.plot("{chain}", "confusion.png"),
                    caption="../report/confusion.rst",
                    category="4. Evaluation",
                    subcategory="{chain}",
                )
            }
            if TASK.confusion
            else {}
        ),
        per_class=report(
            L.plot("{chain}", "per_class.png"),
            caption="../report/per_class.rst",
            category="4. Evaluation",
            subcategory="{chain}",
        ),
    log:
        L.log("plot_evaluation/{chain}"),
    conda:
        CONDA_ENV
    params:
        cli=CLI,
        confusion=lambda wildcards, input, output: (
            ["--confusion", input.confusion, "--out-confusion", output.confusion] if TASK.confusion else []
        ),
    shell:
        "{params.cli} plot-evaluation {params.confusion:q}"
        " --per-class {input.per_class} --out-per-class {output.per_class} 2> {log}"
