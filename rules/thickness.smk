# Bone/cartilage meshes and cartilage thickness per bone vertex (pymskt's convention, faster).


rule thickness:
    input:
        labels=REGIONS,
    output:
        meshes=directory("results/{sample}/meshes"),
        table="results/{sample}/thickness.csv",
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
        job=job_spec(
            "thickness",
            lib=library_hash("thickness", "mesh", "labels", "io"),
            n_points=config["mesh"]["n_points"],
            bone_var=config["mesh"]["bone_smooth_var_mm2"],
            cart_var=config["mesh"]["cartilage_smooth_var_mm2"],
            crop=1.0 if config["mesh"].get("crop_shafts", True) else None,
            ray_in=config["thickness"]["ray_in_mm"],
            ray_out=config["thickness"]["ray_out_mm"],
        ),
    shell:
        job_shell(input=("labels",), output=("meshes", "table"))


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
        job=job_spec(
            "subregions",
            lib=library_hash("subregions", "io"),
            reference=config["thickness"].get("subregion_reference", ""),
            shrink=config["thickness"].get("subregion_reference_shrink", 2),
        ),
    shell:
        job_shell(input=("labels",), output=("labels",))
