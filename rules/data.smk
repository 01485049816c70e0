# The dataset: the user's (config key dataset_root) or the generated synthetic demo.

if DEMO:

    # The training listings of the layout (LAYOUT.demo_listings, verified first): train.csv,
    # or for multi-label pairs of the synthetic sounds mixed, in the FSDKaggle2019 layout
    # (curated and noisy lists, workflow_lib/mixtures.py).
    rule demo_dataset:
        output:
            [L.demo_data(name) for name in LAYOUT.demo_listings[1:]],
            train=L.demo_data(LAYOUT.demo_listings[0]),
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
            settings=as_json(demo_data_settings(S)),
        shell:
            "{params.cli} demo-data --out $(dirname {output.train:q})"
            " --settings {params.settings:q} 2> {log}"


# Each split is validated by its own job, so a changed test file reruns the test side only.
# DATASET_FINGERPRINTS (rules/common.smk, workflow_lib/fingerprint.py): the content of each
# split's listings and audio, as a recorded param: a replaced recording, a relabelled CSV with
# an older time stamp or a new test file reruns that split's validation and what follows.


rule validate_dataset:
    input:
        training_listing_files(),
        train=dataset_file(TRAIN_LISTINGS[0]),
    output:
        train=L.data("train.csv"),
        classes=L.data("classes.csv"),
        problems=L.data("train_problems.csv"),
    log:
        L.log("validate_dataset"),
    benchmark:
        L.benchmark("validate_dataset")
    conda:
        CONDA_ENV
    params:
        cli=CLI,
        root=Unrecorded(DATA_ROOT),
        settings=as_json(validation_settings(S)),
        folds=METHOD["folds"],
        fingerprint=DATASET_FINGERPRINTS["train"],
    shell:
        "{params.cli} validate --root {params.root:q} --folds {params.folds:q}"
        " --out-dir $(dirname {output.train:q})"
        " --settings {params.settings:q} 2> {log}"


rule validate_test:
    input:
        test_listing_files(),
        classes=L.data("classes.csv"),
        # the unlabelled pool's problems too, when there is a pool (problems.csv lists both)
        train_problems=[L.data("train_problems.csv"), *([L.data("pool_problems.csv")] if POOL else [])],
    output:
        test=L.data("test.csv"),
        problems=L.data("problems.csv"),
    log:
        L.log("validate_test"),
    benchmark:
        L.benchmark("validate_test")
    # Before the training side's preprocessing: an error in the test list stops the run
    # before any training (Snakemake starts no new job after a failure).
    priority: len(CHAINS) + 1
    conda:
        CONDA_ENV
    params:
        cli=CLI,
        root=Unrecorded(DATA_ROOT),
        settings=as_json(validation_settings(S)),
        fingerprint=DATASET_FINGERPRINTS["test"],
    shell:
        "{params.cli} validate-test --root {params.root:q} --classes {input.classes:q}"
        " --train-problems {input.train_problems:q} --out-dir $(dirname {output.test:q})"
        " --settings {params.settings:q} 2> {log}"


if POOL:

    # The unlabelled pool (dataset.unlabelled_audio_dir): every audio file of its folder,
    # validated like the training audio (dataset.validate_pool); its skips reach problems.csv
    # through validate_test. Its own fingerprint: a changed pool reruns the pool side only.
    rule validate_pool:
        input:
            present_dataset_files(["unlabelled_true_labels_csv"]),
            train=L.data("train.csv"),
        output:
            pool=L.data("pool.csv"),
            problems=L.data("pool_problems.csv"),
        log:
            L.log("validate_pool"),
        benchmark:
            L.benchmark("validate_pool")
        conda:
            CONDA_ENV
        params:
            cli=CLI,
            root=Unrecorded(DATA_ROOT),
            settings=as_json(pool_validation_settings(S)),
            fingerprint=DATASET_FINGERPRINTS["pool"],
        shell:
            "{params.cli} validate-pool --root {params.root:q} --train {input.train:q}"
            " --out-dir $(dirname {output.pool:q}) --settings {params.settings:q} 2> {log}"
