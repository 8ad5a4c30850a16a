"""The paper's figures: one function per figure, one style for all.

Every figure function takes tidy tables, writes ``<out>.png`` and ``<out>.pdf``, and writes the data
behind each plotted point to ``<out>.csv`` so a reader (and the tests) can check the figure against the
tables. A figure whose input is empty, or lacks a group it compares, draws an explicit "no data"
panel and logs a warning instead of an empty or misleading axis.
"""

from __future__ import annotations

__all__ = ["PALETTE", "REGION_ORDER", "SHORT", "bscore_by_group", "dice_by_structure", "export_parity",
           "femoral_thickness_map", "no_data", "runtime_per_rule", "save", "style", "t2_by_group",
           "thickness_by_group", "thickness_maps", "training_curves"]

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

PALETTE = {"healthy": "#4C72B0", "oa": "#DD8452", "unknown": "#8C8C8C"}
REGION_ORDER = [
    "femoral_cartilage", "anterior_femoral_cartilage", "medial_weight_bearing_femoral_cartilage",
    "lateral_weight_bearing_femoral_cartilage", "medial_posterior_femoral_cartilage",
    "lateral_posterior_femoral_cartilage", "medial_tibial_cartilage", "lateral_tibial_cartilage", "patellar_cartilage",
]
SHORT = {
    "femoral_cartilage": "F (all)", "anterior_femoral_cartilage": "F ant", "medial_weight_bearing_femoral_cartilage": "F med WB",
    "lateral_weight_bearing_femoral_cartilage": "F lat WB", "medial_posterior_femoral_cartilage": "F med post",
    "lateral_posterior_femoral_cartilage": "F lat post", "medial_tibial_cartilage": "T med",
    "lateral_tibial_cartilage": "T lat", "patellar_cartilage": "Patella",
}


def style():
    """The one style every figure uses (seaborn 'ticks', colour-blind-safe palette, 9 pt)."""
    import matplotlib

    matplotlib.use("Agg")
    import seaborn as sns

    sns.set_theme(context="paper", style="ticks", palette="colorblind", font_scale=1.1,
                  rc={"figure.dpi": 120, "savefig.dpi": 200, "axes.spines.right": False, "axes.spines.top": False})


def no_data(ax, what: str) -> None:
    ax.set_axis_off()
    ax.text(0.5, 0.5, f"no data\n{what}", ha="center", va="center", fontsize=12, color="#a33",
            transform=ax.transAxes, bbox={"boxstyle": "round", "fc": "#fff4f4", "ec": "#a33"})
    log.warning("figure panel without data: %s", what)


def save(fig, out: str | os.PathLike, data: pd.DataFrame) -> None:
    """Write out.png, out.pdf and the plotted data out.csv."""
    import matplotlib.pyplot as plt

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"))
    fig.savefig(out.with_suffix(".pdf"))
    plt.close(fig)
    data.to_csv(out.with_suffix(".csv"), index=False, float_format="%.6g")


def _with_meta(df: pd.DataFrame, samples: pd.DataFrame) -> pd.DataFrame:
    meta = samples[["sample", "group", "kl_grade"]].copy()
    meta["group"] = meta["group"].fillna("unknown")
    return df.merge(meta, on="sample", how="left")


