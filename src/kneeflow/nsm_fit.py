"""Fit a shape model to knees with the recipe that suits it, reconstruct every surface, and the
per-knee record (``nsm.json``): one function for the workflow's batched rule and ``kneeflow nsm fit``.

Public models (gattia/nsm layout) are fitted with the public knee pipeline's recipe
(:mod:`kneeflow.nsm_recipe`), ours with :func:`kneeflow.shape.fit`, unless ``recipe`` says otherwise.
"""

from __future__ import annotations

__all__ = ["fit_knees"]

import numpy as np

from kneeflow import nsm_recipe, shape
from kneeflow.surface import mesh_arrays, surface_distance

#: options of ``shape.fit.public`` that go to :func:`kneeflow.nsm_recipe.fit_public` by name
PUBLIC_OPTIONS = ("clip_ratio", "icp_iterations", "landmarks")


def fit_knees(model: shape.ShapeModel, knees: dict[str, dict[str, object]], sides: dict[str, str], *,
              recipe: str = "auto", fit: dict | None = None, settings: dict | None = None, resolution: int = 128,
              device: str = "cpu") -> dict[str, tuple[dict, dict[str, tuple[np.ndarray, np.ndarray]]]]:
    """Fit ``knees`` ({sample: {surface: mesh}}) -> {sample: (record, {surface: (points, triangles)})}.

    ``fit`` holds the fit options (``seed``, ``iterations``, ... and, for the public recipe,
    ``clip_ratio``, ``icp_iterations``, ``landmarks``); ``settings`` overrides the public config's
    reconstruction keys. Reconstructions are in the input's coordinates (mm).
    """
    fit = dict(fit or {})
    surfaces = model.surfaces
    use_public = model.public if recipe == "auto" else recipe == "public"
    if use_public:
        opts = {k: fit[k] for k in PUBLIC_OPTIONS if k in fit}
        results, prepared = nsm_recipe.fit_public(model, knees, sides, settings=settings or {},
                                                  seed=int(fit.get("seed", 0)), device=device, **opts)
    else:
        results = shape.fit(model, knees, sides, device=device, **{k: v for k, v in fit.items() if k not in PUBLIC_OPTIONS})
    out = {}
    for s in knees:
        r = results[s]
        recon = {k: shape.reconstruct(model, r.latent, r.alignment, resolution=resolution, surface=j, device=device)
                 for j, k in enumerate(surfaces)}
        rec = {"sample": s, "model": str(model.folder), "recipe": "public" if use_public else "kneeflow",
               "surfaces": surfaces, "surface": surfaces[0], "latent": r.latent, "alignment": r.alignment,
               "scale": r.alignment["scale"], "centre": r.alignment["centre"], "iterations": r.iterations,
               "loss": r.loss, "seconds": r.seconds}
        if use_public:
            assd = nsm_recipe.assd_per_surface(model, r, prepared[s], recon)
            rec.update({"icp_transform": r.icp_transform, "icp_rms": r.icp_rms, "clip_z_mm": r.z_cut,
                        "assd": assd, "assd_mm": assd[surfaces[0]]})
        else:
            assd = {k: surface_distance(*mesh_arrays(knees[s][k]), *recon[k])["assd"] for k in surfaces}
            dist = surface_distance(*mesh_arrays(knees[s][surfaces[0]]), *recon[surfaces[0]])
            rec.update({"assd": assd, "assd_mm": dist["assd"], "hd95_mm": dist["hd95"]})
        out[s] = (rec, recon)
    return out
