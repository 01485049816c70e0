# SoX silence clipping and the spectrogram versions the chosen presets need, in shards:
# one job per (split, shard), each clipping its files once and computing every version.
# The number of shards per split is N_SHARDS (rules/common.smk: preprocessing.shards).


rule preprocess_shard:
    input:
        listing=L.data("{split}.csv"),
    output:
        arrays=expand(L.spectrogram_shard("{version}", "{{split}}", "{{shard}}", "npy"), version=VERSIONS),
        manifests=expand(L.spectrogram_shard("{version}", "{{split}}", "{{shard}}", "csv"), version=VERSIONS),
    log:
        L.log("preprocess/{split}_shard{shard}"),
    benchmark:
        L.benchmark("preprocess/{split}_shard{shard}")
    wildcard_constraints:
        split="|".join(PREPROCESSED_SPLITS),
        shard=r"\d+",
    conda:
        CONDA_ENV
    params:
        cli=CLI,
        shards=lambda wildcards: N_SHARDS[wildcards.split],
        versions=list(str(v) for v in VERSIONS),
        out_dir=lambda wildcards, output: Path(output.arrays[0]).parents[2],
        settings=as_json(S["preprocessing"]),
    shell:
        "{params.cli} preprocess-shard --listing {input.listing}"
        " --split {wildcards.split} --shard {wildcards.shard} --shards {params.shards:q}"
        " --versions {params.versions:q} --out-dir {params.out_dir:q} --settings {params.settings:q}"
        " 2> {log}"


rule spectrogram_manifest:
    input:
        lambda wildcards: expand(
            L.spectrogram_shard("{version}", "{split}", "{shard}", "csv"),
            version=wildcards.version,
            split=wildcards.split,
            shard=shards_of(wildcards.split),
        ),
    output:
        L.spectrograms("{version}", "{split}"),
    log:
        L.log("spectrogram_manifest/v{version}_{split}"),
    wildcard_constraints:
        version=r"\d",
        split="|".join(PREPROCESSED_SPLITS),
    conda:
        CONDA_ENV
    params:
        cli=CLI,
    shell:
        "{params.cli} merge-manifests --out {output} {input} 2> {log}"
