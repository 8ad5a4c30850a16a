# The targets of the default run: cohort tables, exports, figures.


def cohort_tables():
    t = []
    if MODELS and DICE_IDS:
        t.append("results/tables/dice.csv")
    if (
        MODELS
        and AUTO_IDS
        and config["thickness"]["activate"]
        and config["thickness"]["from_models"]
    ):
        t.append("results/tables/thickness_auto.csv")
    if config["thickness"]["activate"] and WITH_LABELS:
        t.append("results/tables/thickness.csv")
        t.append("results/tables/morphometrics.csv")
    if config["t2"]["activate"] and any(has_echoes(s) for s in WITH_LABELS):
        t.append("results/tables/t2.csv")
    if IMAGE_IDS:
        t.append("results/tables/qc.csv")
    if NSM_FIT_IDS and (BSCORE_FIT_IDS or SHAPE["bscore_model"]):
        t.append("results/tables/bscore.csv")
        if AUTO_NSM_IDS:
            t.append("results/tables/bscore_auto.csv")
    return t


EXPORT = config["export"]


def export_targets():
    if not EXPORT["activate"]:
        return []
    t = [f"results/export/{m}/parity.json" for m in TRAINED]
    t += [f"results/export/{n}/parity.json" for n in EXPORT["nnunet"]]
    if EXPORT["minilm"]:
        t.append("results/export/minilm/parity.json")
    return t


def sample_meta():
    cols = ["sample", "group", "kl_grade", "side", "oa_severity"]
    return {c: [None if v is None else str(v) for v in SAMPLES[c]] for c in cols}


def fig_outputs(name, caption=None):
    """png (in the report, with its caption), pdf and the plotted data as csv."""
    return {
        "png": report(
            f"results/figures/{name}.png",
            caption=f"../report/fig_{caption or name}.rst",
            category="Figures",
        ),
        "pdf": f"results/figures/{name}.pdf",
        "csv": f"results/figures/{name}.csv",
    }


def figure_targets():
    if not config["figures"]["activate"]:
        return []
    names = ["runtime_per_rule"]
    if export_targets():
        names.append("export_parity")
    if "results/tables/bscore.csv" in cohort_tables():
        names.append("bscore")
    if "results/tables/thickness.csv" in cohort_tables():
        names += [
            "thickness_by_group",
            "femoral_thickness_maps",
            "morphometrics_by_group",
        ]
    if "results/tables/t2.csv" in cohort_tables():
        names.append("t2_by_group")
    if TRAINED:
        names.append("training_curves")
        if DICE_IDS:
            names.append("dice")
    return [f"results/figures/{n}.png" for n in names]


def all_targets():
    t = [f"results/{s}/qc.json" for s in IMAGE_IDS]
    return (
        t
        + cohort_tables()
        + export_targets()
        + ["results/provenance.tsv"]
        + figure_targets()
        + (["results/report/index.html"] if config["report"]["activate"] else [])
    )


REPORT_STAGES = (
    "demo",
    "segmentation",
    "thickness",
    "t2",
    "shape",
    "export",
    "figures",
)


def stage_settings():
    """Each stage's scalar settings from the config, and the segmentation models by kind."""
    out = {
        k: {
            n: v
            for n, v in (config.get(k) or {}).items()
            if n != "activate" and isinstance(v, (str, int, float, bool))
        }
        for k in REPORT_STAGES
    }
    out["segmentation"]["models"] = (
        ", ".join(
            f"{m} ({' + '.join(x for x in ('train', 'nnunet', 'onnx') if x in c)})"
            for m, c in config["segmentation"]["models"].items()
        )
        or "none"
    )
    return out
