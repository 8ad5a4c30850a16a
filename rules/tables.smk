# Cohort tables: one row per sample x region x stat.


rule table_thickness:
    input:
        tables=lambda wc: [f"results/{s}/thickness.csv" for s in WITH_LABELS],
    output:
        table=report(
            "results/tables/thickness.csv",
            caption="../report/thickness.rst",
            category="Tables",
        ),
    log:
        "results/logs/tables/thickness.log",
    localrule: True
    conda:
        "../envs/base.yaml"
    params:
        code=script_code("aggregate"),
    script:
        "../scripts/aggregate.py"


# Each sample's morphometrics.csv is an input (written by its thickness job): Snakemake reruns a job
# for a missing output only when a consumer asks for that file.
rule table_morphometrics:
    input:
        tables=lambda wc: [f"results/{s}/morphometrics.csv" for s in WITH_LABELS],
    output:
        table=report(
            "results/tables/morphometrics.csv",
            caption="../report/morphometrics.rst",
            category="Tables",
        ),
    log:
        "results/logs/tables/morphometrics.log",
    localrule: True
    conda:
        "../envs/base.yaml"
    params:
        code=script_code("aggregate"),
    script:
        "../scripts/aggregate.py"


rule table_thickness_auto:
    input:
        provided=lambda wc: [f"results/{s}/thickness.csv" for s in AUTO_IDS],
        auto=lambda wc: [
            f"results/{s}/auto/{m}/thickness.csv" for m in MODELS for s in AUTO_IDS
        ],
        truth=lambda wc: (
            [f"results/demo/{s}/truth.json" for s in AUTO_IDS]
            if config["demo"]["activate"]
            else []
        ),
    output:
        table=report(
            "results/tables/thickness_auto.csv",
            caption="../report/thickness_auto.rst",
            category="Tables",
        ),
    log:
        "results/logs/tables/thickness_auto.log",
    localrule: True
    conda:
        "../envs/base.yaml"
    params:
        code=script_code("thickness_auto"),
        samples=lambda wc: AUTO_IDS,
        models=MODELS,
    script:
        "../scripts/thickness_auto.py"


rule table_t2:
    input:
        tables=lambda wc: [f"results/{s}/t2.csv" for s in WITH_LABELS if has_echoes(s)],
    output:
        table=report(
            "results/tables/t2.csv", caption="../report/t2.rst", category="Tables"
        ),
    log:
        "results/logs/tables/t2.log",
    localrule: True
    conda:
        "../envs/base.yaml"
    params:
        code=script_code("aggregate"),
    script:
        "../scripts/aggregate.py"


rule table_qc:
    input:
        qc=lambda wc: [f"results/{s}/qc.json" for s in IMAGE_IDS],
    output:
        table="results/tables/qc.csv",
    log:
        "results/logs/tables/qc.log",
    localrule: True
    conda:
        "../envs/base.yaml"
    params:
        code=script_code("qc_table"),
        samples=lambda wc: IMAGE_IDS,
    script:
        "../scripts/qc_table.py"


rule provenance:
    input:
        tables=lambda wc: cohort_tables(),
    output:
        tsv="results/provenance.tsv",
    log:
        "results/logs/tables/provenance.log",
    localrule: True
    conda:
        "../envs/base.yaml"
    params:
        code=script_code("provenance"),
    script:
        "../scripts/provenance.py"
