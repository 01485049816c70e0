# Iterative self-verification for audio tagging with noisy labels
# (Dorfer & Widmer, DCASE 2018 Task 2, 2nd place). The method: ../shared/SPEC.md; the settings:
# config.yaml; the logic: workflow_lib/. Read the DAG top to bottom:
#
#   data.smk        dataset (given, or the synthetic demo) -> validated listings
#   preprocess.smk  SoX clipping + spectrogram versions 1 and 2, in shards
#   (later stages: folds, training, self-verification, selection, fusion, evaluation)

from snakemake.utils import min_version

min_version("8.0")


configfile: "config.yaml"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/preprocess.smk"
include: "rules/train.smk"
include: "rules/self_verify.smk"
include: "rules/predict.smk"


rule all:
    input:
        FINAL_OUTPUTS,
    default_target: True
