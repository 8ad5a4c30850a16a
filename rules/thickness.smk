# Bone/cartilage meshes and cartilage thickness per bone vertex (pymskt's convention, faster).


rule thickness:
    input:
        labels=regions_path,
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
        mem_mb=lambda wc, attempt: 3000 * attempt,
        runtime=lambda wc, attempt: 20 * attempt,
    params:
        lib=library_hash("thickness", "mesh", "labels", "io"),
        n_points=config["mesh"]["n_points"],
        bone_var=config["mesh"]["bone_smooth_var_mm2"],
        cart_var=config["mesh"]["cartilage_smooth_var_mm2"],
        crop=1.0 if config["mesh"].get("crop_shafts", True) else None,
        ray_in=config["thickness"]["ray_in_mm"],
        ray_out=config["thickness"]["ray_out_mm"],
    script:
        "../scripts/thickness.py"


rule subregions:
    input:
        labels=labels_path,
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
        mem_mb=lambda wc, attempt: 3000 * attempt,
        runtime=lambda wc, attempt: 20 * attempt,
    params:
        lib=library_hash("subregions", "io"),
        reference=config["thickness"].get("subregion_reference", ""),
        shrink=config["thickness"].get("subregion_reference_shrink", 2),
    script:
        "../scripts/subregions.py"
