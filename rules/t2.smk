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
        options=cli_options(
            code=command_code("t2"),
            method=config["t2"]["method"],
            drop_first_echo=config["t2"]["drop_first_echo"],
            noise_floor_snr=config["t2"]["noise_floor_snr"],
            min_ms=config["t2"]["min_ms"],
            max_ms=config["t2"]["max_ms"],
        ),
    shell:
        "kneeflow t2 --sample {wildcards.sample} {params.options} --echoes {input.echoes:q}"
        " --times {input.times:q} --labels {input.labels:q} --t2map {output.t2map:q}"
        " --table {output.table:q} --mem-mb {resources.mem_mb} --runtime {resources.runtime} --log {log:q}"
