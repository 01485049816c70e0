# The trained system as a self-contained tagger: the chosen iteration's fold models of every
# preset, fused as the run fused them, exported as TorchScript and ONNX with the class list,
# the preprocessing settings and a model card (workflow_lib/export.py). The exported chain is
# the first of run_chains (the method, by default). `sv-tag --bundle`
# tags new audio with this folder alone.


rule export_tagger:
    input:
        selections=[L.selection(CHAINS[0], p) for p in PRESETS],
        models=[L.model_file(CHAINS[0], p, k, i) for p in PRESETS for i in ITERATIONS for k in FOLDS],
        weights=L.fused(CHAINS[0], "fusion_weights.csv"),
        classes=L.data("classes.csv"),
        summary=L.summary(CHAINS[0]),
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
