"""Fit the shape model's latent to a batch of knees (one model load, one batched optimisation).

Public models (gattia/nsm layout) are fitted with the public knee pipeline's recipe
(:mod:`kneeflow.nsm_recipe`), our own with :func:`kneeflow.shape.fit`, unless ``fit.recipe`` says
otherwise. Writes per knee ``nsm.json`` and one reconstruction per surface in the input's coordinates.
"""

from pathlib import Path

from kneeflow import runtime, shape
from kneeflow.io import write_json
from kneeflow.mesh import write_vtk
from kneeflow.provenance import sha256
from kneeflow.rule import run


def main(sm):
    import torch

    fit = dict(sm.params.fit)
    torch.set_num_threads(int(fit.pop("threads", 1)))
    resolution = int(fit.pop("resolution", 128))
    recipe = fit.pop("recipe", "auto")
    public_opts = {k: fit.pop(k) for k in ("clip_ratio", "icp_iterations", "landmarks") if k in fit}
    settings = fit.pop("public", {})
    pre = dict(sm.params.model)
    device = runtime.resolve_device(sm.params.device)
    ck = Path(sm.input.checkpoint)
    folder = ck.parent.parent if ck.parent.name == "model" and ck.stem.isdigit() else ck.parent
    model = shape.load_model(folder, checkpoint=str(ck.relative_to(folder)), reference_mesh=pre.get("reference_mesh"),
                             sha256=pre.get("sha256"), device=device, surfaces=pre.get("surfaces"))
    surfaces = model.surfaces
    knees = {s: {k: shape.load_surface(Path(d) / f"{k}.vtk", closed=not model.public) for k in surfaces}
             for s, d in zip(sm.params.samples, sm.input.meshes)}
    sides = dict(zip(sm.params.samples, sm.params.sides))
    use_public = model.public if recipe == "auto" else recipe == "public"
    if use_public:
        from kneeflow import nsm_recipe

        results, prepared = nsm_recipe.fit_public(model, knees, sides, settings=settings, seed=int(fit.get("seed", 0)),
                                                  device=device, **public_opts)
    else:
        results = shape.fit(model, knees, sides, device=device, **fit)
    recon_outputs = [sm.output.recon] + [getattr(sm.output, f"recon_{k}") for k in surfaces[1:]]
    for i, s in enumerate(sm.params.samples):
        r = results[s]
        recon = {k: shape.reconstruct(model, r.latent, r.alignment, resolution=resolution, surface=j, device=device)
                 for j, k in enumerate(surfaces)}
        for k, outs in zip(surfaces, recon_outputs):
            write_vtk(shape.make_poly(*recon[k]), outs[i])
        rec = {"sample": s, "model": str(folder), "recipe": "public" if use_public else "kneeflow", "surfaces": surfaces,
               "surface": surfaces[0], "latent": r.latent, "alignment": r.alignment, "scale": r.alignment["scale"],
               "centre": r.alignment["centre"], "iterations": r.iterations, "loss": r.loss, "seconds": r.seconds}
        if use_public:
            assd = nsm_recipe.assd_per_surface(model, r, prepared[s], recon)
            rec.update({"icp_transform": r.icp_transform, "icp_rms": r.icp_rms, "clip_z_mm": r.z_cut,
                        "assd": assd, "assd_mm": assd[surfaces[0]]})
        else:
            ip, it = shape.mesh_arrays(knees[s][surfaces[0]])
            assd = {}
            for j, k in enumerate(surfaces):
                kp, kt = shape.mesh_arrays(knees[s][k])
                assd[k] = shape.surface_distance(kp, kt, *recon[k])["assd"]
            dist = shape.surface_distance(ip, it, *recon[surfaces[0]])
            rec.update({"assd": assd, "assd_mm": dist["assd"], "hd95_mm": dist["hd95"]})
        write_json(rec, sm.output.fits[i])
    return {str(ck): sha256(ck)}


run(snakemake, main)  # noqa: F821