def thickness_by_group(thickness: pd.DataFrame, samples: pd.DataFrame, out) -> pd.DataFrame:
    """Regional mean cartilage thickness (mm) by group, and by KL grade when given."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    style()
    d = _with_meta(thickness[thickness.stat == "mean"].dropna(subset=["value_mm"]), samples)
    d = d[d.region.isin(REGION_ORDER)]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [3, 2]})
    data = d[["sample", "region", "group", "kl_grade", "value_mm"]].copy()
    if d.empty or d.group.nunique() < 2:
        no_data(axes[0], "thickness by group needs two groups (healthy and oa)")
    else:
        order = [r for r in REGION_ORDER if r in set(d.region)]
        sns.boxplot(d, x="region", y="value_mm", hue="group", order=order, palette=PALETTE, ax=axes[0],
                    fliersize=0, linewidth=0.8)
        sns.stripplot(d, x="region", y="value_mm", hue="group", order=order, palette=PALETTE, dodge=True, ax=axes[0],
                      size=3, legend=False, edgecolor="k", linewidth=0.3)
        axes[0].set_xticks(range(len(order)), [SHORT[r] for r in order], rotation=35, ha="right")
        axes[0].set(xlabel="cartilage region", ylabel="mean thickness (mm)", title="Cartilage thickness by group")
    k = d.dropna(subset=["kl_grade"])
    if k.empty:
        no_data(axes[1], "no KL grades in the sample sheet")
    else:
        k = k[k.region.isin(["femoral_cartilage", "medial_tibial_cartilage", "lateral_tibial_cartilage"])]
        sns.pointplot(k, x="kl_grade", y="value_mm", hue="region", ax=axes[1], dodge=0.3, errorbar="sd",
                      order=sorted(k.kl_grade.unique()))
        axes[1].set(xlabel="KL grade", ylabel="mean thickness (mm)", title="By KL grade (mean ± SD)")
        axes[1].legend(title="", fontsize=8)
    save(fig, out, data)
    return data


MORPHO_PLATES = ("MT", "LT", "cMF", "cLF", "TrF", "P")


def morphometrics_by_group(morpho: pd.DataFrame, samples: pd.DataFrame, out) -> pd.DataFrame:
    """Cartilage volume, covered bone area, mean thickness and denuded bone per plate, by group."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    style()
    d = morpho[(morpho.subregion == "all") & morpho.plate.isin(MORPHO_PLATES)].dropna(subset=["value"])
    d = _with_meta(d, samples)
    panels = (("VC", "cartilage volume VC (mm³)"), ("cAB", "covered bone area cAB (mm²)"),
              ("ThCcAB.Me", "mean thickness ThCcAB.Me (mm)"), ("dAB%", "denuded bone dAB% (% of tAB)"))
    data = d[d.measure.isin([m for m, _ in panels])][["sample", "plate", "measure", "group", "value", "unit"]]
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.2))
    order = [p for p in MORPHO_PLATES if p in set(d.plate)]
    for ax, (measure, label) in zip(axes, panels):
        s = d[d.measure == measure]
        if s.empty or s.group.nunique() < 2:
            no_data(ax, f"{measure} by group needs two groups (healthy and oa)")
            continue
        sns.boxplot(s, x="plate", y="value", hue="group", order=order, palette=PALETTE, ax=ax, fliersize=0,
                    linewidth=0.8, legend=ax is axes[0])
        sns.stripplot(s, x="plate", y="value", hue="group", order=order, palette=PALETTE, dodge=True, ax=ax,
                      size=3, legend=False, edgecolor="k", linewidth=0.3)
        ax.set(xlabel="plate", ylabel=label, title=measure)
    fig.suptitle("Cartilage morphometrics by plate and group (Eckstein et al. 2006 nomenclature)")
    save(fig, out, data)
    return data


