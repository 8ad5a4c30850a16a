"""Neural shape models (NSM) of the femur and the BScore.

An NSM is an auto-decoder of the DeepSDF family: a network f(z, x) -> signed distance at point x of
the shape coded by latent z. Training learns the network and one latent per training shape; fitting
a new knee keeps the network fixed and optimises its latent against signed-distance samples.

Coordinates: every mesh is mirrored to a right knee (left knees: x -> -x), centred, and similarity-
aligned (ICP: rotation, translation, isotropic scale) to the model's reference shape, which lives in
the unit sphere. :class:`Alignment` maps input (mm, LPS) points to model space and back, so the
reconstruction is written in the input's coordinates and its distance to the input is in mm.

Two decoders:

* ``deepsdf``: an MLP on [z, x (+ Fourier features of x)] with one skip connection; one SDF output per
  surface (bone only, or bone + cartilage).
* ``triplanar``: the public knee NSM's layout: z -> transposed convolutions -> three feature planes
  (xy, xz, yz); features sampled bilinearly at x, summed, concatenated with x -> weight-normed MLP ->
  tanh. A model folder holds ``model_params_config.json`` and a checkpoint ``{"model": state_dict}``.

BScore (public format, ``model.json``): ``bscore_vector`` v (unit vector from the healthy to the OA
mean latent), ``mean_healthy`` and ``std_healthy`` (ddof=1) of the healthy latents projected on v;
score = (z . v - mean_healthy) / std_healthy.
"""

from __future__ import annotations

__all__ = ["CHECKPOINT_NAME", "CONFIG_NAME", "CONFIG_NAMES", "FitResult", "ShapeError", "ShapeModel",
           "bscore", "build_decoder", "find_checkpoint", "find_config", "fit", "fit_bscore",
           "load_bscore_model", "load_model", "prepare", "public_surfaces", "reconstruct", "save_bscore_model",
           "save_model", "save_public", "train"]

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from kneeflow.alignment import Alignment, align
from kneeflow.bscore import (ShapeError, bscore, fit_bscore, load_bscore_model,  # noqa: F401 - re-exported
                             save_bscore_model)
from kneeflow.optional import require
from kneeflow.surface import load_surface, mesh_arrays, sample_on_surface, sdf_samples, signed_distance

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- networks



def build_decoder(cfg: dict):
    """The decoder a ``model_params_config``-style dict describes."""
    torch = require("torch")
    nn = torch.nn
    kind = cfg.get("model_type", cfg.get("decoder", "deepsdf"))
    if kind == "triplanar":
        from kneeflow.triplanar import build_triplanar

        return build_triplanar({"objects_per_decoder": len(cfg.get("surfaces", ["femur"])), **cfg})

    class DeepSDF(nn.Module):
        def __init__(self, latent_size, hidden, n_layers, n_surfaces, fourier, skip):
            super().__init__()
            self.fourier = fourier
            d_in = latent_size + 3 + 6 * fourier
            self.skip = skip
            layers = []
            for i in range(n_layers):
                d = d_in if i == 0 else hidden
                if i == skip:
                    d = hidden + d_in
                layers.append(nn.utils.parametrizations.weight_norm(nn.Linear(d, hidden)))
            self.layers = nn.ModuleList(layers)
            self.out = nn.Linear(hidden, n_surfaces)

        def forward(self, z, x):  # z (B, L), x (B, N, 3) -> (B, N, S)
            feats = [z[:, None, :].expand(-1, x.shape[1], -1), x]
            if self.fourier:
                f = 2.0 ** torch.arange(self.fourier, device=x.device, dtype=x.dtype) * math.pi
                xf = x[..., None] * f  # (B, N, 3, F)
                feats += [torch.sin(xf).flatten(-2), torch.cos(xf).flatten(-2)]
            h0 = torch.cat(feats, dim=-1)
            h = h0
            for i, layer in enumerate(self.layers):
                if i == self.skip:
                    h = torch.cat([h, h0], dim=-1)
                h = torch.relu(layer(h))
            return torch.tanh(self.out(h))

    n_surf = len(cfg.get("surfaces", ["femur"]))
    if kind == "deepsdf":
        return DeepSDF(cfg["latent_size"], cfg.get("hidden", 128), cfg.get("n_layers", 6), n_surf,
                       cfg.get("fourier", 4), cfg.get("skip", 3))
    raise ShapeError(f"unknown decoder {kind!r} (deepsdf or triplanar)")


