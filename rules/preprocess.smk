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
        settings=as_json(preprocessing_settings(S)),
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
        split="|".join([*PREPROCESSED_SPLITS, COPIES_SPLIT]),
    conda:
        CONDA_ENV
    params:
        cli=CLI,
    shell:
        "{params.cli} merge-manifests --out {output} {input} 2> {log}"


# Waveform augmentation (preprocessing.waveform_augmentation; workflow_lib/waveform_augment.py):
# copies of the training clips, made from their SoX-clipped audio and stored like them, per
# version, in the split train_copies (sharded as the training clips). Only when copies >= 1.
if WAVEFORM:

    if NOISE_DIR:

        # Every file under the noise folder checked once: usable, or why it is skipped.
        rule noise_files:
            output:
                L.data("noise_files.csv"),
            log:
                L.log("noise_files"),
            conda:
                CONDA_ENV
            params:
                cli=CLI,
                noise_dir=NOISE_DIR,
                fingerprint=folder_fingerprint(NOISE_DIR, DATASET_DIGESTS),
            shell:
                "{params.cli} noise-files --noise-dir {params.noise_dir:q} --out {output} 2> {log}"

    rule copy_shard:
        input:
            listing=L.data("train.csv"),
            noise=[L.data("noise_files.csv")] if NOISE_DIR else [],
        output:
            arrays=expand(
                L.spectrogram_shard("{version}", COPIES_SPLIT, "{{shard}}", "npy"), version=VERSIONS
            ),
            manifests=expand(
                L.spectrogram_shard("{version}", COPIES_SPLIT, "{{shard}}", "csv"), version=VERSIONS
            ),
        log:
            L.log("copy_shard/shard{shard}"),
        benchmark:
            L.benchmark("copy_shard/shard{shard}")
        wildcard_constraints:
            shard=r"\d+",
        conda:
            CONDA_ENV
        params:
            cli=CLI,
            shards=N_SHARDS["train"],
            versions=list(str(v) for v in VERSIONS),
            out_dir=lambda wildcards, output: Path(output.arrays[0]).parents[2],
            settings=as_json({"preprocessing": preprocessing_settings(S), "augmentation": WAVEFORM}),
            noise=lambda wildcards, input: Unrecorded(input.noise[0] if NOISE_DIR else ""),
        shell:
            "{params.cli} copy-shard --listing {input.listing} --noise={params.noise:q}"
            " --shard {wildcards.shard} --shards {params.shards:q}"
            " --versions {params.versions:q} --out-dir {params.out_dir:q} --settings {params.settings:q}"
            " 2> {log}"
