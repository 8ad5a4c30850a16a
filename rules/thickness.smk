# Bone/cartilage meshes and cartilage thickness per bone vertex (pymskt's convention, faster).


rule thickness:
    input:
        labels=REGIONS,
    output:
        meshes=directory("results/{sample}/meshes"),
        table="results/{sample}/thickness.csv",
        morphometrics="results/{sample}/morphometrics.csv",
        subregions_std="results/{sample}/labels/subregions_std.nii.gz",
        thickness_map="results/{sample}/thickness_map.nii.gz",
    log:
        "results/logs/thickness/{sample}.log",
    benchmark:
        "results/benchmarks/thickness/{sample}.tsv"
    conda:
        "../envs/mesh.yaml"
    threads: 1
    resources:
        mem_mb=per_attempt(3000),
        runtime=per_attempt(20),
    params:
        options=cli_options(
            code=command_code("thickness"),
            n_points=config["mesh"]["n_points"],
            bone_smooth_var_mm2=config["mesh"]["bone_smooth_var_mm2"],
            cartilage_smooth_var_mm2=config["mesh"]["cartilage_smooth_var_mm2"],
            crop_shafts=config["mesh"]["crop_shafts"],
            ray_in_mm=config["thickness"]["ray_in_mm"],
            ray_out_mm=config["thickness"]["ray_out_mm"],
            min_denuded_mm2=config["thickness"]["min_denuded_mm2"],
            articular_smooth_var_mm2=config["thickness"]["articular_smooth_var_mm2"],
            articular_min_facing=config["thickness"]["articular_min_facing"],
        ),
    shell:
        "kneeflow thickness --sample {wildcards.sample} {params.options}"
        " --labels {input.labels:q} --meshes {output.meshes:q} --table {output.table:q}"
        " --morphometrics {output.morphometrics:q} --subregions-std {output.subregions_std:q}"
        " --thickness-map {output.thickness_map:q} --mem-mb {resources.mem_mb} --runtime {resources.runtime} --log {log:q}"


rule subregions:
    input:
        labels=LABELS,
    output:
        labels="results/{sample}/labels/subregions.nii.gz",
    log:
        "results/logs/subregions/{sample}.log",
    benchmark:
        "results/benchmarks/subregions/{sample}.tsv"
    conda:
        "../envs/mesh.yaml"
    threads: 1
    resources:
        mem_mb=per_attempt(3000),
        runtime=per_attempt(20),
    params:
        options=cli_options(
            code=command_code("subregions"),
            reference=config["thickness"]["subregion_reference"],
            reference_shrink=config["thickness"]["subregion_reference_shrink"],
            side=lambda wc: row(wc)["side"],
        ),
    shell:
        "kneeflow subregions --sample {wildcards.sample} {params.options}"
        " --labels {input.labels:q} --out {output.labels:q} --mem-mb {resources.mem_mb} --runtime {resources.runtime} --log {log:q}"


# End to end: what a study would report from each model's own segmentation of the knees that have
# reference labels, beside the provided label maps (results/tables/thickness_auto.csv).
AUTO_REGIONS = (
    "results/{sample}/auto/{model}/subregions.nii.gz"
    if config["thickness"]["femoral_subregions"]
    else "results/{sample}/labels/{model}.nii.gz"
)


use rule subregions as subregions_auto with:
    input:
        labels="results/{sample}/labels/{model}.nii.gz",
    output:
        labels="results/{sample}/auto/{model}/subregions.nii.gz",
    log:
        "results/logs/subregions_auto/{sample}.{model}.log",
    benchmark:
        "results/benchmarks/subregions_auto/{sample}.{model}.tsv"
    wildcard_constraints:
        model="|".join(MODELS) or "^$",


use rule thickness as thickness_auto with:
    input:
        labels=AUTO_REGIONS,
    output:
        meshes=directory("results/{sample}/auto/{model}/meshes"),
        table="results/{sample}/auto/{model}/thickness.csv",
        morphometrics="results/{sample}/auto/{model}/morphometrics.csv",
        subregions_std="results/{sample}/auto/{model}/subregions_std.nii.gz",
        thickness_map="results/{sample}/auto/{model}/thickness_map.nii.gz",
    log:
        "results/logs/thickness_auto/{sample}.{model}.log",
    benchmark:
        "results/benchmarks/thickness_auto/{sample}.{model}.tsv"
    wildcard_constraints:
        model="|".join(MODELS) or "^$",