# ---------------------------------------------------------------------------------------------- model I/O


@dataclass
class ShapeModel:
    cfg: dict
    decoder: object
    reference: np.ndarray | None  # (n, 3) model-space points of the reference surface (None: the mean shape)
    latents: dict[str, list[float]] = field(default_factory=dict)  # training shapes
    folder: str = ""
    public: bool = False  # a public (gattia/nsm) model folder: fitted with the public recipe

    @property
    def surfaces(self) -> list[str]:
        return list(self.cfg.get("surfaces", ["femur"]))

    @property
    def latent_size(self) -> int:
        return int(self.cfg["latent_size"])

    def sdf(self, latents, points, *, chunk: int = 65536) -> np.ndarray:
        """Signed distances (B, N, n_surfaces), float32, of latents (B, L) at model-space points (N, 3)."""
        torch = require("torch")
        dev = next(self.decoder.parameters()).device
        z = torch.as_tensor(np.atleast_2d(np.asarray(latents, dtype=np.float32)), device=dev)
        x = np.asarray(points, dtype=np.float32).reshape(-1, 3)
        if z.shape[1] != self.latent_size:
            raise ShapeError(f"{self.folder or 'shape model'}: latents of size {z.shape[1]}, the model's is {self.latent_size}")
        self.decoder.eval()
        out = []
        with torch.no_grad():
            for i in range(0, max(len(x), 1), chunk):
                q = torch.as_tensor(x[i:i + chunk], device=dev)[None].expand(len(z), -1, -1)
                out.append(self.decoder(z, q).float().cpu().numpy())
        return np.concatenate(out, axis=1).astype(np.float32)

    def grid_sdf(self, latent, resolution: int = 128, surface: int = 0, *, coarse: bool = True) -> np.ndarray:
        """One surface's signed distance on the ``resolution``^3 grid over [-1, 1]^3 (axis i = x), float32.

        ``coarse``: every second grid point per axis is decoded first; a block of 2 x 2 x 2 cells is
        decoded in full only where the surface may cross it: corners of both signs, or a corner closer
        to zero than 1.5 x (the steepest slope between neighbouring coarse points, at least 1) x half
        the block's diagonal (a field no steeper than that cannot change sign inside a block whose
        corners are all further from zero). Elsewhere every point keeps its block's corner value, so
        marching cubes finds no crossing there, and the surface is the full grid's: about a third of
        the decoder evaluations at 128 for the demo's model (slope ~2); a steep field (the public
        triplanar models: ~30) is decoded almost in full. tests/test_shape.py compares the two.
        """
        r = int(resolution)
        ax = np.linspace(-1.0, 1.0, r, dtype=np.float32)
        z = np.asarray(latent, dtype=np.float32).reshape(1, -1)

        def decode(ijk):
            return self.sdf(z, ax[ijk])[0, :, surface]

        if not coarse or r < 64:  # below 64 the band is most of the grid
            ii = np.stack(np.meshgrid(*[np.arange(r)] * 3, indexing="ij"), axis=-1).reshape(-1, 3)
            return decode(ii).reshape(r, r, r)
        nodes = np.unique(np.r_[np.arange(0, r, 2), r - 1])
        n = len(nodes)
        c = decode(np.stack(np.meshgrid(nodes, nodes, nodes, indexing="ij"), axis=-1).reshape(-1, 3)).reshape(n, n, n)
        corners = np.stack([c[i:n - 1 + i, j:n - 1 + j, k:n - 1 + k] for i in (0, 1) for j in (0, 1) for k in (0, 1)])
        # the field's steepest slope between neighbouring coarse points (model units per unit), x 1.5
        h = 2.0 / (r - 1)
        gaps = np.diff(nodes) * h
        slope = max(float((np.abs(np.diff(c, axis=a)) / gaps.reshape([-1 if b == a else 1 for b in range(3)])).max())
                    for a in range(3))
        margin = 1.5 * max(slope, 1.0) * np.sqrt(3.0) * h  # x half a block's diagonal
        near = (np.abs(corners).min(0) < margin) | ((corners > 0).any(0) & (corners <= 0).any(0))
        # each grid index's block (half-open; the last index closes the last block)
        blk = np.minimum(np.searchsorted(nodes, np.arange(r), side="right") - 1, n - 2)
        full = near[np.ix_(blk, blk, blk)]
        interior = nodes[1:-1]
        for axis in range(3):  # a node also closes the block before it
            sl_to, sl_from = [slice(None)] * 3, [slice(None)] * 3
            sl_to[axis], sl_from[axis] = interior, interior - 1
            full[tuple(sl_to)] |= full[tuple(sl_from)]
        vol = c[np.ix_(blk, blk, blk)]  # each point's block's first corner: kept where nothing is decoded
        is_node = np.zeros(r, dtype=bool)
        is_node[nodes] = True
        vol[np.ix_(is_node, is_node, is_node)] = c
        todo = np.argwhere(full & ~(is_node[:, None, None] & is_node[None, :, None] & is_node[None, None, :]))
        if len(todo):
            vol[tuple(todo.T)] = decode(todo)
        log.debug("grid_sdf %d^3: %.0f %% of the points decoded", r, 100 * (n**3 + len(todo)) / r**3)
        return vol

    def mean_shape(self, resolution: int = 128) -> np.ndarray:
        """Vertices (model space) of the zero latent's first surface, decoded on a grid over [-1, 1]^3."""
        if self.reference is None:
            from skimage.measure import marching_cubes

            vol = self.grid_sdf(np.zeros(self.latent_size), resolution)
            if vol.min() > 0 or vol.max() < 0:
                raise ShapeError(f"{self.folder}: the mean shape (zero latent) has no surface in [-1, 1]^3")
            step = 2.0 / (resolution - 1)
            verts, _, _, _ = marching_cubes(vol, 0.0, spacing=(step, step, step))
            self.reference = (verts - 1.0).astype(np.float64)
        return self.reference


