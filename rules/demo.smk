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
        job=job_spec(
            "phantom",
            lib=library_hash("phantom"),
            seed=lambda wc: int(row(wc)["seed"]),
            side=lambda wc: row(wc)["side"],
            oa=lambda wc: float(row(wc)["oa_severity"] or 0.0),
            spacing=config.get("demo", {}).get("spacing_mm", 0.7),
        ),
    shell:
        job_shell(output=("image", "labels", "echoes", "times", "truth"))
