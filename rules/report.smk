# The study report (results/report/index.html + one page per knee; offline, 3-D meshes via plotly.js).


rule report_html:
    input:
        tables=lambda wc: cohort_tables(),
        figures=lambda wc: figure_targets(),
        parity=lambda wc: export_targets(),
        provenance="results/provenance.tsv",
    output:
        index="results/report/index.html",
    log:
        "results/logs/report/report.log",
    localrule: True
    conda:
        "../envs/figures.yaml"
    params:
        code=script_code("report"),
        samples=lambda wc: WITH_LABELS,
        meta=lambda wc: sample_meta(),
        split=lambda wc: [ROWS[s]["split"] for s in IDS],
        models=MODELS,
        max_triangles=config["report"]["max_triangles"],
        stages=lambda wc: {
            k: bool(config[k]["activate"]) for k in REPORT_STAGES if k in config
        },
        settings=lambda wc: stage_settings(),
    script:
        "../scripts/report.py"
