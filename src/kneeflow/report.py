"""The study report a researcher opens: a landing page and one page per knee, offline.

``results/report/index.html``: what ran (stages, models and their weights' sha256, versions, commit,
date), the cohort, the headline numbers with their definitions, warnings from the logs, the figures with
their captions, a QC montage (one mid-sagittal slice per knee with its labels) and the cohort table
linking each knee's page. ``results/report/knees/<sample>.html``: the knee's bone and cartilage meshes
in 3-D (cartilage coloured by thickness, mm; the legend toggles bones, cartilage and the NSM
reconstruction), its scan with the label overlay in three orthogonal planes, and its rows of every
table. The 3-D views use plotly.js from the installed plotly package, written once beside the pages
(``plotly.min.js``): nothing is fetched at view time. Meshes are decimated (``max_triangles`` per
structure) and coordinates rounded to 0.1 mm to keep the report small enough to mail.
"""

from __future__ import annotations

__all__ = ["CARTILAGE_MESHES", "build_report", "knee_figure", "knee_page", "landing_page", "label_overlay_png",
           "qc_montage", "headline_numbers", "stages_table", "STAGES"]

import base64
import html
import io
import json
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

BONE_MESHES = ("femur", "tibia", "patella")
CARTILAGE_MESHES = ("femoral_cartilage", "medial_tibial_cartilage", "lateral_tibial_cartilage", "patellar_cartilage")
PLATES = CARTILAGE_MESHES
#: label colours (RGB 0-1) for overlays, canonical labels
LABEL_COLOURS = {1: (0.90, 0.10, 0.55), 2: (0.95, 0.35, 0.10), 3: (0.10, 0.75, 0.30), 4: (0.10, 0.55, 0.95),
                 5: (0.60, 0.30, 0.90), 6: (0.35, 0.90, 0.90), 7: (0.95, 0.90, 0.30), 8: (0.55, 0.85, 0.45),
                 9: (0.95, 0.60, 0.70)}
