"""The public knee pipeline's recipe for fitting a public NSM to a knee (OpenMSK / KneePipeline on gattia/nsm).

Preparation: left knees are mirrored to right (x -> -x, LPS); the femur mesh is clipped at
``bottom + clip_ratio x its medio-lateral width`` along the superior axis (z), which leaves it open as
the public model was trained; the bone is similarity-aligned by ICP (``icp_iterations``, ``landmarks``
landmarks, starting by matching centroids) onto the model's mean shape (the zero latent decoded on a
128^3 grid over [-1, 1]); when the model's ``scale_jointly`` is false, the knee is then centred on the
bone and scaled so bone + cartilage have a maximum radius of 1.

Fitting: the latent starts at N(0, 0.01); Adam with lr = lr_recon x (1 / lr_update_factor_recon) **
(step // (num_iterations_recon // n_lr_updates_recon)); each step takes ``n_samples_latent_recon``
points from the surfaces' vertices, split equally per surface; the target of a vertex is 0 for its own
surface and its signed distance to every other surface; L1 between prediction and target, both
clamped to +/- ``clamp_dist_recon``; no latent regularisation; a knee stops when its loss has not
improved for ``convergence_patience_recon`` steps. Many knees are fitted in one batched optimisation,
each with its own latent, sample stream and stop (a knee's result does not depend on its batch).
"""

from __future__ import annotations

__all__ = ["PublicFit", "RECIPE_DEFAULTS", "clip_femur", "fit_public", "prepare_public", "recipe_settings"]

import logging
import time
import zlib
from dataclasses import dataclass

import numpy as np

from kneeflow.alignment import Alignment, _icp_similarity
from kneeflow.bscore import ShapeError
from kneeflow.shape import ShapeModel
from kneeflow.surface import make_poly, mesh_arrays, signed_distance, surface_distance

log = logging.getLogger(__name__)

# the public config's reconstruction keys and the defaults the public code uses when they are absent
RECIPE_DEFAULTS = {
    "num_iterations_recon": 2000,
    "lr_recon": 0.005,
    "lr_update_factor_recon": 1.1,
    "n_lr_updates_recon": 100,
    "clamp_dist_recon": 0.1,
    "n_samples_latent_recon": 20000,
    "convergence_patience_recon": 50,
    "l2reg_recon": False,
    "scale_jointly": False,
}


def recipe_settings(cfg: dict, overrides: dict | None = None) -> dict:
    """The recipe's settings: the model config's values over the public defaults, then ``overrides``."""
    s = {k: cfg.get(k, v) for k, v in RECIPE_DEFAULTS.items()}
    s.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return s


def clip_femur(points: np.ndarray, tris: np.ndarray, ratio: float = 0.7) -> tuple[np.ndarray, np.ndarray, float]:
    """Keep the femur below ``min z + ratio x (x extent)``: (points, triangles, the cut's z)."""
    width = float(points[:, 0].max() - points[:, 0].min())
    z_cut = float(points[:, 2].min() + ratio * width)
    if z_cut >= points[:, 2].max():
        return points, tris, z_cut
    return (*clip_below(points, tris, z_cut), z_cut)


def clip_below(points: np.ndarray, tris: np.ndarray, z_cut: float) -> tuple[np.ndarray, np.ndarray]:
    """The part of a triangle mesh with z < ``z_cut`` (cut triangles are split at the plane)."""
    import vtk

    plane = vtk.vtkPlane()
    plane.SetOrigin(0.0, 0.0, z_cut)
    plane.SetNormal(0.0, 0.0, -1.0)  # the kept side is where the plane function is positive: z < z_cut
    clip = vtk.vtkClipPolyData()
    clip.SetInputData(make_poly(points, tris))
    clip.SetClipFunction(plane)
    clip.Update()
    clean = vtk.vtkCleanPolyData()
    clean.SetInputData(clip.GetOutput())
    clean.Update()
    return mesh_arrays(clean.GetOutput())


@dataclass
class Prepared:
    alignment: Alignment
    vertices: list[np.ndarray]  # per surface, model space
    targets: list[np.ndarray]  # per surface: (n_k, n_surfaces) signed distances of its vertices
    inputs: list[tuple[np.ndarray, np.ndarray]]  # per surface: (points, triangles) in input mm, clipped
    z_cut: float | None
    icp_rms: float


def _matrix(al: Alignment) -> np.ndarray:
    """4x4 of the similarity from the (mirrored) input mm to model space."""
    r = np.asarray(al.rotation) * al.scale
    m = np.eye(4)
    m[:3, :3] = r
    m[:3, 3] = np.asarray(al.translation) - r @ np.asarray(al.centre)
    return m


