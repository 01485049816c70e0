# Pictures, registered with report() so that `snakemake --report report.html` gathers them.


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
            category="Training",
            subcategory="{chain} {preset}",
        ),
        counts=report(
            L.plot("{chain}", "{preset}_self_verified.png"),
            caption="../report/self_verified.rst",
            category="Self-verification",
            subcategory="{chain} {preset}",
        ),
    params:
        histories=lambda wildcards: pairs(chain_histories(wildcards)),
        self_verify=lambda wildcards, input: " ".join(f"{i}={path}" for i, path in enumerate(input.self_verify)),
    log:
        L.log("plot_training/{chain}/{preset}"),
    conda:
        CONDA_ENV
    shell:
        "python -m workflow_lib.cli plot-training --preset {wildcards.preset}"
        " --histories {params.histories} --self-verify {params.self_verify}"
        " --out-curves {output.curves} --out-counts {output.counts} 2> {log}"


rule plot_evaluation:
    input:
        confusion=L.evaluation("{chain}", "confusion.csv"),
        per_class=L.evaluation("{chain}", "per_class.csv"),
    output:
        confusion=report(
            L.plot("{chain}", "confusion.png"),
            caption="../report/confusion.rst",
            category="Evaluation",
            subcategory="{chain}",
        ),
        per_class=report(
            L.plot("{chain}", "per_class.png"),
            caption="../report/per_class.rst",
            category="Evaluation",
            subcategory="{chain}",
        ),
    log:
        L.log("plot_evaluation/{chain}"),
    conda:
        CONDA_ENV
    shell:
        "python -m workflow_lib.cli plot-evaluation --confusion {input.confusion}"
        " --per-class {input.per_class} --out-confusion {output.confusion}"
        " --out-per-class {output.per_class} 2> {log}"
