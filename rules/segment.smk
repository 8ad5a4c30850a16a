# Label maps: existing segmentations from the sheet are checked and remapped to canonical labels.
# The remapped copy is NIfTI only: the sheet's map is the user's own file, in their format already
# (model segmentations below also get a .nrrd for 3D Slicer).


rule import_labels:
    input:
        **IMPORT_IMAGE,
        labels=sheet_input({s: ROWS[s]["labels"] for s in IDS if has_labels(s)}),
    output:
        nii="results/{sample}/labels/provided.nii.gz",
    log:
        "results/logs/import_labels/{sample}.log",
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
            code=command_code("labels"),
            convention=LABEL_CONVENTION,
            conventions=json.dumps(config["label_conventions"]),
        ),
    shell:
        f"kneeflow labels --sample {{wildcards.sample}} {{params.options}} --labels {{input.labels:q}}"
        f"{' --image {input.image:q}' if IMPORT_IMAGE else ''} --out {{output.nii:q}} --mem-mb {{resources.mem_mb}} --runtime {{resources.runtime}} --log {{log:q}}"


rule train_model:
    input:
        images=lambda wc: [f"results/{s}/image.nii.gz" for s in TRAIN_IDS],
        labels=lambda wc: [f"results/{s}/labels/provided.nii.gz" for s in TRAIN_IDS],
    output:
        checkpoint="results/models/{model}/checkpoint.pt",
        metrics=report(
            "results/models/{model}/metrics.csv",
            caption="../report/metrics.rst",
            category="Segmentation",
        ),
        config="results/models/{model}/config.yaml",
    log:
        "results/logs/train_model/{model}.log",
    benchmark:
        "results/benchmarks/train_model/{model}.tsv"
    # on the critical path of the demo: start it as soon as its inputs exist. One declared thread, so
    # the scheduler never starves it behind single-thread jobs; torch uses `train.threads`.
    priority: 50
    conda:
        "../envs/segment.yaml"
    threads: 1
    resources:
        **TRAIN_RESOURCES,
        mem_mb=per_attempt(8000),
        runtime=per_attempt(240),
    params:
        options=cli_options(
            code=command_code("train_cmd"),
            settings=lambda wc: json.dumps(model_cfg(wc.model)["train"]),
            device=DEVICE,
            processes=TRAIN_PROCESSES,
        ),
        train_images=[f"results/{s}/image.nii.gz" for s in FIT_IDS],
        train_labels=[f"results/{s}/labels/provided.nii.gz" for s in FIT_IDS],
        val_images=[f"results/{s}/image.nii.gz" for s in VAL_IDS],
        val_labels=[f"results/{s}/labels/provided.nii.gz" for s in VAL_IDS],
        val_sides=[ROWS[s]["side"] or "unknown" for s in VAL_IDS],
    shell:
        "kneeflow train {params.options} --images {params.train_images:q} --labels {params.train_labels:q}"
        " --val-images {params.val_images:q} --val-labels {params.val_labels:q} --val-sides {params.val_sides:q}"
        " --out results/models/{wildcards.model} --mem-mb {resources.mem_mb} --runtime {resources.runtime} --log {log:q}"