#: what each stage does, and the per-knee or per-study files it writes (glob, relative to results/):
#: the landing page's "Stages" table lists them with on/off, the settings and the files found
STAGES = {
    "demo": ("Synthesises the demo cohort: phantom knees (scan, label map, multi-echo series and "
             "truth.json with the analytic thickness, morphometrics and T2) from the sheet's rows.",
             "demo/*/truth.json"),
    "ingest": ("Reads each scan (DICOM series or NIfTI), checks its header and geometry, writes it as "
               "NIfTI with QC numbers (SNR, spacing, orientation); label maps given by the sheet are "
               "checked against the scan and remapped to the canonical labels.", "*/qc.json"),
    "segmentation": ("Trains the configured models on the train split (or loads nnU-Net / ONNX models "
                     "with their checksums), segments every scan in batches, keeps each label's "
                     "largest component, and scores held-out knees against their labels (Dice, ASSD).",
                     "*/labels/*.nii.gz"),
    "thickness": ("Meshes bones and cartilage from the label map, registers the femoral subregions, "
                  "measures cartilage thickness along the bone's normals, and computes the "
                  "morphometrics (VC, tAB, cAB, dAB%, AC, thickness per plate and Wirth & Eckstein "
                  "subregion) and a thickness-map image.", "*/thickness.csv"),
    "t2": ("Fits T2 per voxel from the multi-echo series and summarises it per plate, subregion and "
           "layer (deep / superficial).", "*/t2.csv"),
    "shape": ("Fits the femur neural shape model (NSM) to each knee's femur mesh (latent code and "
              "reconstruction) and places it on the healthy-to-OA BScore axis.", "*/shape/nsm.json"),
    "export": ("Exports trained models to ONNX (and CoreML where coremltools runs) and checks the "
               "exported model's output against PyTorch's; an error above the bound fails the job.",
               "export/*/parity.json"),
    "figures": ("Draws the paper's figures from the cohort tables (png, pdf and the plotted data).",
                "figures/*.png"),
}
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1200px;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}td,th{border:1px solid #ddd;padding:2px 6px;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}.warn{color:#a33}.def{color:#555;font-size:.9em}
figure{margin:1em 0}figcaption{color:#444;font-size:.9em;max-width:900px}img{max-width:100%}
"""


# ------------------------------------------------------------------------------------------- helpers


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _img(b64: str, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


def _table(df: pd.DataFrame, floatfmt: str = "{:.3g}") -> str:
    if df is None or df.empty:
        return '<p class="def">no rows</p>'
    return df.to_html(index=False, border=0, float_format=lambda v: floatfmt.format(v), escape=True, na_rep="")


def _page(title: str, body: str, plotly: str | None = None) -> str:
    script = f'<script src="{plotly}"></script>' if plotly else ""
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style>{script}</head><body>{body}</body></html>")


def _read(path) -> pd.DataFrame | None:
    p = Path(path) if path else None
    return pd.read_csv(p) if p and p.exists() and p.stat().st_size else None


# ----------------------------------------------------------------------------------- the numbers


def headline_numbers(tables: dict[str, pd.DataFrame | None], meta: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The landing page's numbers, each a small table computed from the cohort tables."""
    out: dict[str, pd.DataFrame] = {}
    groups = meta.set_index("sample")["group"].fillna("unknown").to_dict()
    d = tables.get("dice")
    if d is not None and not d.empty:
        out["dice"] = (d.groupby(["model", "structure"])
                       .agg(dice_mean=("dice", "mean"), dice_min=("dice", "min"), assd_mean_mm=("assd_mm", "mean"),
                            assd_max_mm=("assd_mm", "max"), knees=("sample", "nunique"))
                       .reset_index())
    t = tables.get("thickness")
    if t is not None and not t.empty:
        t = t[(t.stat == "mean") & t.region.isin(PLATES)].assign(group=lambda x: x["sample"].map(groups))
        out["thickness"] = (t.groupby(["region", "group"]).value_mm.agg(["mean", "std", "count"])
                            .rename(columns={"mean": "mean_mm", "std": "sd_mm", "count": "knees"}).reset_index())
    t2 = tables.get("t2")
    if t2 is not None and not t2.empty:
        sel = (t2.stat == "median") & (t2.layer == "all") if "layer" in t2 else t2.stat == "median"
        t2 = t2[sel & t2.region.isin(PLATES)].assign(group=lambda x: x["sample"].map(groups))
        out["t2"] = (t2.groupby(["region", "group"]).value.agg(["mean", "std", "count"])
                     .rename(columns={"mean": "median_t2_mean_ms", "std": "sd_ms", "count": "knees"}).reset_index())
    b = tables.get("bscore")
    if b is not None and not b.empty and "bscore" in b:
        b = b.assign(group=lambda x: x["sample"].map(groups))
        out["bscore"] = (b.groupby("group").bscore.agg(["mean", "std", "count"])
                         .rename(columns={"count": "knees"}).reset_index())
    m = tables.get("morphometrics")
    if m is not None and not m.empty:
        m = m[(m.subregion == "all") & m.measure.isin(["VC", "cAB", "dAB%"])].assign(
            group=lambda x: x["sample"].map(groups))
        out["morphometrics"] = (m.pivot_table(index=["plate", "group"], columns="measure", values="value",
                                              aggfunc="mean").rename_axis(columns=None).reset_index())
    p = tables.get("parity")
    if p is not None and not p.empty:
        out["parity"] = p
    return out


DEFINITIONS = {
    "dice": "Dice = 2|A∩B| / (|A|+|B|) of each model's labels against the reference labels of the held-out "
            "knees; ASSD = average symmetric surface distance (mm).",
    "thickness": "Per knee, the mean cartilage thickness of the plate (rays along the bone normals, "
                 "pymskt's convention); here mean and SD over the knees of each group.",
    "t2": "Per knee, the median T2 (ms) of the plate's voxels (mono-exponential fit); mean and SD over knees.",
    "bscore": "BScore: the femur's position along the healthy-to-OA axis of the shape model's latent space.",
    "morphometrics": "Eckstein et al. 2006 nomenclature, mean over knees: VC volume (mm³), cAB covered "
                     "subchondral bone area (mm²), dAB% denuded bone (full-thickness loss, % of tAB).",
    "parity": "Largest |exported - PyTorch| output difference on the parity input, per model and format.",
}


def parity_table(paths) -> pd.DataFrame:
    rows = []
    for p in paths:
        rec = json.loads(Path(p).read_text())
        for fmt, a in (rec.get("artifacts") or {}).items():
            if isinstance(a, dict) and "max_abs" in a:
                rows.append({"model": rec.get("name", Path(p).parent.name), "format": fmt,
                             "max_abs": a["max_abs"], "argmax_agreement_pct": a.get("argmax_agreement_pct")})
            elif isinstance(a, dict) and a.get("status"):
                rows.append({"model": rec.get("name", Path(p).parent.name), "format": fmt, "max_abs": np.nan,
                             "argmax_agreement_pct": np.nan, "status": a.get("status")})
    return pd.DataFrame(rows)


def log_warnings(log_dir, limit: int = 50) -> list[tuple[str, str]]:
    """(log file, line) for every ERROR line in the workflow's job logs (failed samples and why)."""
    out = []
    for p in sorted(Path(log_dir).rglob("*.log")) if log_dir and Path(log_dir).exists() else []:
        for line in p.read_text(errors="replace").splitlines():
            if re.search(r"\bERROR\b", line):
                out.append((str(p), line.strip()[:300]))
                break
        if len(out) >= limit:
            break
    return out


# ------------------------------------------------------------------------------------ images


def _overlay(labels: np.ndarray, alpha: float) -> np.ndarray:
    """RGBA of a 2-D label slice in LABEL_COLOURS (femoral subregions 11-15 as femoral cartilage)."""
    rgba = np.zeros((*labels.shape, 4))
    for v, col in LABEL_COLOURS.items():
        rgba[(labels == v) | ((v == 2) & (labels >= 11) & (labels <= 15))] = (*col, alpha)
    return rgba


def _volume_lps(path):
    import SimpleITK as sitk

    img = sitk.ReadImage(str(path))
    return sitk.DICOMOrient(img, "LPS")


def label_overlay_png(image_path, labels_path) -> str:
    """Three orthogonal planes through the femur-tibia joint centre with the labels overlaid (base64 PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import SimpleITK as sitk

    lab_img = _volume_lps(labels_path)
    img = sitk.Resample(_volume_lps(image_path), lab_img, sitk.Transform(), sitk.sitkLinear, 0.0)
    a = sitk.GetArrayFromImage(img).astype(float)  # (z, y, x) in LPS
    lab = sitk.GetArrayFromImage(lab_img)
    fg = np.argwhere(np.isin(lab, [1, 2, 3, 4, 11, 12, 13, 14, 15]))
    c = fg.mean(0).astype(int) if len(fg) else np.array(lab.shape) // 2
    sp = lab_img.GetSpacing()
    lo, hi = np.percentile(a, [1, 99.5])
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.6))
    views = (("sagittal", a[:, :, c[2]], lab[:, :, c[2]], sp[2] / sp[1]),
             ("coronal", a[:, c[1], :], lab[:, c[1], :], sp[2] / sp[0]),
             ("axial", a[c[0]], lab[c[0]], sp[1] / sp[0]))
    for ax, (name, im, lb, aspect) in zip(axes, views):
        ax.imshow(im, cmap="gray", vmin=lo, vmax=hi, origin="lower", aspect=aspect)
        ax.imshow(_overlay(lb, 0.45), origin="lower", aspect=aspect)
        ax.set_title(name)
        ax.set_axis_off()
    return _png(fig)


def qc_montage(samples: list[str], images: list, labels: list, out_png, *, per_page: int = 64,
               tile_px: int = 160) -> list[Path]:
    """One mid-sagittal slice per knee with its labels, ``per_page`` tiles per PNG (``out_png`` then
    ``out_png`` with _2, _3, ... for large cohorts). A failed segmentation (labels missing, off the
    anatomy or in pieces) stands out among its neighbours. Returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import SimpleITK as sitk

    out_png = Path(out_png)
    written = []
    pages = [list(range(i, min(i + per_page, len(samples)))) for i in range(0, len(samples), per_page)] or [[]]
    for k, idx in enumerate(pages):
        cols = max(1, min(8, len(idx)))
        rows = max(1, int(np.ceil(len(idx) / cols)))
        fig, axes = plt.subplots(rows, cols, figsize=(cols * tile_px / 80, rows * tile_px / 80), squeeze=False)
        for ax in axes.ravel():
            ax.set_axis_off()
        for ax, i in zip(axes.ravel(), idx):
            try:
                lab_img = _volume_lps(labels[i])
                img = sitk.Resample(_volume_lps(images[i]), lab_img, sitk.Transform(), sitk.sitkLinear, 0.0)
                a, lab = sitk.GetArrayFromImage(img), sitk.GetArrayFromImage(lab_img)
                fem = np.argwhere(lab == 7)
                x = int(fem[:, 2].mean()) if len(fem) else lab.shape[2] // 2
                lo, hi = np.percentile(a, [1, 99.5])
                ax.imshow(a[:, :, x], cmap="gray", vmin=lo, vmax=hi, origin="lower",
                          aspect=lab_img.GetSpacing()[2] / lab_img.GetSpacing()[1])
                ax.imshow(_overlay(lab[:, :, x], 0.5), origin="lower",
                          aspect=lab_img.GetSpacing()[2] / lab_img.GetSpacing()[1])
                ax.set_title(samples[i], fontsize=8)
            except Exception as e:  # one unreadable knee shows as such, the montage still draws
                ax.text(0.5, 0.5, f"{samples[i]}\n{type(e).__name__}", ha="center", va="center", color="#a33",
                        fontsize=7, transform=ax.transAxes)
        fig.suptitle("QC: mid-sagittal slice per knee with its labels (femur centre)", fontsize=9)
        p = out_png if k == 0 else out_png.with_name(f"{out_png.stem}_{k + 1}{out_png.suffix}")
        p.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(p, dpi=80, bbox_inches="tight")
        plt.close(fig)
        written.append(p)
    return written


# --------------------------------------------------------------------------------------- 3-D


def _decimated(poly, max_triangles: int):
    """At most ``max_triangles`` for display: a mesh far larger is first clustered (vtkQuadricClustering,
    linear time, to about 8x the target), then quadric decimation gives the count (5x faster on the
    demo's 20-40k-triangle meshes than decimating them directly; the report spends most of its time here)."""
    import vtk

    n = poly.GetNumberOfPolys()
    if n <= max_triangles:
        return poly
    if n > 4 * max_triangles:
        mp = vtk.vtkMassProperties()
        mp.SetInputData(poly)
        mp.Update()
        side = (2.0 * mp.GetSurfaceArea() / (8 * max_triangles)) ** 0.5  # a bin's edge for ~8x the target
        b = poly.GetBounds()
        c = vtk.vtkQuadricClustering()
        c.SetInputData(poly)
        c.SetNumberOfDivisions(*[max(2, int((b[2 * i + 1] - b[2 * i]) / side) + 1) for i in range(3)])
        c.Update()
        if max_triangles < c.GetOutput().GetNumberOfPolys() < n:
            poly = c.GetOutput()
            n = poly.GetNumberOfPolys()
    d = vtk.vtkQuadricDecimation()
    d.SetInputData(poly)
    d.SetTargetReduction(1.0 - max_triangles / n)
    d.VolumePreservationOn()
    d.Update()
    return d.GetOutput()


def _arrays(poly):
    from vtk.util import numpy_support as ns

    from kneeflow import mesh as M

    pts = M.points(poly)
    tri = ns.vtk_to_numpy(poly.GetPolys().GetConnectivityArray()).reshape(-1, 3)
    return pts, tri


def knee_figure(mesh_dir, *, nsm_recon=None, max_triangles: int = 3000):
    """A plotly figure of a knee's meshes: bones grey, cartilage coloured by the thickness (mm) of the
    nearest bone vertex, the NSM reconstruction (hidden until toggled in the legend)."""
    import plotly.graph_objects as go
    from scipy.spatial import cKDTree
    from vtk.util import numpy_support as ns

    from kneeflow import mesh as M

    mesh_dir = Path(mesh_dir)
    traces = []
    bone_pts, bone_t = [], []
    for bone in BONE_MESHES:
        p = mesh_dir / f"{bone}.vtk"
        if not p.exists():
            continue
        poly = M.read_vtk(p)
        arr = poly.GetPointData().GetArray("thickness_mm")
        if arr is not None:
            bone_pts.append(M.points(poly))
            bone_t.append(ns.vtk_to_numpy(arr))
        pts, tri = _arrays(_decimated(poly, max_triangles))
        traces.append(go.Mesh3d(x=pts[:, 0].round(1), y=pts[:, 1].round(1), z=pts[:, 2].round(1), i=tri[:, 0],
                                j=tri[:, 1], k=tri[:, 2], color="#d9d4c7", opacity=1.0, name=bone, showlegend=True,
                                legendgroup="bones", flatshading=False, hoverinfo="name"))
    thick = np.concatenate(bone_t) if bone_t else np.zeros(0)
    covered = thick > 0
    # the thickness of the nearest bone vertex that has cartilage
    tree = cKDTree(np.concatenate(bone_pts)[covered]) if covered.any() else None
    cmax = float(np.percentile(thick[covered], 99)) if covered.any() else 4.0
    first = True
    for cart in CARTILAGE_MESHES:
        p = mesh_dir / f"{cart}.vtk"
        if not p.exists():
            continue
        pts, tri = _arrays(_decimated(M.read_vtk(p), max_triangles))
        val = thick[covered][tree.query(pts)[1]] if tree is not None else np.zeros(len(pts))
        traces.append(go.Mesh3d(
            x=pts[:, 0].round(1), y=pts[:, 1].round(1), z=pts[:, 2].round(1), i=tri[:, 0], j=tri[:, 1], k=tri[:, 2],
            intensity=val.round(2), colorscale="Viridis", cmin=0.0, cmax=round(cmax, 2), name=cart, legendgroup="cartilage",
            showlegend=True, showscale=first, colorbar={"title": {"text": "thickness (mm)"}},
            hovertemplate=cart + "<br>%{intensity:.2f} mm<extra></extra>"))
        first = False
    if nsm_recon and Path(nsm_recon).exists():
        pts, tri = _arrays(_decimated(M.read_vtk(nsm_recon), max_triangles))
        traces.append(go.Mesh3d(x=pts[:, 0].round(1), y=pts[:, 1].round(1), z=pts[:, 2].round(1), i=tri[:, 0],
                                j=tri[:, 1], k=tri[:, 2], color="#7a9cc6", opacity=0.5, name="NSM reconstruction",
                                showlegend=True, visible="legendonly"))
    fig = go.Figure(traces)
    fig.update_layout(scene={"aspectmode": "data", "xaxis_title": "x (mm, LPS)", "yaxis_title": "y (mm)",
                             "zaxis_title": "z (mm)"}, margin={"l": 0, "r": 0, "t": 30, "b": 0}, height=650,
                      legend={"title": {"text": "click to show/hide"}, "x": 0.0, "xanchor": "left", "y": 1.0},
                      paper_bgcolor="white")
    return fig


# ------------------------------------------------------------------------------------- pages


def knee_page(sample: str, *, mesh_dir, image=None, labels=None, nsm_recon=None, rows: dict[str, pd.DataFrame],
              plotly_src: str = "../plotly.min.js", max_triangles: int = 3000) -> str:
    parts = [f'<p><a href="../index.html">&larr; study</a></p><h1>Knee {html.escape(sample)}</h1>']
    if Path(mesh_dir).exists():
        fig = knee_figure(mesh_dir, nsm_recon=nsm_recon, max_triangles=max_triangles)
        parts.append("<h2>Bones and cartilage in 3-D</h2><p class='def'>Drag to rotate, scroll to zoom; the "
                     "legend shows and hides bones, cartilage plates and the NSM reconstruction. Cartilage colour: "
                     "thickness (mm) of the nearest bone vertex.</p>")
        parts.append(fig.to_html(full_html=False, include_plotlyjs=False, div_id="knee3d",
                                 config={"displaylogo": False}))
    else:
        parts.append("<p class='warn'>no meshes for this knee</p>")
    if image and labels and Path(image).exists() and Path(labels).exists():
        parts.append("<h2>Scan and labels</h2>" + _img(label_overlay_png(image, labels), f"{sample} labels"))
    for name, df in rows.items():
        if df is not None and not df.empty:
            parts.append(f"<h2>{html.escape(name)}</h2>" + _table(df))
    return _page(f"kneeflow: {sample}", "".join(parts), plotly_src)


def stages_table(stages: dict[str, bool], settings: dict[str, dict], results="results",
                 samples: list[str] = ()) -> pd.DataFrame:
    """One row per stage: on/off, what it does, its settings (the config's values) and its files found
    under ``results`` (per-knee files: in how many of ``samples``' folders; a stage that is on with
    fewer flags knees that did not finish)."""
    rows = []
    for name, (what, pattern) in STAGES.items():
        on = stages.get(name, True) if name != "ingest" else True
        if pattern.startswith("*/"):
            n = sum(any(Path(results, s).glob(pattern[2:])) for s in samples)
            found = f"{n} of {len(samples)} knees: {pattern}"
        else:
            found = f"{len(list(Path(results).glob(pattern)))} x {pattern}"
        cfg = "; ".join(f"{k} {v}" for k, v in (settings.get(name) or {}).items())
        rows.append({"stage": name, "ran": "on" if on else "off", "what it does": what,
                     "settings": cfg, "files": found})
    return pd.DataFrame(rows)


def landing_page(*, run_info: dict, meta: pd.DataFrame, numbers: dict[str, pd.DataFrame],
                 warnings: list[tuple[str, str]], figures: list[tuple[str, str, str]], montage: list[Path],
                 knee_links: dict[str, str], stages: pd.DataFrame | None = None) -> str:
    p = ['<h1>kneeflow study report</h1>']
    p.append("<h2>What was run</h2><table>" + "".join(
        f"<tr><th>{html.escape(k)}</th><td style='text-align:left'>{html.escape(str(v))}</td></tr>"
        for k, v in run_info.items()) + "</table>")
    if stages is not None:
        p.append("<h2>Stages</h2><p class='def'>What each stage does, whether it ran, its settings and "
                 "the files it left (under results/).</p>" + _table(stages))
    m = meta.copy()
    for c in ("group", "side", "split"):
        if c in m:
            m[c] = m[c].fillna("-")
    cohort = m.groupby([c for c in ("group", "side", "split") if c in m]).size().reset_index(name="knees")
    p.append(f"<h2>Cohort</h2><p>{len(meta)} knees.</p>" + _table(cohort))
    p.append("<h2>Headline numbers</h2>")
    for key, df in numbers.items():
        p.append(f"<h3>{key}</h3><p class='def'>{html.escape(DEFINITIONS.get(key, ''))}</p>" + _table(df))
    p.append("<h2>Warnings</h2>")
    if warnings:
        p.append("<ul>" + "".join(f"<li class='warn'><code>{html.escape(f)}</code>: {html.escape(line)}</li>"
                                  for f, line in warnings) + "</ul>")
    else:
        p.append("<p>No job logged an error.</p>")
    p.append("<h2>QC montage</h2><p class='def'>One mid-sagittal slice per knee (through the femur's "
             "centre) with its labels: a missing or misplaced segmentation stands out.</p>")
    for path in montage:
        p.append(_img(base64.b64encode(Path(path).read_bytes()).decode(), "QC montage"))
    p.append("<h2>Figures</h2>")
    for title, png, caption in figures:
        p.append(f"<figure>{_img(base64.b64encode(Path(png).read_bytes()).decode(), title)}"
                 f"<figcaption><b>{html.escape(title)}</b>. {html.escape(caption)}</figcaption></figure>")
    p.append("<h2>Knees</h2>")
    t = meta.copy()
    t.insert(0, "page", [knee_links.get(s, "") for s in t["sample"]])
    rows = "".join(
        "<tr>" + "".join(
            f"<td><a href='{html.escape(v)}'>open</a></td>" if c == "page" and v else f"<td>{html.escape(str(v))}</td>"
            for c, v in r.items()) + "</tr>" for _, r in t.fillna("").iterrows())
    p.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in t.columns) + f"</tr>{rows}</table>")
    return _page("kneeflow study report", "".join(p))


