# The trained system as a self-contained tagger: the chosen iteration's fold models of every
# preset, fused as the run fused them, exported as TorchScript and ONNX with the class list,
# the preprocessing settings and a model card (workflow_lib/export.py). `sv-tag --bundle`
# tags new audio with this folder alone.


rule export_tagger:
    input:
        selections=expand(f"{RESULTS}/selection/{{preset}}.csv", preset=PRESETS),
        models=[model_file(p, k, i) for p in PRESETS for i in ITERATIONS for k in FOLDS],
        weights=f"{RESULTS}/predictions/fusion_weights.csv",
        classes=f"{RESULTS}/data/classes.csv",
        summary=f"{RESULTS}/summary.csv",
    output:
        [f"{EXPORT_DIR}/{name}" for name in BUNDLE_FILES.values()],
    log:
        f"{RESULTS}/logs/export_tagger.log",
    benchmark:
        f"{RESULTS}/benchmarks/export_tagger.tsv"
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
