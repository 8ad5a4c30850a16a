# Neural shape model of the femur (train or load), per-knee fits (batched), BScore model and scores.


rule train_nsm:
    input:
        meshes=lambda wc: [f"results/{s}/meshes" for s in NSM_TRAIN_IDS],
    output:
        checkpoint=f"results/models/{NSM}/model.pth",
        config=f"results/models/{NSM}/model_params_config.json",
        latents=f"results/models/{NSM}/latents.json",
    log:
        f"results/logs/train_nsm/{NSM}.log",
    benchmark:
        f"results/benchmarks/train_nsm/{NSM}.tsv"
    priority: 40
    conda:
        "../envs/shape.yaml"
    threads: 1
    resources:
        **GPU_RESOURCES,
        mem_mb=per_attempt(6000),
        runtime=per_attempt(120),
    params:
        code=script_code("train_nsm"),
        samples=NSM_TRAIN_IDS,
        sides=lambda wc: [ROWS[s]["side"] for s in NSM_TRAIN_IDS],
        train=SHAPE["train"],
        device=DEVICE,
    script:
        "../scripts/train_nsm.py"


for _batch, _ids in nsm_batches():

    rule:
        name:
            f"fit_nsm_{_batch}"
        input:
            checkpoint=nsm_checkpoint(),
            meshes=[f"results/{s}/meshes" for s in _ids],
        output:
            **{
                f"recon_{k}": [f"results/{s}/shape/nsm_recon_{k}.vtk" for s in _ids]
                for k in nsm_surfaces()[1:]
            },
            fits=[f"results/{s}/shape/nsm.json" for s in _ids],
            recon=[f"results/{s}/shape/nsm_recon.vtk" for s in _ids],
        log:
            f"results/logs/fit_nsm/{_batch}.log",
        benchmark:
            f"results/benchmarks/fit_nsm/{_batch}.tsv"
        # as the segmentation jobs: on the demo's 2 cores it runs beside them, not after
        priority: 40
        conda:
            "../envs/shape.yaml"
        threads: 1
        resources:
            **GPU_RESOURCES,
            mem_mb=per_attempt(4000),
            runtime=per_attempt(60),
        params:
            code=script_code("fit_nsm"),
            samples=_ids,
            sides=[ROWS[s]["side"] for s in _ids],
            fit=SHAPE["fit"],
            model=SHAPE["pretrained"],
            device=DEVICE,
        script:
            "../scripts/fit_nsm.py"


rule fit_bscore:
    input:
        fits=lambda wc: [f"results/{s}/shape/nsm.json" for s in BSCORE_FIT_IDS],
    output:
        model=f"results/models/{NSM}/bscore/model.json",
    log:
        f"results/logs/fit_bscore/{NSM}.log",
    localrule: True
    conda:
        "../envs/base.yaml"
    params:
        code=script_code("fit_bscore"),
        samples=BSCORE_FIT_IDS,
        groups=[ROWS[s]["group"] for s in BSCORE_FIT_IDS],
    script:
        "../scripts/fit_bscore.py"


rule bscore:
    input:
        model=bscore_model_path(),
        fits=lambda wc: [f"results/{s}/shape/nsm.json" for s in NSM_FIT_IDS],
    output:
        scores=[f"results/{s}/shape/bscore.json" for s in NSM_FIT_IDS],
        table=report(
            "results/tables/bscore.csv",
            caption="../report/bscore.rst",
            category="Tables",
        ),
    log:
        "results/logs/bscore/bscore.log",
    localrule: True
    conda:
        "../envs/base.yaml"
    params:
        code=script_code("bscore"),
        samples=NSM_FIT_IDS,
        meta=lambda wc: sample_meta(),
        fit_ids=BSCORE_FIT_IDS,
    script:
        "../scripts/bscore.py"


# End to end (thickness.from_models): the shape model fitted, with the same settings, to each knee's
# meshes from each segmentation model's labels, one job per knee (a femur the fit refuses fails its
# own job; each starts as soon as its meshes exist), and their BScores beside the provided labels'
# (results/tables/bscore_auto.csv).
rule fit_nsm_auto:
    input:
        checkpoint=nsm_checkpoint(),
        meshes="results/{sample}/auto/{model}/meshes",
    output:
        **{
            f"recon_{k}": f"results/{{sample}}/auto/{{model}}/shape/nsm_recon_{k}.vtk"
            for k in nsm_surfaces()[1:]
        },
        fits="results/{sample}/auto/{model}/shape/nsm.json",
        recon="results/{sample}/auto/{model}/shape/nsm_recon.vtk",
    log:
        "results/logs/fit_nsm_auto/{sample}_{model}.log",
    benchmark:
        "results/benchmarks/fit_nsm_auto/{sample}_{model}.tsv"
    wildcard_constraints:
        sample="|".join(re.escape(s) for s in AUTO_NSM_IDS) or "(?!)",
        model="|".join(re.escape(m) for m in MODELS) or "(?!)",
    conda:
        "../envs/shape.yaml"
    threads: 1
    resources:
        **GPU_RESOURCES,
        mem_mb=per_attempt(4000),
        runtime=per_attempt(60),
    params:
        code=script_code("fit_nsm"),
        samples=lambda wc: [wc.sample],
        sides=lambda wc: [ROWS[wc.sample]["side"]],
        fit=SHAPE["fit"],
        model=SHAPE["pretrained"],
        device=DEVICE,
    script:
        "../scripts/fit_nsm.py"


rule table_bscore_auto:
    input:
        model=bscore_model_path(),
        provided=[f"results/{s}/shape/nsm.json" for s in AUTO_NSM_IDS],
        auto=[
            f"results/{s}/auto/{m}/shape/nsm.json"
            for m in MODELS
            for s in AUTO_NSM_IDS
        ],
    output:
        table=report(
            "results/tables/bscore_auto.csv",
            caption="../report/bscore_auto.rst",
            category="Tables",
        ),
    log:
        "results/logs/tables/bscore_auto.log",
    localrule: True
    conda:
        "../envs/base.yaml"
    params:
        code=script_code("bscore_auto"),
        samples=AUTO_NSM_IDS,
        models=MODELS,
    script:
        "../scripts/bscore_auto.py"