CONFIG_NAME = "model_params_config.json"
CONFIG_NAMES = (CONFIG_NAME, "model_config.json")  # some public releases use the second name
CHECKPOINT_NAME = "model.pth"


def save_model(model: ShapeModel, folder: str | os.PathLike) -> None:
    torch = require("torch")
    from kneeflow.atomic import atomic_path
    from kneeflow.io import write_json

    folder = Path(folder)
    with atomic_path(folder / CHECKPOINT_NAME) as tmp:
        torch.save({"model": model.decoder.state_dict(),
                    "reference": torch.as_tensor(model.reference, dtype=torch.float64)}, tmp)

    write_json(model.cfg, folder / CONFIG_NAME)
    write_json(model.latents, folder / "latents.json")


def save_public(model: ShapeModel, folder: str | os.PathLike, epoch: int) -> Path:
    """Write a triplanar model in the public layout: ``model_params_config.json`` + ``model/<epoch>.pth``."""
    torch = require("torch")
    from kneeflow.io import write_json

    folder = Path(folder)
    (folder / "model").mkdir(parents=True, exist_ok=True)
    cfg = {k: v for k, v in model.cfg.items() if k not in ("history", "decoder")}
    cfg.setdefault("model_type", "triplanar")
    cfg.setdefault("objects_per_decoder", len(model.surfaces))
    # our training aligns every shape to the first by a similarity: one scale for all, as the 647 model
    cfg.setdefault("scale_jointly", True)
    ck = folder / "model" / f"{int(epoch)}.pth"
    from kneeflow.atomic import atomic_path

    with atomic_path(ck) as tmp:
        torch.save({"epoch": int(epoch), "model": model.decoder.state_dict()}, tmp)
    write_json(cfg, folder / CONFIG_NAME)
    return ck