def write_plotlyjs(out_dir) -> Path:
    """plotly.js from the installed plotly package, once, beside the pages (offline viewing)."""
    from plotly.offline import get_plotlyjs

    p = Path(out_dir) / "plotly.min.js"
    p.write_text(get_plotlyjs(), encoding="utf-8")
    return p


def build_report(out_dir, *, samples: list[str], meta: pd.DataFrame, results="results",
                 tables: dict[str, str | None], parity: list = (), run_info: dict, figures=(),
                 log_dir=None, label_name=None, max_triangles: int = 3000, stages: dict | None = None,
                 settings: dict | None = None) -> dict:
    """Write index.html, knees/<sample>.html, plotly.min.js and qc_montage*.png into ``out_dir``.

    ``label_name(sample)`` gives the label map shown for a knee (default: subregions, provided or the
    first model's). Returns {"index": path, "knees": {...}, "bytes": total size}.
    """
    out = Path(out_dir)
    (out / "knees").mkdir(parents=True, exist_ok=True)
    write_plotlyjs(out)
    res = Path(results)
    loaded = {k: _read(v) for k, v in tables.items()}
    loaded["parity"] = parity_table(parity) if parity else None

    def labels_of(s):
        if label_name:
            return label_name(s)
        lab = res / s / "labels"
        for name in ("subregions.nii.gz", "provided.nii.gz"):
            if (lab / name).exists():
                return lab / name
        found = sorted(lab.glob("*.nii.gz")) if lab.exists() else []
        return found[0] if found else None

    links = {}
    for s in samples:
        rows = {}
        for key in ("dice", "thickness", "morphometrics", "t2", "bscore"):
            df = loaded.get(key)
            if df is not None and "sample" in df:
                r = df[df["sample"] == s]
                if key == "morphometrics":
                    r = (r[r.subregion == "all"].pivot_table(index="plate", columns="measure", values="value")
                         .rename_axis(columns=None).reset_index())
                elif key == "thickness":
                    r = r[r.stat.isin(["mean", "median", "n_vertices"])].pivot_table(
                        index=["bone", "region"], columns="stat", values="value_mm").rename_axis(columns=None).reset_index()
                elif key == "t2" and "layer" in r:
                    r = (r[r.stat == "median"].pivot_table(index="region", columns="layer", values="value")
                         .rename_axis(columns=None).reset_index())
                rows[key] = r
        page = knee_page(s, mesh_dir=res / s / "meshes", image=res / s / "image.nii.gz", labels=labels_of(s),
                         nsm_recon=res / s / "shape" / "nsm_recon.vtk", rows=rows, max_triangles=max_triangles)
        (out / "knees" / f"{s}.html").write_text(page, encoding="utf-8")
        links[s] = f"knees/{s}.html"
    with_labels = [s for s in samples if labels_of(s) and (res / s / "image.nii.gz").exists()]
    montage = qc_montage(with_labels, [res / s / "image.nii.gz" for s in with_labels],
                         [labels_of(s) for s in with_labels], out / "qc_montage.png")
    numbers = headline_numbers(loaded, meta)
    index = landing_page(run_info=run_info, meta=meta, numbers=numbers, warnings=log_warnings(log_dir),
                         figures=list(figures), montage=montage, knee_links=links,
                         stages=stages_table(stages or {}, settings or {}, res, samples))
    (out / "index.html").write_text(index, encoding="utf-8")
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    log.info("report: %s (%.1f MB)", out / "index.html", size / 1e6)
    return {"index": out / "index.html", "knees": links, "bytes": size, "numbers": numbers}