# Segmentation in two steps, so that one bad scan never holds back the others of its batch:
# - one job per batch loads the model once and reads each scan itself from the sheet (the same
#   checks as `ingest`), so it does not wait on the batch's ingest jobs; a scan it cannot read or
#   segment is recorded in the batch's manifest.json and the job goes on with the next;
# - one small job per scan checks the label map against the ingested image and writes it to
#   results/<sample>/labels/<model>.nii.gz + .nrrd. A bad scan fails in its own ingest job (and, if
#   the model failed on it alone, in this job, with the batch's message).
for _model, _batch, _ids in segment_batches():
    if segment_backend(_model) == "dosma":
        continue

    rule:
        name:
            f"segment_{_model}_{_batch}"
        input:
            model=segment_model_input(_model),
            scans=[ROWS[s]["image"] for s in _ids],
        output:
            staging=directory(segment_staging(_model, _batch)),
        log:
            f"results/logs/segment/{_model}_{_batch}.log",
        benchmark:
            f"results/benchmarks/segment/{_model}_{_batch}.tsv"
        # the held-out knees' analyses wait on it: ahead of exports and figures once its model exists
        priority: 40
        conda:
            "../envs/segment.yaml"
        threads: SEG["threads"]
        resources:
            **GPU_RESOURCES,
            mem_mb=per_attempt(6000),
            runtime=per_attempt(60),
        params:
            code=script_code("segment"),
            samples=_ids,
            sides=[ROWS[s]["side"] for s in _ids],
            device=DEVICE,
            mirror=config["segmentation"]["mirror"],
            backend=segment_backend(_model),
            entry=model_cfg(_model),
        script:
            "../scripts/segment.py"


# DOSMA's Keras models: the same batch job in their own environment (TensorFlow, no torch).
for _model, _batch, _ids in segment_batches():
    if segment_backend(_model) != "dosma":
        continue

    rule:
        name:
            f"segment_dosma_{_model}_{_batch}"
        input:
            model=segment_model_input(_model),
            scans=[ROWS[s]["image"] for s in _ids],
        output:
            staging=directory(segment_staging(_model, _batch)),
        log:
            f"results/logs/segment/{_model}_{_batch}.log",
        benchmark:
            f"results/benchmarks/segment/{_model}_{_batch}.tsv"
        conda:
            "../envs/dosma.yaml"
        threads: 2
        resources:
            mem_mb=per_attempt(6000),
            runtime=per_attempt(60),
        params:
            code=script_code("segment_dosma"),
            samples=_ids,
            sides=[ROWS[s]["side"] for s in _ids],
            entry=model_cfg(_model),
        script:
            "../scripts/segment_dosma.py"


rule segment_labels:
    input:
        staging=lambda wc: segment_staging(wc.model, SEGMENT_BATCH[wc.sample]),
        image="results/{sample}/image.nii.gz",
    output:
        nii="results/{sample}/labels/{model}.nii.gz",
        nrrd="results/{sample}/labels/{model}.nrrd",
    log:
        "results/logs/segment_labels/{sample}_{model}.log",
    wildcard_constraints:
        model="|".join(re.escape(m) for m in MODELS) or "(?!)",
    localrule: True
    conda:
        "../envs/segment.yaml"
    threads: 1
    resources:
        mem_mb=per_attempt(2000),
        runtime=per_attempt(10),
    params:
        options=cli_options(code=command_code("segment_collect")),
    shell:
        "kneeflow segment collect --sample {wildcards.sample} {params.options} --staging {input.staging:q}"
        " --image {input.image:q} --nii {output.nii:q} --nrrd {output.nrrd:q} --mem-mb {resources.mem_mb} --runtime {resources.runtime} --log {log:q}"


rule dice:
    input:
        pred=lambda wc: [f"results/{s}/labels/{wc.model}.nii.gz" for s in DICE_IDS],
        ref=lambda wc: [ROWS[s]["reference_labels"] for s in DICE_IDS],
    output:
        table="results/tables/dice_{model}.csv",
    log:
        "results/logs/dice/{model}.log",
    conda:
        "../envs/segment.yaml"
    threads: 1
    resources:
        mem_mb=per_attempt(4000),
        runtime=per_attempt(20),
    params:
        code=script_code("dice"),
        samples=DICE_IDS,
        model=lambda wc: wc.model,
    script:
        "../scripts/dice.py"


rule table_dice:
    input:
        tables=[f"results/tables/dice_{m}.csv" for m in MODELS],
    output:
        table=report(
            "results/tables/dice.csv", caption="../report/dice.rst", category="Tables"
        ),
    log:
        "results/logs/tables/dice.log",
    localrule: True
    conda:
        "../envs/base.yaml"
    params:
        code=script_code("aggregate"),
    script:
        "../scripts/aggregate.py"
