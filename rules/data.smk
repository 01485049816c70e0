# The dataset: the user's (config key dataset_root) or the generated synthetic demo.

if DEMO:

    rule demo_dataset:
        output:
            train=f"{RESULTS}/demo_data/train.csv",
            test=f"{RESULTS}/demo_data/test_post_competition.csv",
            truth=f"{RESULTS}/demo_data/train_true_labels.csv",
        params:
            cli=CLI,
            settings=as_json(S["demo_data"]),
        log:
            f"{RESULTS}/logs/demo_dataset.log",
        benchmark:
            f"{RESULTS}/benchmarks/demo_dataset.tsv"
        conda:
            CONDA_ENV
        shell:
            "{params.cli} demo-data --out $(dirname {output.train:q})"
            " --settings {params.settings:q} 2> {log}"


rule validate_dataset:
    input:
        optional_dataset_files(),
        train=dataset_file("train_csv"),
    output:
        train=f"{RESULTS}/data/train.csv",
        test=f"{RESULTS}/data/test.csv",
        classes=f"{RESULTS}/data/classes.csv",
        problems=f"{RESULTS}/data/problems.csv",
    params:
        cli=CLI,
        root=lambda wildcards, input: Path(input.train).parent,
        settings=as_json(S["dataset"]),
        folds=METHOD["folds"],
    log:
        f"{RESULTS}/logs/validate_dataset.log",
    benchmark:
        f"{RESULTS}/benchmarks/validate_dataset.tsv"
    conda:
        CONDA_ENV
    shell:
        "{params.cli} validate --root {params.root:q} --folds {params.folds:q}"
        " --out-dir $(dirname {output.train:q})"
        " --settings {params.settings:q} 2> {log}"