def find_config(folder: Path) -> Path:
    for name in CONFIG_NAMES:
        if (folder / name).exists():
            return folder / name
    raise ShapeError(f"{folder}: not a shape model folder (no {' or '.join(CONFIG_NAMES)})")


def find_checkpoint(folder: Path, cfg: dict, checkpoint: str | None = None) -> Path:
    """The checkpoint asked for, else ours (``model.pth``), else the public ``model/<highest epoch>.pth``."""
    if checkpoint:
        return folder / checkpoint
    if cfg.get("checkpoint"):
        return folder / cfg["checkpoint"]
    if (folder / CHECKPOINT_NAME).exists():
        return folder / CHECKPOINT_NAME
    epochs = sorted((int(p.stem), p) for p in (folder / "model").glob("*.pth") if p.stem.isdigit())
    if epochs:
        return epochs[-1][1]
    raise ShapeError(f"{folder}: no checkpoint ({CHECKPOINT_NAME} or model/<epoch>.pth)")


def public_surfaces(cfg: dict) -> list[str]:
    """kneeflow's mesh names for a public model's outputs: bone, then cartilage."""
    n = int(cfg.get("objects_per_decoder", 1))
    names = ["femur", "femoral_cartilage"]
    if n > len(names):
        raise ShapeError(f"a public model with {n} surfaces: name them with shape.pretrained.surfaces")
    return names[:n]


