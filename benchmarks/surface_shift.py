"""Where a model's cartilage thickness error comes from: the bone interface or the articular surface.

    .venv/bin/python benchmarks/surface_shift.py                    # after `make demo`
    .venv/bin/python benchmarks/surface_shift.py --model mednext_demo --samples knee03 knee08

For every knee the workflow segmented with ``--model`` (results/<sample>/labels/<model>.nii.gz)
and that has a given label map (labels/provided.nii.gz), each cartilage plate of both maps is cast
along the same rays (the given bone mesh's normals, the thickness recipe's smoothing and ray
lengths; :func:`kneeflow.thickness.surface_shifts`). Per plate: the mean thickness difference on
the rays both cross twice, how much of it is the bone-side surface (``deep``) and how much the outer
one (``articular``), and the articular shift split by what covers the cartilage in the given map
half a millimetre beyond it (fluid or other background, meniscus, another plate); the shift under
fluid is split again by the width of the fluid layer in the given map (from the articular surface
to the next labelled structure along the normal, e.g. the opposite plate: ``--narrow-mm``). The
thickness table compares plate means with the phantom's truth; this says which boundary to blame.
Prints a table and writes surface_shift.json.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PLATES = {"femur": ["femoral_cartilage"], "tibia": ["medial_tibial_cartilage", "lateral_tibial_cartilage"],
          "patella": ["patellar_cartilage"]}


def covering(labels_arr, labels_img, pts, normals, beyond_mm=0.5):
    """'fluid' (background), 'meniscus', 'cartilage' or 'other' just beyond each articular point."""
    from kneeflow.labels import CANONICAL
    from kneeflow.mesh import physical_to_index

    ijk = np.rint(physical_to_index(labels_img, pts + beyond_mm * normals)).astype(int)
    ijk = np.clip(ijk, 0, np.asarray(labels_arr.shape[::-1]) - 1)
    lab = labels_arr[ijk[:, 2], ijk[:, 1], ijk[:, 0]]
    out = np.full(len(pts), "other", dtype=object)
    out[lab == 0] = "fluid"
    out[np.isin(lab, [CANONICAL["medial_meniscus"], CANONICAL["lateral_meniscus"]])] = "meniscus"
    out[np.isin(lab, [CANONICAL[p] for ps in PLATES.values() for p in ps])] = "cartilage"
    return out


def fluid_gap(labels_arr, labels_img, pts, normals, start_mm=0.5, max_mm=8.0, step_mm=0.1):
    """Width of the background layer beyond each articular point: the distance along the normal to
    the first labelled voxel of the given map (NaN when none within ``max_mm``)."""
    from kneeflow.mesh import physical_to_index

    hi = np.asarray(labels_arr.shape[::-1]) - 1
    gap = np.full(len(pts), np.nan)
    for d in np.arange(start_mm, max_mm + 1e-9, step_mm):
        todo = np.isnan(gap)
        if not todo.any():
            break
        ijk = np.clip(np.rint(physical_to_index(labels_img, pts[todo] + d * normals[todo])).astype(int), 0, hi)
        hit = labels_arr[ijk[:, 2], ijk[:, 1], ijk[:, 0]] != 0
        gap[np.flatnonzero(todo)[hit]] = d
    return gap


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default=str(ROOT / "results"))
    ap.add_argument("--model", default="mednext_demo")
    ap.add_argument("--samples", nargs="*", help="default: every sample with both label maps")
    ap.add_argument("--ray-in", type=float, default=2.5)
    ap.add_argument("--ray-out", type=float, default=10.0)
    ap.add_argument("--narrow-mm", type=float, default=2.5,
                    help="a fluid layer thinner than this (mm) counts as a narrow gap")
    ap.add_argument("--out", default=str(ROOT / "results" / "benchmarks" / "surface_shift"))
    a = ap.parse_args()
    import SimpleITK as sitk

    from kneeflow import mesh as M
    from kneeflow.labels import CANONICAL
    from kneeflow.thickness import surface_shifts

    res = Path(a.results)
    samples = a.samples or sorted(p.parents[1].name for p in res.glob(f"*/labels/{a.model}.nii.gz")
                                  if (p.parent / "provided.nii.gz").exists())
    if not samples:
        print(f"{res}: no sample has both labels/{a.model}.nii.gz and labels/provided.nii.gz "
              "(run `make demo` first, or pass --results/--model)", file=sys.stderr)
        return 2
    rows = []
    for s in samples:
        given = sitk.ReadImage(str(res / s / "labels" / "provided.nii.gz"))
        model = sitk.ReadImage(str(res / s / "labels" / f"{a.model}.nii.gz"))
        given_arr = sitk.GetArrayFromImage(given)
        for bone, plates in PLATES.items():
            poly = M.bone_mesh(given, [CANONICAL[bone]], 20_000 if bone != "patella" else 10_000, bone=bone,
                               source=str(res / s))
            pts, nrm = M.points(poly), M.point_normals(poly)
            for plate in plates:
                fields = [M.cartilage_field(img, [CANONICAL[plate]], name=plate, source=str(res / s))
                          for img in (given, model)]
                sh = surface_shifts(pts, nrm, *fields, ray_in=a.ray_in, ray_out=a.ray_out)
                both = sh["both"]
                cover = covering(given_arr, given, sh["articular_ref"][both], nrm[both])
                row = {"sample": s, "plate": plate, "rays": int(both.sum()),
                       "thickness_given_mm": float(np.mean(sh["t_ref"][both])),
                       "thickness_model_mm": float(np.mean(sh["t_test"][both])),
                       "difference_mm": float(np.mean(sh["t_test"][both] - sh["t_ref"][both])),
                       "deep_shift_mm": float(np.mean(sh["deep"][both])),
                       "articular_shift_mm": float(np.mean(sh["articular"][both]))}
                for c in ("fluid", "meniscus", "cartilage"):
                    sel = cover == c
                    row[f"rays_under_{c}"] = int(sel.sum())
                    row[f"articular_shift_under_{c}_mm"] = float(np.mean(sh["articular"][both][sel])) if sel.any() else None
                under = cover == "fluid"
                gap = fluid_gap(given_arr, given, sh["articular_ref"][both][under], nrm[both][under])
                art = sh["articular"][both][under]
                for name, sel in (("narrow", gap < a.narrow_mm), ("wide", ~(gap < a.narrow_mm))):
                    row[f"rays_under_{name}_fluid"] = int(sel.sum())
                    row[f"articular_shift_under_{name}_fluid_mm"] = float(np.mean(art[sel])) if sel.any() else None
                rows.append(row)
                print(json.dumps(row), flush=True)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "surface_shift.json").write_text(json.dumps({"results": str(res), "model": a.model, "narrow_mm": a.narrow_mm,
                                                        "rows": rows}, indent=1))

    def f(v):
        return f"{v:+7.3f}" if v is not None else "      -"

    print(f"\n{'sample':8s} {'plate':26s} {'rays':>5s} {'model-given':>11s} {'deep':>7s} {'artic.':>7s}"
          f" {'under fluid':>12s} {'narrow':>7s} {'(rays)':>6s} {'wide':>7s} {'meniscus':>9s} {'cartilage':>10s}"
          f"   (mm; + = away from the bone; narrow: fluid under {a.narrow_mm} mm)")
    for r in rows:
        print(f"{r['sample']:8s} {r['plate']:26s} {r['rays']:5d} {f(r['difference_mm']):>11s} {f(r['deep_shift_mm'])}"
              f" {f(r['articular_shift_mm'])} {f(r['articular_shift_under_fluid_mm']):>12s}"
              f" {f(r['articular_shift_under_narrow_fluid_mm'])} {r['rays_under_narrow_fluid']:6d}"
              f" {f(r['articular_shift_under_wide_fluid_mm'])}"
              f" {f(r['articular_shift_under_meniscus_mm']):>9s} {f(r['articular_shift_under_cartilage_mm']):>10s}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