def prepare_public(model: ShapeModel, poly_by_surface: dict[str, object], mirror: bool, settings: dict, *,
                   clip_ratio: float | None = 0.7, icp_iterations: int = 100, landmarks: int = 1000,
                   where: str = "knee") -> Prepared:
    surfaces = model.surfaces
    inputs = []
    for k, name in enumerate(surfaces):
        pts, tris = mesh_arrays(poly_by_surface[name])
        if len(pts) == 0 or len(tris) == 0:
            raise ShapeError(f"{where}: empty {name} mesh")
        inputs.append((pts, tris))
    z_cut = None
    if clip_ratio:
        p, t, z_cut = clip_femur(*inputs[0], ratio=clip_ratio)
        if len(t) == 0:
            raise ShapeError(f"{where}: nothing of the femur is left below the clip plane")
        inputs[0] = (p, t)
    bone = inputs[0][0].copy()
    if mirror:
        bone[:, 0] = -bone[:, 0]
    ref = model.mean_shape()
    c = bone.mean(axis=0)
    s0 = float(np.sqrt(((ref - ref.mean(0)) ** 2).sum(1).mean()) / np.sqrt(((bone - c) ** 2).sum(1).mean()))
    m = _icp_similarity((bone - c) * s0 + ref.mean(0), ref, iterations=icp_iterations, landmarks=landmarks)
    s_icp = float(np.cbrt(np.linalg.det(m[:3, :3])))
    u, _, vt = np.linalg.svd(m[:3, :3] / s_icp)
    r = u @ vt
    al = Alignment(mirror, c.tolist(), r.tolist(), s0 * s_icp, (s_icp * (ref.mean(0) @ r.T) + m[:3, 3]).tolist(),
                   rotation_deg=float(np.degrees(np.arccos(np.clip((np.trace(r) - 1) / 2, -1, 1)))))
    if not settings.get("scale_jointly", False):
        # centre on the bone, scale bone + cartilage to a maximum radius of 1
        moved = [al.forward(p) for p, _ in inputs]
        cb = moved[0].mean(axis=0)
        rad = float(max(np.linalg.norm(p - cb, axis=1).max() for p in moved))
        al = Alignment(mirror, al.centre, al.rotation, al.scale / rad, ((np.asarray(al.translation) - cb) / rad).tolist(),
                       rotation_deg=al.rotation_deg)
    from scipy.spatial import cKDTree

    d, _ = cKDTree(ref).query(al.forward(inputs[0][0]))
    verts = [al.forward(p) for p, _ in inputs]
    # mirroring reverses the triangles' winding; flip them back so the (open) surfaces keep outward normals
    faces = [t[:, ::-1] if mirror else t for _, t in inputs]
    targets = []
    for k, v in enumerate(verts):
        cols = []
        for j in range(len(inputs)):
            cols.append(np.zeros(len(v)) if j == k else signed_distance(verts[j], faces[j], v, auto_orient=False))
        targets.append(np.stack(cols, axis=1))
    return Prepared(al, verts, targets, inputs, z_cut, float(np.sqrt((d**2).mean())))


@dataclass
class PublicFit:
    latent: list[float]
    alignment: dict
    icp_transform: list[list[float]]
    centre: list[float]
    scale: float
    iterations: int
    loss: float
    seconds: float
    icp_rms: float
    z_cut: float | None