def load_model(folder: str | os.PathLike, *, checkpoint: str | None = None, reference_mesh: str | None = None,
               sha256: dict[str, str] | None = None, device: str = "cpu", surfaces: list[str] | None = None) -> ShapeModel:
    """Load an NSM folder: ours, or the public layout (gattia/nsm, ShapeMedKnee).

    Public: ``model_params_config.json`` (or ``model_config.json``) and ``model/<epoch>.pth`` =
    ``{"epoch", "model": state_dict}`` (the highest epoch unless ``checkpoint`` names one); the
    reference surface is the model's mean shape (zero latent). ``reference_mesh`` gives a reference
    surface for folders of our own layout whose checkpoint does not carry one. ``sha256`` maps a file
    (relative to the folder) to its expected checksum; a mismatch is refused. Weights are loaded with
    ``weights_only=True``.
    """
    from kneeflow.checksum import sha256 as file_sha256

    torch = require("torch")
    folder = Path(folder)
    cfg_path = find_config(folder)
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise ShapeError(f"{cfg_path}: invalid JSON ({e})") from None
    public = "model_type" in cfg
    if public and cfg["model_type"] != "triplanar":
        raise ShapeError(f"{cfg_path}: model_type {cfg['model_type']!r} is not supported (triplanar)")
    if public:
        cfg["surfaces"] = list(surfaces or cfg.get("surfaces") or public_surfaces(cfg))
        if len(cfg["surfaces"]) != int(cfg.get("objects_per_decoder", 1)):
            raise ShapeError(f"{cfg_path}: {cfg.get('objects_per_decoder', 1)} surfaces, {len(cfg['surfaces'])} names given")
    ck = find_checkpoint(folder, cfg, checkpoint)
    if not ck.exists():
        raise ShapeError(f"{folder}: checkpoint {ck.relative_to(folder)} not found")
    for name, want in (sha256 or {}).items():
        got = file_sha256(folder / name)
        if got != want.lower():
            raise ShapeError(f"{folder / name}: sha256 mismatch: expected {want}, got {got}")
    try:
        obj = torch.load(ck, map_location=device, weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise ShapeError(f"{ck}: not a safe weights-only checkpoint or corrupt ({type(e).__name__})") from None
    if not isinstance(obj, dict) or "model" not in obj:
        raise ShapeError(f"{ck}: expected a dict with key 'model' (the decoder's state_dict)")
    try:
        dec = build_decoder(cfg)
    except (ValueError, KeyError) as e:
        raise ShapeError(f"{cfg_path}: cannot build the decoder ({e})") from None
    try:
        dec.load_state_dict(obj["model"])
    except RuntimeError as e:
        raise ShapeError(f"{ck}: weights do not match {cfg_path.name} ({str(e).splitlines()[0]})") from None
    if "reference" in obj:
        reference = obj["reference"].cpu().numpy()
    elif reference_mesh:
        poly = load_surface(reference_mesh)
        pts, tris = mesh_arrays(poly)
        al = align(pts, False, None)
        reference = sample_on_surface(al.forward(pts), tris, 20000, np.random.default_rng(0))
    elif public:
        reference = None  # the mean shape, decoded when a fit needs it
    else:
        raise ShapeError(f"{folder}: no reference surface in the checkpoint; give the model's reference mesh")
    latents = {}
    if (folder / "latents.json").exists():
        latents = json.loads((folder / "latents.json").read_text())
    return ShapeModel(cfg, dec.to(device).eval(), reference, latents, str(folder), public=public)


# ---------------------------------------------------------------------------------------------- train / fit


def _seed(seed: int) -> None:
    import random

    torch = require("torch")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def prepare(poly_by_surface: dict[str, object], mirror: bool, reference: np.ndarray | None, n: int, seed: int,
            where: str, **align_kw) -> tuple[Alignment, np.ndarray, np.ndarray, dict]:
    """Align a knee (by its first surface) and draw SDF samples for every surface.

    Returns (alignment, query points (n, 3), sdf (n, S), arrays of the first surface in model space).
    """
    rng = np.random.default_rng(seed)
    surfaces = list(poly_by_surface)
    pts, tris = mesh_arrays(poly_by_surface[surfaces[0]])
    al = align(pts, mirror, reference, where=where, **align_kw)
    if len(surfaces) == 1:
        q, d0 = sdf_samples(al.forward(pts), tris, n, rng)
        return al, q, d0[:, None], {"points": al.forward(pts), "tris": tris}
    # several surfaces: samples near each surface (an equal share), every surface's SDF at all of them
    meshes = [(al.forward(pts), tris)] + [(al.forward(p2), t2) for p2, t2 in
                                          (mesh_arrays(poly_by_surface[s]) for s in surfaces[1:])]
    shares = [n // len(meshes)] * len(meshes)
    shares[0] += n - sum(shares)
    q = np.concatenate([sdf_samples(p, t, k, rng)[0] for (p, t), k in zip(meshes, shares)])
    d = np.stack([signed_distance(p, t, q).astype(np.float32) for p, t in meshes], axis=1)
    return al, q, d, {"points": meshes[0][0], "tris": tris}


def clamped_l1(pred, target, clamp: float):
    """DeepSDF's clamped L1, with the unclamped error where the target lies inside the band.

    Clamping both sides (DeepSDF) gives no gradient where the prediction is beyond the band, so a
    surface channel whose output drifts past +clamp near its surface never comes back (its surface
    is lost: seen for one of two surfaces with 2 of 3 seeds on the test's tiny model).
    """
    torch = require("torch")
    err = (pred.clamp(-clamp, clamp) - target.clamp(-clamp, clamp)).abs()
    return torch.where(target.abs() < clamp, (pred - target).abs(), err)


def train(shapes: dict[str, dict[str, object]], sides: dict[str, str], cfg: dict, *, device: str = "cpu",
          progress=None) -> ShapeModel:
    """Train decoder + one latent per shape. ``shapes``: sample -> {surface name: closed mesh}."""
    torch = require("torch")
    seed = int(cfg.get("seed", 0))
    _seed(seed)
    ids = sorted(shapes)
    if len(ids) < 2:
        raise ShapeError(f"an NSM needs at least 2 training shapes, got {len(ids)}")
    first = ids[0]
    fp, ft = mesh_arrays(shapes[first][cfg["surfaces"][0]])
    ref_al = align(fp, sides[first] == "left", None)
    # every surface inside the unit sphere (the first alone sets the scale when it encloses the others)
    extent = max([float(np.linalg.norm(ref_al.forward(mesh_arrays(shapes[first][k])[0]), axis=1).max())
                  for k in cfg["surfaces"][1:]], default=0.0)
    if extent > 0.9:
        ref_al.scale *= 0.9 / extent
    reference = sample_on_surface(ref_al.forward(fp), ft, 20000, np.random.default_rng(seed))
    n = int(cfg.get("samples_per_shape", 20000))
    qs, ds = [], []
    for i, s in enumerate(ids):
        al, q, d, _ = prepare({k: shapes[s][k] for k in cfg["surfaces"]}, sides[s] == "left",
                              None if s == first else reference, n, seed + i, where=f"{s} (training shape)")
        qs.append(q)
        ds.append(d)
    q_all = torch.as_tensor(np.stack(qs), device=device)  # (K, n, 3)
    d_all = torch.as_tensor(np.stack(ds), device=device)  # (K, n, S)
    dec = build_decoder(cfg).to(device)
    lat = torch.nn.Parameter(torch.randn(len(ids), cfg["latent_size"], device=device) * 0.01)
    steps = int(cfg.get("steps", 1000))
    batch = int(cfg.get("points_per_step", 2048))
    clamp = float(cfg.get("clamp", 0.1))
    reg = float(cfg.get("latent_reg", 1e-4))
    opt = torch.optim.Adam([{"params": dec.parameters(), "lr": float(cfg.get("lr", 1e-3))},
                            {"params": [lat], "lr": float(cfg.get("latent_lr", 1e-3))}])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 ** (k / max(1, steps // 4)))
    g = torch.Generator(device="cpu").manual_seed(seed)
    t0 = time.perf_counter()
    history = []
    for step in range(steps):
        idx = torch.randint(0, n, (len(ids), batch), generator=g).to(device)
        q = torch.gather(q_all, 1, idx[..., None].expand(-1, -1, 3))
        d = torch.gather(d_all, 1, idx[..., None].expand(-1, -1, d_all.shape[-1]))
        pred = dec(lat, q)
        loss = clamped_l1(pred, d, clamp).mean() + reg * (lat**2).sum(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % max(1, steps // 10) == 0 or step == steps - 1:
            history.append({"step": step, "loss": float(loss.detach()), "seconds": round(time.perf_counter() - t0, 2)})
            log.info("NSM step %d/%d loss %.5f", step, steps, float(loss.detach()))
            if progress:
                progress(step, steps, float(loss.detach()))
    cfg = {**cfg, "history": history, "train_seconds": round(time.perf_counter() - t0, 2)}
    latents = {s: [float(x) for x in lat[i].detach().cpu().numpy()] for i, s in enumerate(ids)}
    return ShapeModel(cfg, dec.eval(), reference, latents)


@dataclass
class FitResult:
    latent: list[float]
    alignment: dict
    iterations: int
    loss: float
    seconds: float


def fit(model: ShapeModel, knees: dict[str, dict[str, object]], sides: dict[str, str], *, iterations: int = 2000,
        lr: float = 5e-3, points: int = 8000, n_samples: int = 20000, patience: int = 200, tol: float = 1e-5,
        seed: int = 0, device: str = "cpu", max_residual: float = 0.06, max_rotation_deg: float = 40.0) -> dict[str, FitResult]:
    """Fit latents for many knees at once (one batched optimisation; one model load).

    Every knee has its own latent and its own early stop; the decoder is fixed. ``knees``: sample ->
    {surface: mesh} (same surfaces as the model). Deterministic for a given seed.
    """
    torch = require("torch")
    _seed(seed)
    ids = sorted(knees)
    surfaces = model.cfg.get("surfaces", ["femur"])
    prepared = {}
    for s in ids:
        missing = [k for k in surfaces if k not in knees[s]]
        if missing:
            raise ShapeError(f"{s}: the shape model needs surfaces {surfaces}; missing {missing}")
        prepared[s] = prepare({k: knees[s][k] for k in surfaces}, sides[s] == "left", model.mean_shape(), n_samples,
                              seed, where=f"{s}", max_residual=max_residual, max_rotation_deg=max_rotation_deg)
    dec = model.decoder.to(device).eval()
    for p in dec.parameters():
        p.requires_grad_(False)
    q_all = torch.as_tensor(np.stack([prepared[s][1] for s in ids]), device=device)
    d_all = torch.as_tensor(np.stack([prepared[s][2] for s in ids]), device=device)
    k = len(ids)
    lat = torch.nn.Parameter(torch.zeros(k, model.cfg["latent_size"], device=device))
    opt = torch.optim.Adam([lat], lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 ** (i / max(1, iterations // 3)))
    clamp = float(model.cfg.get("clamp", 0.1))
    reg = float(model.cfg.get("latent_reg", 1e-4))
    # one random stream per knee (seeded by its id), so a knee's fit does not depend on its batch
    import zlib

    gens = [torch.Generator(device="cpu").manual_seed(seed * 1000003 + zlib.crc32(s.encode())) for s in ids]
    best = torch.full((k,), float("inf"))
    best_lat = lat.detach().clone()
    since = torch.zeros(k, dtype=torch.long)
    active = torch.ones(k, dtype=torch.bool)
    iters = torch.zeros(k, dtype=torch.long)
    n = q_all.shape[1]
    t0 = time.perf_counter()
    for it in range(iterations):
        idx = torch.stack([torch.randint(0, n, (min(points, n),), generator=g) for g in gens]).to(device)
        q = torch.gather(q_all, 1, idx[..., None].expand(-1, -1, 3))
        d = torch.gather(d_all, 1, idx[..., None].expand(-1, -1, d_all.shape[-1]))
        pred = dec(lat, q)
        per = (pred.clamp(-clamp, clamp) - d.clamp(-clamp, clamp)).abs().mean(dim=(1, 2)) + reg * (lat**2).sum(1)
        loss = (per * active.to(device)).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        per = per.detach().cpu()
        improved = (per < best - tol) & active
        best = torch.where(improved, per, best)
        best_lat[improved.to(device)] = lat.detach()[improved.to(device)]
        since = torch.where(improved, torch.zeros_like(since), since + 1)
        iters = torch.where(active, iters + 1, iters)
        active &= since < patience
        if it % 100 == 0:
            log.info("fit iteration %d/%d: %d of %d knees still improving, mean best loss %.5f", it, iterations,
                     int(active.sum()), k, float(best[torch.isfinite(best)].mean()) if torch.isfinite(best).any() else float("nan"))
        if not active.any():
            break
    secs = time.perf_counter() - t0
    return {s: FitResult([float(x) for x in best_lat[i].cpu().numpy()], asdict(prepared[s][0]), int(iters[i]),
                         float(best[i]), round(secs / k, 3)) for i, s in enumerate(ids)}


def reconstruct(model: ShapeModel, latent, alignment: Alignment | dict, *, resolution: int = 128, surface: int = 0,
                device: str = "cpu", coarse: bool = True):
    """Marching cubes of the decoded SDF (:meth:`ShapeModel.grid_sdf`; the model's decoder is on
    ``device`` already), mapped back to the input's coordinates: (points, triangles)."""
    from skimage.measure import marching_cubes

    if isinstance(alignment, dict):
        alignment = Alignment(**alignment)
    lo, hi = -1.0, 1.0
    vol = model.grid_sdf(latent, resolution, surface, coarse=coarse)
    if vol.min() > 0 or vol.max() < 0:
        raise ShapeError(f"the decoded {model.surfaces[surface]} has no surface inside the unit cube (fit diverged?)")
    step = (hi - lo) / (resolution - 1)
    verts, faces, _, _ = marching_cubes(vol, 0.0, spacing=(step, step, step))
    verts = verts + lo
    pts = alignment.inverse(verts)
    # marching cubes winds triangles outward for a field negative inside; mirroring flips the winding
    if alignment.flips_orientation():
        faces = faces[:, ::-1]
    return pts, faces.astype(np.int64)


