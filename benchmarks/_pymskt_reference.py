"""The reference pipeline's exact pymskt call sequence on one label map (used by mesh_thickness.py).

Run as a subprocess so its time and peak memory are measured on their own:
    python benchmarks/_pymskt_reference.py LABELMAP OUT.json [--convention pymskt|canonical]
"""

import json
import resource
import sys
import time

import numpy as np


def run(path: str, labels: dict) -> dict:
    import SimpleITK as sitk
    from pymskt.mesh import BoneMesh

    seg = sitk.ReadImage(path)
    out = {"regions": {}, "seconds": {}}
    spec = {
        "femur": (labels["femur"], [labels["femoral_cartilage"]], 20_000),
        "tibia": (labels["tibia"], [labels["medial_tibial_cartilage"], labels["lateral_tibial_cartilage"]], 20_000),
        "patella": (labels["patella"], [labels["patellar_cartilage"]], 10_000),
    }
    t_all = time.perf_counter()
    for bone, (bone_label, cart_labels, n_pts) in spec.items():
        t0 = time.perf_counter()
        kwargs = {"crop_percent": 1.0} if bone in ("femur", "tibia") else {}
        mesh = BoneMesh(seg_image=seg, label_idx=bone_label, list_cartilage_labels=cart_labels, bone=bone, **kwargs)
        mesh.create_mesh(smooth_image_var=0.5)
        mesh.resample_surface(clusters=n_pts)
        mesh.fix_mesh()
        mesh.calc_cartilage_thickness(image_smooth_var_cart=0.3125)
        mesh.assign_cartilage_regions()
        thick = np.asarray(mesh.get_scalar("thickness (mm)"))
        reg = np.asarray(mesh.get_scalar("labels"))
        for lab in cart_labels:
            sel = (reg == lab) & (thick > 0)
            out["regions"][f"{bone}:{lab}"] = {"mean": float(thick[sel].mean()) if sel.any() else float("nan"),
                                               "n": int(sel.sum())}
        out["seconds"][bone] = time.perf_counter() - t0
    out["seconds"]["total"] = time.perf_counter() - t_all
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


if __name__ == "__main__":
    sys.path.insert(0, "src")
    from kneeflow.labels import get_convention

    conv = sys.argv[3] if len(sys.argv) > 3 else "pymskt"
    res = run(sys.argv[1], get_convention(conv))
    with open(sys.argv[2], "w") as fh:
        json.dump(res, fh, indent=1)
    print(json.dumps(res, indent=1))
