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
        options=cli_options(code=command_code("ingest")),
    shell:
        "kneeflow ingest --sample {wildcards.sample} {params.options} --scan {input.image:q}"
        " --image {output.image:q} --qc {output.qc:q} --mem-mb {resources.mem_mb} --runtime {resources.runtime} --log {log:q}"


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
        options=cli_options(code=command_code("ingest_echoes")),
    shell:
        "kneeflow ingest-echoes --sample {wildcards.sample} {params.options} --series {input.echoes:q}"
        " --echoes {output.echoes:q} --times {output.times:q} --mem-mb {resources.mem_mb} --runtime {resources.runtime} --log {log:q}"
