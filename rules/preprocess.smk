# SoX silence clipping and the spectrogram versions the chosen presets need, in shards:
# one job per (split, shard), each clipping its files once and computing every version.


rule preprocess_shard:
    input:
        listing=L.data("{split}.csv"),
    output:
        arrays=expand(L.spectrogram_shard("{version}", "{{split}}", "{{shard}}", "npy"), version=VERSIONS),
        manifests=expand(L.spectrogram_shard("{version}", "{{split}}", "{{shard}}", "csv"), version=VERSIONS),
    wildcard_constraints:
        split="train|test",
        shard=r"\d+",
    params:
        cli=CLI,
        shards=len(SHARDS),
        versions=" ".join(str(v) for v in VERSIONS),
        out_dir=lambda wildcards, output: Path(output.arrays[0]).parents[2],
        settings=as_json(S["preprocessing"]),
    log:
        L.log("preprocess/{split}_shard{shard}"),
    benchmark:
        L.benchmark("preprocess/{split}_shard{shard}")
    conda:
        CONDA_ENV
    shell:
        "{params.cli} preprocess-shard --listing {input.listing}"
        " --split {wildcards.split} --shard {wildcards.shard} --shards {params.shards}"
        " --versions {params.versions} --out-dir {params.out_dir} --settings {params.settings:q}"
        " 2> {log}"


rule spectrogram_manifest:
    input:
        expand(L.spectrogram_shard("{{version}}", "{{split}}", "{shard}", "csv"), shard=SHARDS),
    output:
        L.spectrograms("{version}", "{split}"),
    wildcard_constraints:
        version=r"\d",
        split="train|test",
    params:
        cli=CLI,
    log:
        L.log("spectrogram_manifest/v{version}_{split}"),
    conda:
        CONDA_ENV
    shell:
        "{params.cli} merge-manifests --out {output} {input} 2> {log}"
