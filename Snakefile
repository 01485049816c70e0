# Iterative self-verification for audio tagging with noisy labels
# (Dorfer & Widmer, DCASE 2018 Task 2, 2nd place). The method: docs/method.md; the settings:
# config.yaml; the logic: workflow_lib/. Read the DAG top to bottom:
#
#   data.smk        dataset (given, or the synthetic demo) -> validated listings
#   preprocess.smk  SoX clipping + spectrogram versions 1 and 2, in shards
#   train.smk       folds, initial training (it0, per start), fine-tuning (it1 ... itN, per chain)
#   self_verify.smk K-excerpt posteriors of each fold model on its held-out unverified clips,
#                   then the chain's trust policy (workflow_lib/policies.py)
#   predict.smk     per chain: selection, prediction, fusion, submission, evaluation, summary;
#                   the systems table of every chain
#   report.smk      plots for `snakemake --report report.html`
#   export.smk      the fused tagger as TorchScript + ONNX bundle (results/export, `sv-tag`)
# A chain (config keys chains, run_chains) = iteration 0 + a trust policy; the {chain}
# wildcard runs the same rules for each; workflow_lib/layout.py owns the results/ layout.

from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/preprocess.smk"
include: "rules/train.smk"
include: "rules/self_verify.smk"
include: "rules/predict.smk"
include: "rules/report.smk"
include: "rules/export.smk"


check_name_lengths()  # every rule is known: names too long for a path stop the run here


# Bookkeeping rules: they read and write a few small CSV or PNG files in seconds. On a cluster
# Snakemake runs them itself instead of sending each to the queue as a job of its own (the data
# validation, preprocessing, training, self-verification, prediction and export jobs go to the
# cluster); a local run is the same either way.
localrules:
    all,
    folds,
    initial_list,
    spectrogram_manifest,
    select_iteration,
    fuse,
    evaluate,
    summary,
    systems,
    choose_chain,
    report_tables,
    plot_training,
    plot_evaluation,


rule all:
    default_target: True
    input:
        FINAL_OUTPUTS,
