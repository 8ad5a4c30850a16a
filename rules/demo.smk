# The synthetic demo cohort: each knee written to results/demo/<sample>/ with its ground truth.


rule phantom:
    output:
        image="results/demo/{sample}/image.nii.gz",
        labels="results/demo/{sample}/labels.nii.gz",
        echoes="results/demo/{sample}/echoes.nii.gz",
        times="results/demo/{sample}/echoes.json",
        truth="results/demo/{sample}/truth.json",
    log:
        "results/logs/phantom/{sample}.log",
    benchmark:
        "results/benchmarks/phantom/{sample}.tsv"
    # upstream of training (the demo's critical path): before the per-sample analyses
    priority: 45
    conda:
        "../envs/ingest.yaml"
    threads: 1
    resources:
        mem_mb=per_attempt(2000),
        runtime=per_attempt(10),
    params:
        options=cli_options(
            code=command_code("phantom"),
            seed=lambda wc: int(row(wc)["seed"]),
            side=lambda wc: row(wc)["side"],
            oa_severity=lambda wc: float(row(wc)["oa_severity"] or 0.0),
            lesions=lambda wc: row(wc).get("lesions") or "",
            spacing_mm=config["demo"]["spacing_mm"],
        ),
    shell:
        "kneeflow phantom --sample {wildcards.sample} {params.options}"
        " --out results/demo/{wildcards.sample} --mem-mb {resources.mem_mb} --runtime {resources.runtime} --log {log:q}"
