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
        samples=lambda wc: [s for s in IDS if has_any_labels(s)],
        meta=lambda wc: sample_meta(),
        split=lambda wc: [ROWS[s]["split"] for s in IDS],
        models=MODELS,
        max_triangles=config["report"]["max_triangles"],
        stages=lambda wc: {
            k: bool(config[k]["activate"])
            for k in (
                "demo",
                "segmentation",
                "thickness",
                "t2",
                "shape",
                "export",
                "figures",
            )
            if k in config
        },
    script:
        "../scripts/report.py"
