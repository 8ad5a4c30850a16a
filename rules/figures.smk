# The paper's figures (one script each, one style): results/figures/<name>.{png,pdf,csv}.


rule fig_thickness:
    input:
        table="results/tables/thickness.csv",
    output:
        **fig_outputs("thickness_by_group"),
    log:
        "results/logs/figures/thickness_by_group.log",
    localrule: True
    conda:
        "../envs/figures.yaml"
    params:
        code=script_code("figures/thickness"),
        meta=lambda wc: sample_meta(),
    script:
        "../scripts/figures/thickness.py"


# The meshes come with the thickness table: the jobs that write each sample's table write its meshes,
# so the cohort table stands for them (10k mesh folders as inputs cost 5% of the graph's build). A
# mesh folder deleted by hand is not rebuilt for this figure (Snakemake reruns a job for a missing
# output only for a job that reads it); the figure then fails naming the missing femur.vtk.
rule fig_thickness_maps:
    input:
        table="results/tables/thickness.csv",
    output:
        **fig_outputs("femoral_thickness_maps"),
    log:
        "results/logs/figures/femoral_thickness_maps.log",
    localrule: True
    conda:
        "../envs/figures.yaml"
    params:
        code=script_code("figures/thickness_maps"),
        samples=lambda wc: WITH_LABELS,
        meshes=lambda wc: [f"results/{s}/meshes" for s in WITH_LABELS],
        meta=lambda wc: sample_meta(),
    script:
        "../scripts/figures/thickness_maps.py"


rule fig_morphometrics:
    input:
        table="results/tables/morphometrics.csv",
    output:
        **fig_outputs("morphometrics_by_group"),
    log:
        "results/logs/figures/morphometrics_by_group.log",
    localrule: True
    conda:
        "../envs/figures.yaml"
    params:
        code=script_code("figures/morphometrics"),
        meta=lambda wc: sample_meta(),
    script:
        "../scripts/figures/morphometrics.py"


rule fig_t2:
    input:
        table="results/tables/t2.csv",
    output:
        **fig_outputs("t2_by_group"),
    log:
        "results/logs/figures/t2_by_group.log",
    localrule: True
    conda:
        "../envs/figures.yaml"
    params:
        code=script_code("figures/t2"),
        meta=lambda wc: sample_meta(),
    script:
        "../scripts/figures/t2.py"


rule fig_dice:
    input:
        table="results/tables/dice.csv",
    output:
        **fig_outputs("dice"),
    log:
        "results/logs/figures/dice.log",
    localrule: True
    conda:
        "../envs/figures.yaml"
    params:
        code=script_code("figures/dice"),
    script:
        "../scripts/figures/dice.py"


rule fig_training:
    input:
        metrics=[f"results/models/{m}/metrics.csv" for m in TRAINED],
    output:
        **fig_outputs("training_curves"),
    log:
        "results/logs/figures/training_curves.log",
    localrule: True
    conda:
        "../envs/figures.yaml"
    params:
        code=script_code("figures/training"),
        models=TRAINED,
    script:
        "../scripts/figures/training.py"


rule fig_runtime:
    input:
        tables=lambda wc: cohort_tables(),
    output:
        **fig_outputs("runtime_per_rule"),
    log:
        "results/logs/figures/runtime_per_rule.log",
    localrule: True
    conda:
        "../envs/figures.yaml"
    params:
        code=script_code("figures/runtime"),
        bench_dir="results/benchmarks",
    script:
        "../scripts/figures/runtime.py"


rule fig_bscore:
    input:
        table="results/tables/bscore.csv",
    output:
        **fig_outputs("bscore"),
    log:
        "results/logs/figures/bscore.log",
    localrule: True
    conda:
        "../envs/figures.yaml"
    params:
        code=script_code("figures/bscore"),
    script:
        "../scripts/figures/bscore.py"


rule fig_export_parity:
    input:
        parity=lambda wc: export_targets(),
    output:
        **fig_outputs("export_parity"),
    log:
        "results/logs/figures/export_parity.log",
    localrule: True
    conda:
        "../envs/figures.yaml"
    params:
        code=script_code("figures/export_parity"),
    script:
        "../scripts/figures/export_parity.py"
