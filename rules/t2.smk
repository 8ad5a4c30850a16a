# T2 maps from multi-echo spin-echo series, masked to cartilage, with regional tables.


rule t2:
    input:
        echoes="results/{sample}/echoes.nii.gz",
        times="results/{sample}/echoes.json",
        labels=REGIONS,
    output:
        t2map="results/{sample}/t2map.nii.gz",
        table="results/{sample}/t2.csv",
    log:
        "results/logs/t2/{sample}.log",
    benchmark:
        "results/benchmarks/t2/{sample}.tsv"
    conda:
        "../envs/t2.yaml"
    threads: 1
    resources:
        mem_mb=per_attempt(3000),
        runtime=per_attempt(20),
    params:
        job=job_spec(
            "t2",
            lib=library_hash("t2", "io", "labels"),
            method=config["t2"]["method"],
            drop_first_echo=config["t2"].get("drop_first_echo", False),
            noise_floor_snr=config["t2"].get("noise_floor_snr", 0.0),
            min_ms=config["t2"].get("min_ms", 0.0),
            max_ms=config["t2"].get("max_ms", 100.0),
        ),
    shell:
        job_shell(input=("echoes", "times", "labels"), output=("t2map", "table"))
