# Label maps: existing segmentations from the sheet are checked and remapped to canonical labels.


rule import_labels:
    input:
        labels=lambda wc: row(wc)["labels"],
        image=lambda wc: (
            f"results/{wc.sample}/image.nii.gz" if has_image(wc.sample) else []
        ),
    output:
        nii="results/{sample}/labels/provided.nii.gz",
        nrrd="results/{sample}/labels/provided.nrrd",
    log:
        "results/logs/import_labels/{sample}.log",
    conda:
        "../envs/ingest.yaml"
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: 2000 * attempt,
        runtime=lambda wc, attempt: 10 * attempt,
    params:
        convention=lambda wc: row(wc)["label_convention"],
        extra_conventions=config.get("label_conventions", {}),
    script:
        "../scripts/import_labels.py"