def t2_by_group(t2: pd.DataFrame, samples: pd.DataFrame, out) -> pd.DataFrame:
    """Regional median T2 (ms), deep and superficial layers, by group."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    style()
    d = _with_meta(t2[(t2.stat == "median") & (t2.layer != "all")].dropna(subset=["value"]), samples)
    d = d[d.region.isin(["femoral_cartilage", "medial_tibial_cartilage", "lateral_tibial_cartilage", "patellar_cartilage"])]
    data = d[["sample", "region", "layer", "group", "value"]].rename(columns={"value": "t2_ms"})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, layer in zip(axes, ("deep", "superficial")):
        s = d[d.layer == layer]
        if s.empty or s.group.nunique() < 2:
            no_data(ax, f"{layer} T2 needs two groups")
            continue
        order = [r for r in REGION_ORDER if r in set(s.region)]
        sns.boxplot(s, x="region", y="value", hue="group", order=order, palette=PALETTE, ax=ax, fliersize=0,
                    linewidth=0.8)
        sns.stripplot(s, x="region", y="value", hue="group", order=order, palette=PALETTE, dodge=True, ax=ax, size=3,
                      legend=False, edgecolor="k", linewidth=0.3)
        ax.set_xticks(range(len(order)), [SHORT[r] for r in order], rotation=30, ha="right")
        ax.set(xlabel="cartilage region", ylabel="median T2 (ms)", title=f"T2, {layer} half")
    save(fig, out, data)
    return data


def femoral_thickness_map(points_lps: np.ndarray, thickness: np.ndarray, side: str, bins=(48, 36)):
    """Flatten femur vertices to the standard map: medio-lateral position vs angle around the ML axis.

    Left knees are mirrored so medial is always on the same side. Returns (grid of mean thickness
    with NaN where no cartilage, x edges (mm from the centre, + = medial), angle edges (deg, 0 =
    distal, + = anterior)).
    """
    p = np.asarray(points_lps, float).copy()
    if side == "left":
        p[:, 0] = -p[:, 0]
    has = thickness > 0
    c = p[has].mean(0) if has.any() else p.mean(0)
    x = p[:, 0] - c[0]
    ang = np.degrees(np.arctan2(-(p[:, 1] - c[1]), -(p[:, 2] - c[2])))  # LPS: -y anterior, -z inferior
    xe = np.linspace(-40, 40, bins[0] + 1)
    ae = np.linspace(-150, 120, bins[1] + 1)
    sel = has
    s, _, _ = np.histogram2d(x[sel], ang[sel], bins=[xe, ae], weights=thickness[sel])
    n, _, _ = np.histogram2d(x[sel], ang[sel], bins=[xe, ae])
    with np.errstate(invalid="ignore", divide="ignore"):
        grid = s / n
    return grid, xe, ae


def thickness_maps(maps: dict[str, np.ndarray], samples: pd.DataFrame, xe, ae, out) -> pd.DataFrame:
    """Per-sample femoral thickness maps and the cohort mean difference OA minus healthy."""
    import matplotlib.pyplot as plt

    style()
    ids = sorted(maps)
    ncol = min(6, max(1, len(ids)))
    nrow = int(np.ceil(len(ids) / ncol)) + 1
    fig, axes = plt.subplots(nrow, ncol, figsize=(2.6 * ncol, 2.5 * nrow), squeeze=False, layout="constrained")
    ext = [ae[0], ae[-1], xe[0], xe[-1]]
    groups = samples.set_index("sample")["group"].to_dict()
    rows = []
    for ax, s in zip(axes[:-1].ravel(), ids):
        im = ax.imshow(maps[s], origin="lower", extent=ext, aspect="auto", cmap="viridis", vmin=0, vmax=4)
        ax.set_title(f"{s} ({groups.get(s) or '?'})", fontsize=8)
        ax.tick_params(labelsize=6)
        for (i, j), v in np.ndenumerate(maps[s]):
            if np.isfinite(v):
                rows.append({"sample": s, "x_mm": 0.5 * (xe[i] + xe[i + 1]), "angle_deg": 0.5 * (ae[j] + ae[j + 1]),
                             "thickness_mm": v})
    for ax in axes[:-1].ravel()[len(ids):]:
        ax.set_axis_off()
    if ids:
        fig.colorbar(im, ax=axes[:-1], shrink=0.6, label="thickness (mm)")
    for ax in axes[-1]:
        ax.set_axis_off()
    ax = axes[-1][0]
    h = [maps[s] for s in ids if groups.get(s) == "healthy"]
    o = [maps[s] for s in ids if groups.get(s) == "oa"]
    if not h or not o:
        no_data(ax, "OA - healthy needs both groups")
    else:
        ax.set_axis_on()
        with np.errstate(invalid="ignore"):
            diff = np.nanmean(np.stack(o), 0) - np.nanmean(np.stack(h), 0)
        im2 = ax.imshow(diff, origin="lower", extent=ext, aspect="auto", cmap="RdBu", vmin=-1, vmax=1)
        ax.set(title="mean OA - healthy", xlabel="angle (deg, 0 = distal, + anterior)", ylabel="ML (mm, + medial)")
        fig.colorbar(im2, ax=ax, label="difference (mm)")
        for (i, j), v in np.ndenumerate(diff):
            if np.isfinite(v):
                rows.append({"sample": "OA-healthy", "x_mm": 0.5 * (xe[i] + xe[i + 1]),
                             "angle_deg": 0.5 * (ae[j] + ae[j + 1]), "thickness_mm": v})
    data = pd.DataFrame(rows, columns=["sample", "x_mm", "angle_deg", "thickness_mm"])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out.with_suffix(".png"))
    fig.savefig(out.with_suffix(".pdf"))
    plt.close(fig)
    data.to_csv(out.with_suffix(".csv"), index=False, float_format="%.6g")
    return data


def dice_by_structure(dice: pd.DataFrame, out) -> pd.DataFrame:
    import matplotlib.pyplot as plt
    import seaborn as sns

    style()
    fig, ax = plt.subplots(figsize=(9, 4))
    d = dice.dropna(subset=["dice"]) if not dice.empty else dice
    data = d[["sample", "model", "structure", "dice"]] if not d.empty else pd.DataFrame(columns=["sample", "model", "structure", "dice"])
    if d.empty:
        no_data(ax, "no segmentation was scored (reference_labels)")
    else:
        sns.boxplot(d, x="structure", y="dice", hue="model", ax=ax, fliersize=0, linewidth=0.8)
        sns.stripplot(d, x="structure", y="dice", hue="model", dodge=True, ax=ax, size=3, legend=False,
                      edgecolor="k", linewidth=0.3)
        ax.set(ylim=(0, 1.02), xlabel="structure", ylabel="Dice", title="Segmentation vs reference (held-out scans)")
        ax.tick_params(axis="x", rotation=35)
    save(fig, out, data)
    return data


def training_curves(metrics: dict[str, pd.DataFrame], out) -> pd.DataFrame:
    import matplotlib.pyplot as plt

    style()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    rows = []
    if not metrics:
        no_data(axes[0], "no trained model")
        no_data(axes[1], "no trained model")
    for name, m in metrics.items():
        axes[0].plot(m.epoch + 1, m.train_loss, marker="o", label=name)
        for col in [c for c in m.columns if c.startswith("val_dice_")]:
            ok = m[col].notna()  # validation runs every `val_every` epochs
            axes[1].plot(m.epoch[ok] + 1, m[col][ok], marker=".", label=f"{name}: {col[9:]}")
            rows += [{"model": name, "epoch": int(e), "metric": col, "value": v} for e, v in zip(m.epoch, m[col])]
        rows += [{"model": name, "epoch": int(e), "metric": "train_loss", "value": v} for e, v in zip(m.epoch, m.train_loss)]
    if metrics:
        axes[0].set(xlabel="epoch", ylabel="training loss (Dice + CE)", title="Training loss")
        axes[1].set(xlabel="epoch", ylabel="validation Dice", ylim=(0, 1), title="Validation Dice per structure")
        axes[0].legend(fontsize=8)
        axes[1].legend(fontsize=6, ncol=2)
    save(fig, out, pd.DataFrame(rows, columns=["model", "epoch", "metric", "value"]))
    return pd.DataFrame(rows)


def runtime_per_rule(bench: pd.DataFrame, out) -> pd.DataFrame:
    """Where the time goes: wall seconds per job, by rule (from Snakemake's benchmark files)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    style()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    if bench.empty:
        no_data(axes[0], "no benchmark files")
        no_data(axes[1], "no benchmark files")
        data = pd.DataFrame(columns=["rule", "job", "s", "max_rss"])
    else:
        data = bench[["rule", "job", "s", "max_rss"]]
        tot = bench.groupby("rule")["s"].sum().sort_values(ascending=False)
        axes[0].barh(tot.index, tot.values, color="#4C72B0")
        axes[0].set(xlabel="total wall time (s)", ylabel="", title="Where the time goes (sum over jobs)")
        order = list(tot.index)
        sns.stripplot(bench, y="rule", x="s", order=order, ax=axes[1], size=3)
        axes[1].set(xlabel="wall time per job (s)", ylabel="", title="Per job")
    save(fig, out, data)
    return data


def bscore_by_group(bscore: pd.DataFrame, out) -> pd.DataFrame:
    """BScore by group (and KL grade), and vs the generator's OA severity where known (synthetic knees)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    style()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    cols = ["sample", "group", "kl_grade", "oa_severity", "bscore", "used_to_fit_bscore"]
    d = bscore.dropna(subset=["bscore"]).copy() if not bscore.empty else pd.DataFrame(columns=cols)
    d["group"] = d["group"].fillna("unknown")
    d["set"] = np.where(d["used_to_fit_bscore"].astype(bool), "fit BScore", "held out")
    if d.empty:
        no_data(axes[0], "no BScores")
    else:
        order = [g for g in ("healthy", "oa", "unknown") if g in set(d.group)]
        sns.boxplot(d, x="group", y="bscore", order=order, ax=axes[0], color="#dddddd", fliersize=0, linewidth=0.8)
        sns.stripplot(d, x="group", y="bscore", order=order, hue="set", ax=axes[0], size=5, edgecolor="k", linewidth=0.4)
        axes[0].axhline(0, color="#888", lw=0.8, ls="--")
        axes[0].set(xlabel="group", ylabel="BScore (healthy SD from healthy mean)", title="BScore by group")
    sev = d.dropna(subset=["oa_severity"]) if "oa_severity" in d else d.iloc[:0]
    if sev.empty:
        no_data(axes[1], "no ground-truth OA severity (synthetic knees only)")
    else:
        from scipy.stats import spearmanr

        for name, g in sev.groupby("set"):
            axes[1].scatter(g.oa_severity.astype(float), g.bscore, label=name, s=28, edgecolor="k", linewidth=0.4)
        held = sev[~sev.used_to_fit_bscore.astype(bool)]
        rho = spearmanr(held.oa_severity.astype(float), held.bscore).statistic if len(held) > 2 else float("nan")
        axes[1].set(xlabel="generator OA severity (0-1)", ylabel="BScore",
                    title=f"BScore vs OA severity (held out: Spearman {rho:.2f}, n={len(held)})")
        axes[1].legend(fontsize=8)
    save(fig, out, d[[c for c in cols if c in d.columns]])
    return d


def export_parity(parity: list[dict], out) -> pd.DataFrame:
    """Export parity: error vs PyTorch per exported model and format (log scale), with the targets."""
    import matplotlib.pyplot as plt

    style()
    rows = []
    for rec in parity:
        for fmt, a in rec.get("artifacts", {}).items():
            if "max_abs" in a:
                rows.append({"model": rec["name"], "format": fmt, "measure": "max abs error (run)", "value": a["max_abs"],
                             "how": a.get("prediction", "")})
            fp16 = a.get("torch_fp16_vs_fp32")
            if fp16:
                rows.append({"model": rec["name"], "format": fmt, "measure": "max abs error (torch fp16 on CPU)",
                             "value": fp16["max_abs"], "how": a.get("fp16_reference", "")})
            if "max_abs" not in a and not fp16:
                rows.append({"model": rec["name"], "format": fmt, "measure": "not measured", "value": np.nan,
                             "how": a.get("prediction", "")})
    data = pd.DataFrame(rows, columns=["model", "format", "measure", "value", "how"])
    fig, ax = plt.subplots(figsize=(10, 4.2))
    d = data.dropna(subset=["value"])
    if d.empty:
        no_data(ax, "no export parity records")
    else:
        d = d.assign(label=d["model"] + "\n" + d["format"])
        labels = list(dict.fromkeys(d["label"]))
        markers = {"max abs error (run)": "o", "max abs error (torch fp16 on CPU)": "s"}
        for measure, g in d.groupby("measure"):
            ax.scatter([labels.index(x) for x in g["label"]], g["value"].clip(lower=1e-9), marker=markers[measure],
                       s=40, label=measure, edgecolor="k", linewidth=0.4)
        skipped = data[data["measure"] == "not measured"]
        for _, r in skipped.iterrows():
            lab = f"{r['model']}\n{r['format']}"
            labels.append(lab)
            ax.annotate("not run\n(needs macOS)", (len(labels) - 1, 0), xycoords=("data", "axes fraction"),
                        xytext=(0, 12), textcoords="offset points", ha="center", fontsize=7, color="#777")
        ax.axhline(1e-4, color="#a33", ls="--", lw=0.8)
        ax.text(len(labels) - 0.5, 1e-4, "ONNX target 1e-4", color="#a33", va="bottom", ha="right", fontsize=8)
        ax.axhline(1e-5, color="#555", ls=":", lw=0.8)
        ax.text(len(labels) - 0.5, 1e-5, "MiniLM target 1e-5", color="#555", va="bottom", ha="right", fontsize=8)
        ax.set_yscale("log")
        ax.set_xticks(range(len(labels)), labels, fontsize=7)
        ax.set(ylabel="max |exported - PyTorch| (output units)", xlabel="",
               title="Export parity (CoreML prediction runs on macOS only; Linux shows torch fp16)")
        ax.legend(fontsize=7)
    save(fig, out, data)
    return data
