# The dataset: the user's (config key dataset_root) or the generated synthetic demo.

if DEMO:

    # Multi-label (MULTI_LABEL): pairs of the synthetic sounds mixed, in the FSDKaggle2019
    # layout (curated and noisy lists, workflow_lib/mixtures.py).
    rule demo_dataset:
        output:
            [L.demo_data("train_noisy.csv")] if MULTI_LABEL else [],
            train=L.demo_data("train_curated.csv" if MULTI_LABEL else "train.csv"),
            test=L.demo_data("test_post_competition.csv"),
            truth=L.demo_data("train_true_labels.csv"),
        log:
            L.log("demo_dataset"),
        benchmark:
            L.benchmark("demo_dataset")
        conda:
            CONDA_ENV
        params:
            cli=CLI,
            settings=as_json({**S["demo_data"], "multi_label": True} if MULTI_LABEL else S["demo_data"]),
        shell:
            "{params.cli} demo-data --out $(dirname {output.train:q})"
            " --settings {params.settings:q} 2> {log}"


rule validate_dataset:
    input:
        optional_dataset_files(),
        train=dataset_file(TRAIN_LISTINGS[0]),
    output:
        train=L.data("train.csv"),
        test=L.data("test.csv"),
        classes=L.data("classes.csv"),
        problems=L.data("problems.csv"),
    log:
        L.log("validate_dataset"),
    benchmark:
        L.benchmark("validate_dataset")
    conda:
        CONDA_ENV
    params:
        cli=CLI,
        # The dataset root: the training list's path less the list's own (relative) parts.
        root=lambda wildcards, input: Path(input.train).parents[
            len(Path(S["dataset"][TRAIN_LISTINGS[0]]).parts) - 1
        ],
        settings=as_json(layout_settings(S["dataset"])),
        folds=METHOD["folds"],
    shell:
        "{params.cli} validate --root {params.root:q} --folds {params.folds:q}"
        " --out-dir $(dirname {output.train:q})"
        " --settings {params.settings:q} 2> {log}"
