# The trained system as a self-contained tagger: the chosen iteration's fold models of every
# preset, fused as the run fused them, exported as TorchScript and ONNX with the class list,
# the preprocessing settings and a model card (workflow_lib/export.py). The exported chain is
# the first of run_chains (the method, by default), or with chain_choice: cv and several
# chains the one rule choose_chain picked: known only once it ran, so every chain's models are
# inputs then. `sv-tag --bundle` tags new audio with this folder alone.
EXPORTABLE = CHAINS if CHOSEN else CHAINS[:1]


rule export_tagger:
    input:
        **CHOSEN,
        selections=[L.selection(c, p) for c in EXPORTABLE for p in PRESETS],
        models=[
            L.model_file(c, p, k, i) for c in EXPORTABLE for p in PRESETS for i in ITERATIONS for k in FOLDS
        ],
        weights=[L.fused(c, "fusion_weights.csv") for c in EXPORTABLE],
        classes=L.data("classes.csv"),
        summary=[L.summary(c) for c in EXPORTABLE],
    output:
        [f"{EXPORT_DIR}/{name}" for name in BUNDLE_FILES.values()],
    log:
        L.log("export_tagger"),
    benchmark:
        L.benchmark("export_tagger")
    conda:
        CONDA_ENV
    params:
        cli=CLI,
        results=lambda wildcards, input: Path(input.classes).parents[1],
        out_dir=lambda wildcards, output: Path(output[0]).parent,
        settings=as_json(tagger_settings(S)),
    shell:
        "{params.cli} export --results {params.results:q} --out-dir {params.out_dir:q}"
        " --settings {params.settings:q} 2> {log}"
