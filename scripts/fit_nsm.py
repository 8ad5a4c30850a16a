"""Fit the shape model's latent to a batch of femurs (one model load, one batched optimisation)."""

from pathlib import Path

from kneeflow import runtime, shape
from kneeflow.io import write_json
from kneeflow.provenance import sha256
from kneeflow.mesh import write_vtk
from kneeflow.rule import run


def main(sm):
    import torch

    fit = dict(sm.params.fit)
    torch.set_num_threads(int(fit.pop("threads", 1)))
    resolution = int(fit.pop("resolution", 128))
    pre = dict(sm.params.model)
    device = runtime.resolve_device(sm.params.device)
    model = shape.load_model(Path(sm.input.checkpoint).parent, checkpoint=Path(sm.input.checkpoint).name,
                             reference_mesh=pre.get("reference_mesh"), sha256=pre.get("sha256"), device=device)
    surfaces = model.cfg.get("surfaces", ["femur"])
    knees = {s: {k: shape.load_surface(Path(d) / f"{k}.vtk") for k in surfaces}
             for s, d in zip(sm.params.samples, sm.input.meshes)}
    sides = dict(zip(sm.params.samples, sm.params.sides))
    results = shape.fit(model, knees, sides, device=device, **fit)
    for s, out_json, out_vtk in zip(sm.params.samples, sm.output.fits, sm.output.recon):
        r = results[s]
        pts, tris = shape.reconstruct(model, r.latent, r.alignment, resolution=resolution, device=device)
        ip, it = shape.mesh_arrays(knees[s][surfaces[0]])
        dist = shape.surface_distance(ip, it, pts, tris)
        write_vtk(shape.make_poly(pts, tris), out_vtk)
        rec = {"sample": s, "model": str(Path(sm.input.checkpoint).parent), "surface": surfaces[0],
               "latent": r.latent, "alignment": r.alignment, "scale": r.alignment["scale"],
               "centre": r.alignment["centre"], "iterations": r.iterations, "loss": r.loss,
               "seconds": r.seconds, "assd_mm": dist["assd"], "hd95_mm": dist["hd95"]}
        write_json(rec, out_json)
    return {str(sm.input.checkpoint): sha256(sm.input.checkpoint)}


run(snakemake, main)  # noqa: F821
