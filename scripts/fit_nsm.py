"""Fit the shape model's latent to a batch of knees (one model load, one batched optimisation) with
:func:`kneeflow.nsm_fit.fit_knees`; writes per knee ``nsm.json`` and one reconstruction per surface in
the input's coordinates. The same script fits the knees' meshes from a segmentation model's labels
(rule fit_nsm_auto: results/<sample>/auto/<model>/shape/).
"""

from pathlib import Path

from kneeflow import shape
from kneeflow.checksum import sha256
from kneeflow.device import resolve_device
from kneeflow.io import write_json
from kneeflow.mesh import write_vtk
from kneeflow.nsm_fit import fit_knees
from kneeflow.surface import load_surface, make_poly
from kneeflow.workflow.rule import run


def _paths(x) -> list[str]:
    """A named input/output as a list (Snakemake hands a one-file list over as the bare path)."""
    return [x] if isinstance(x, str) else list(x)


def main(sm):
    import torch

    fit = dict(sm.params.fit)
    torch.set_num_threads(int(fit.pop("threads", 1)))
    resolution = int(fit.pop("resolution", 128))
    recipe = fit.pop("recipe", "auto")
    settings = fit.pop("public", {})
    pre = dict(sm.params.model)
    device = resolve_device(sm.params.device)
    ck = Path(sm.input.checkpoint)
    folder = ck.parent.parent if ck.parent.name == "model" and ck.stem.isdigit() else ck.parent
    model = shape.load_model(folder, checkpoint=str(ck.relative_to(folder)), reference_mesh=pre.get("reference_mesh"),
                             sha256=pre.get("sha256"), device=device, surfaces=pre.get("surfaces"))
    knees = {s: {k: load_surface(Path(d) / f"{k}.vtk", closed=not model.public) for k in model.surfaces}
             for s, d in zip(sm.params.samples, _paths(sm.input.meshes))}
    fits = fit_knees(model, knees, dict(zip(sm.params.samples, sm.params.sides)), recipe=recipe, fit=fit,
                     settings=settings, resolution=resolution, device=device)
    recon_outputs = [_paths(sm.output.recon)] + [_paths(getattr(sm.output, f"recon_{k}")) for k in model.surfaces[1:]]
    for i, (s, fit_out) in enumerate(zip(sm.params.samples, _paths(sm.output.fits))):
        rec, recon = fits[s]
        for k, outs in zip(model.surfaces, recon_outputs):
            write_vtk(make_poly(*recon[k]), outs[i])
        write_json(rec, fit_out)
    return {str(ck): sha256(ck)}


run(snakemake, main)  # noqa: F821