def fit_public(model: ShapeModel, knees: dict[str, dict[str, object]], sides: dict[str, str], *,
               settings: dict | None = None, clip_ratio: float | None = 0.7, icp_iterations: int = 100,
               landmarks: int = 1000, seed: int = 0, device: str = "cpu") -> tuple[dict[str, PublicFit], dict[str, Prepared]]:
    """Fit latents for many knees with the public recipe (one batched optimisation, decoder fixed)."""
    import torch

    st = recipe_settings(model.cfg, settings)
    ids = sorted(knees)
    prepared = {}
    for s in ids:
        missing = [k for k in model.surfaces if k not in knees[s]]
        if missing:
            raise ShapeError(f"{s}: the shape model needs surfaces {model.surfaces}; missing {missing}")
        prepared[s] = prepare_public(model, knees[s], sides[s] == "left", st, clip_ratio=clip_ratio,
                                     icp_iterations=icp_iterations, landmarks=landmarks, where=s)
    dec = model.decoder.to(device).eval()
    for p in dec.parameters():
        p.requires_grad_(False)
    n_surf = len(model.surfaces)
    k = len(ids)
    # per knee and surface: how many vertices a step takes (equal per surface, at most the smallest surface)
    per = [min(int(st["n_samples_latent_recon"]) // n_surf, min(len(v) for v in prepared[s].vertices)) for s in ids]
    width = max(per) * n_surf
    verts = [[torch.as_tensor(v, dtype=torch.float32) for v in prepared[s].vertices] for s in ids]
    targs = [[torch.as_tensor(t, dtype=torch.float32) for t in prepared[s].targets] for s in ids]
    mask = torch.zeros(k, width)
    for i, n in enumerate(per):
        mask[i, : n * n_surf] = 1.0
    mask = mask.to(device)
    gens = [torch.Generator(device="cpu").manual_seed(seed * 1000003 + zlib.crc32(s.encode())) for s in ids]
    lat0 = torch.stack([torch.randn(model.latent_size, generator=g) * 0.01 for g in gens])
    lat = torch.nn.Parameter(lat0.to(device))
    lr0 = float(st["lr_recon"])
    opt = torch.optim.Adam([lat], lr=lr0)
    iters_total = int(st["num_iterations_recon"])
    n_up = st["n_lr_updates_recon"]
    every = iters_total + 1 if not n_up else max(1, iters_total // int(n_up))
    factor = float(st["lr_update_factor_recon"])
    clamp = float(st["clamp_dist_recon"])
    l2 = 1e-4 if st["l2reg_recon"] is True else float(st["l2reg_recon"] or 0.0)  # the public weight when on
    patience = int(st["convergence_patience_recon"])
    best = torch.full((k,), float("inf"))
    since = torch.zeros(k, dtype=torch.long)
    active = torch.ones(k, dtype=torch.bool)
    iters = torch.zeros(k, dtype=torch.long)
    final = lat.detach().clone()
    last_loss = torch.full((k,), float("nan"))
    t0 = time.perf_counter()
    for it in range(iters_total):
        for group in opt.param_groups:
            group["lr"] = lr0 * (1.0 / factor) ** (it // every)
        q = torch.zeros(k, width, 3)
        d = torch.zeros(k, width, n_surf)
        for i in range(k):
            if not active[i]:
                continue
            parts_q, parts_d = [], []
            for v, t in zip(verts[i], targs[i]):
                idx = torch.randperm(len(v), generator=gens[i])[: per[i]]
                parts_q.append(v[idx])
                parts_d.append(t[idx])
            n = per[i] * n_surf
            q[i, :n] = torch.cat(parts_q)
            d[i, :n] = torch.cat(parts_d)
        q, d = q.to(device), d.to(device)
        pred = dec(lat, q)
        err = (pred.clamp(-clamp, clamp) - d.clamp(-clamp, clamp)).abs().mean(dim=2)
        per_knee = (err * mask).sum(1) / mask.sum(1)
        if l2:
            per_knee = per_knee + l2 * (lat**2).sum(1)
        loss = (per_knee * active.to(device)).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        cur = per_knee.detach().cpu()
        improved = (cur < best) & active
        best = torch.where(improved, cur, best)
        since = torch.where(improved, torch.zeros_like(since), since + 1)
        iters = torch.where(active, iters + 1, iters)
        last_loss = torch.where(active, cur, last_loss)
        stopping = active & (since >= patience)
        final[active.to(device)] = lat.detach()[active.to(device)]
        active &= ~stopping
        if it % 100 == 0:
            log.info("public recipe iteration %d/%d: %d of %d knees still improving", it, iters_total, int(active.sum()), k)
        if not active.any():
            break
    secs = time.perf_counter() - t0
    out = {}
    for i, s in enumerate(ids):
        al = prepared[s].alignment
        m = _matrix(al)
        out[s] = PublicFit([float(x) for x in final[i].cpu().numpy()], al.__dict__.copy(), m.tolist(), al.centre,
                           float(al.scale), int(iters[i]), float(last_loss[i]), round(secs / k, 3),
                           prepared[s].icp_rms, prepared[s].z_cut)
    return out, prepared


def assd_per_surface(model: ShapeModel, fit: PublicFit, prepared: Prepared, recon: dict[str, tuple[np.ndarray, np.ndarray]],
                     n: int = 20000) -> dict[str, float]:
    """ASSD (mm) between each reconstructed surface and the knee's (clipped) input surface, over the clipped region."""
    out = {}
    for k, name in enumerate(model.surfaces):
        rp, rt = recon[name]
        if prepared.z_cut is not None and k == 0:
            rp, rt = clip_below(rp, rt, prepared.z_cut)
        ip, it = prepared.inputs[k]
        out[name] = float(surface_distance(ip, it, rp, rt, n=n)["assd"])
    return out
