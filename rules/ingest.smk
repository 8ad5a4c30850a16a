# Scans in: DICOM folders, NIfTI, NRRD -> checked image.nii.gz + qc.json; multi-echo series.


rule ingest:
    input:
        image=sheet_input({s: ROWS[s]["image"] for s in IDS if has_image(s)}),
    output:
        image="results/{sample}/image.nii.gz",
        qc="results/{sample}/qc.json",
    log:
        "results/logs/ingest/{sample}.log",
    benchmark:
        "results/benchmarks/ingest/{sample}.tsv"
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
            "ingest",
            lib=library_hash("io"),
        ),
    shell:
        job_shell(input=("image",), output=("image", "qc"))


rule ingest_echoes:
    input:
        echoes=sheet_input(
            {s: ROWS[s]["echoes"] or ROWS[s]["image"] for s in IDS if has_echoes(s)}
        ),
    output:
        echoes="results/{sample}/echoes.nii.gz",
        times="results/{sample}/echoes.json",
    log:
        "results/logs/ingest_echoes/{sample}.log",
    conda:
        "../envs/ingest.yaml"
    threads: 1
    resources:
        mem_mb=per_attempt(3000),
        runtime=per_attempt(10),
    params:
        job=job_spec(
            "ingest_echoes",
            lib=library_hash("io"),
        ),
    shell:
        job_shell(input=("echoes",), output=("echoes", "times"))
