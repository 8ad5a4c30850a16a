"""A synthetic knee with ground truth: anatomy, a DESS-like image, an optional MESE series.

The knee is built from implicit surfaces in a local anatomical frame (millimetres):
``u`` lateral -> medial, ``v`` posterior -> anterior, ``w`` inferior -> superior, with the joint line
at ``w = 0``. Bone parts are exact (or near-exact) signed distance functions combined with hard
minima where cartilage sits, so the distance from the bone is known in closed form. Each cartilage plate
is the shell ``0 < d(x) <= t(p(x))`` where ``d`` is the distance to the bone, ``p`` the nearest bone
surface point and ``t`` a smooth thickness field defined on the bone surface. The label map is a
point sampling of that continuous truth, so the thickness normal to the bone surface is ``t`` by
construction; ``truth.json`` holds its area-weighted mean per plate, computed on a marching-cubes
surface of the bone, independent of the voxel grid.

Images are written in LPS scanner coordinates (ITK convention): for a right knee medial is +x
(towards the patient's left), anterior is -y, superior is +z. Left knees are the mirror image.
"""

from __future__ import annotations

__all__ = ["BASE_T2_MS", "DESS_INTENSITY", "ECHO_TIMES_MS", "EDGE_FLOOR", "EDGE_TAPER_MM", "FOV_LOCAL",
           "KneeParams", "PD", "Phantom", "TIBIAL_SLOPE", "draw_params", "femur_labels", "femur_parts",
           "femur_sdf", "lesion_centre", "main", "parse_lesions", "patella_geometry", "patella_sdf", "synthesize",
           "tibia_sdf", "write"]

import argparse
import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from kneeflow.labels import CANONICAL

log = logging.getLogger(__name__)

#: T2 (ms) per tissue in the synthetic MESE series before the OA shift.
BASE_T2_MS = {
    "femoral_cartilage": 40.0,
    "medial_tibial_cartilage": 36.0,
    "lateral_tibial_cartilage": 37.0,
    "patellar_cartilage": 43.0,
    "meniscus": 12.0,
    "marrow": 60.0,
    "cortex": 2.0,
    "soft_tissue": 32.0,
    "fluid": 300.0,
}
#: Proton density (arbitrary units) per tissue; DESS-like contrast uses DESS_INTENSITY instead.
PD = {
    "femoral_cartilage": 0.80,
    "medial_tibial_cartilage": 0.80,
    "lateral_tibial_cartilage": 0.80,
    "patellar_cartilage": 0.80,
    "meniscus": 0.35,
    "marrow": 0.90,
    "cortex": 0.05,
    "soft_tissue": 0.60,
    "fluid": 1.00,
}
#: DESS-like contrast: cartilage and fluid bright, marrow intermediate, cortex and menisci dark.
DESS_INTENSITY = {
    "air": 0.0,
    "soft_tissue": 0.28,
    "fluid": 1.0,
    "cartilage": 0.78,
    "meniscus": 0.08,
    "marrow": 0.42,
    "cortex": 0.04,
}
#: cartilage thins over this distance (mm) towards its margins, down to EDGE_FLOOR x its thickness
EDGE_TAPER_MM = 2.0
EDGE_FLOOR = 0.5
#: posterior slope of the tibial plateau (rise per mm anterior; ~6 degrees, as in real knees)
TIBIAL_SLOPE = 0.10
ECHO_TIMES_MS = tuple(float(10 * i) for i in range(1, 9))


@dataclass
class KneeParams:
    """Per-knee shape parameters drawn from the seed (mm unless stated)."""

    seed: int
    side: str
    oa: float
    scale: float
    r_med: float
    r_lat: float
    h_med: float
    h_lat: float
    u_med: float
    u_lat: float
    v_cond: float
    gap: float
    r_troch: float
    groove_depth: float
    plateau_au: float
    plateau_av: float
    yaw_deg: float
    shift: tuple[float, float, float]
    thick_base: dict[str, float] = field(default_factory=dict)
    thick_phase: tuple[float, ...] = ()
    #: full-thickness lesions: plate (MT, LT, cMF, cLF) -> area (mm^2) of bone left bare
    lesions: dict[str, float] = field(default_factory=dict)

    @property
    def wc_med(self) -> float:
        return self.gap / 2 + self.r_med

    @property
    def wc_lat(self) -> float:
        return self.gap / 2 + self.r_lat


def draw_params(seed: int, side: str = "right", oa: float = 0.0) -> KneeParams:
    """Draw a knee's shape from ``seed``; ``oa`` in [0, 1] widens/flattens condyles, thins medial cartilage."""
    if side not in ("right", "left"):
        raise ValueError(f"side must be 'right' or 'left', got {side!r}")
    if not 0.0 <= oa <= 1.0:
        raise ValueError(f"oa severity must be in [0, 1], got {oa}")
    rng = np.random.default_rng(seed)
    s = float(rng.uniform(0.92, 1.08))
    jitter = lambda: float(rng.uniform(0.95, 1.05))  # noqa: E731
    # OA flattens (larger sagittal radius) and widens (larger ML half-width) the condyles.
    return KneeParams(
        seed=seed,
        side=side,
        oa=float(oa),
        scale=s,
        r_med=20.5 * s * jitter() * (1 + 0.22 * oa),
        r_lat=19.0 * s * jitter() * (1 + 0.12 * oa),
        h_med=8.0 * s * jitter() * (1 + 0.30 * oa),
        h_lat=7.5 * s * jitter() * (1 + 0.15 * oa),
        u_med=14.0 * s,
        u_lat=-13.5 * s,
        v_cond=-5.0 * s,
        gap=8.0,
        r_troch=15.5 * s * jitter(),
        groove_depth=3.0 * jitter(),
        plateau_au=36.0 * s * jitter() * (1 + 0.08 * oa),
        plateau_av=25.0 * s * jitter(),
        yaw_deg=float(rng.uniform(-6, 6)),
        shift=tuple(float(x) for x in rng.uniform(-3, 3, size=3)),
        thick_base={
            "femoral": float(rng.uniform(2.2, 2.6)),
            "tibial_med": float(rng.uniform(2.1, 2.5)),
            "tibial_lat": float(rng.uniform(2.4, 2.8)),
            "patellar": float(rng.uniform(2.6, 3.0)),
        },
        thick_phase=tuple(float(x) for x in rng.uniform(0, 2 * np.pi, size=8)),
    )


# ----------------------------------------------------------------------------------------------
# Implicit geometry. All functions take local coordinates u, v, w (arrays of equal shape, mm).


def _rounded_cylinder_u(u, v, w, uc, vc, wc, radius, half_width, edge=3.0):
    """Exact SDF of a cylinder along u with rounded rims (edge radius ``edge``)."""
    d_rad = np.hypot(v - vc, w - wc) - radius + edge
    d_ax = np.abs(u - uc) - half_width + edge
    outside = np.hypot(np.maximum(d_rad, 0), np.maximum(d_ax, 0))
    return np.minimum(np.maximum(d_rad, d_ax), 0) + outside - edge


def _capsule(u, v, w, a, b, radius):
    """Exact SDF of a capsule (segment a-b swept by a sphere)."""
    pu, pv, pw = u - a[0], v - a[1], w - a[2]
    bu, bv, bw = (float(b[i] - a[i]) for i in range(3))
    h = np.clip((pu * bu + pv * bv + pw * bw) / (bu * bu + bv * bv + bw * bw), 0, 1)
    return np.sqrt((pu - bu * h) ** 2 + (pv - bv * h) ** 2 + (pw - bw * h) ** 2) - radius


def _vcapsule(u, v, w, uc, vc, w_lo, w_hi, radius):
    """Exact SDF of a vertical capsule (axis along w from w_lo to w_hi)."""
    dw = w - np.clip(w, w_lo, w_hi)
    return np.sqrt((u - uc) ** 2 + (v - vc) ** 2 + dw**2) - radius


def _smin(a, b, k):
    """Polynomial smooth minimum (blend width k mm)."""
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0, 1)
    return b * (1 - h) + a * h - k * h * (1 - h)


def femur_parts(p: KneeParams, u, v, w) -> dict[str, np.ndarray]:
    """Signed distance (approx.) of each femur part."""
    med = _rounded_cylinder_u(u, v, w, p.u_med, p.v_cond, p.wc_med, p.r_med, p.h_med)
    lat = _rounded_cylinder_u(u, v, w, p.u_lat, p.v_cond, p.wc_lat, p.r_lat, p.h_lat)
    wt = max(p.wc_med, p.wc_lat) + 6.0
    vt = p.v_cond + 9.0 * p.scale
    troch = _rounded_cylinder_u(u, v, w, 0.5 * (p.u_med + p.u_lat), vt, wt, p.r_troch, 20.0 * p.scale, 4.0)
    # the trochlear groove: a shallow central furrow on the anterior face
    troch = troch + p.groove_depth * np.exp(-((u - 0.5 * (p.u_med + p.u_lat)) ** 2) / (2 * 6.0**2)) * (
        v > vt
    )
    shaft = _vcapsule(u, v, w, 0.0, vt - 5, wt + 6, wt + 300, 13.5 * p.scale)
    parts = {"medial_condyle": med, "lateral_condyle": lat, "trochlea": troch, "shaft": shaft}
    if p.oa > 0:
        # osteophyte-like rims at the medial and lateral margins of the condyles
        r_ost = 1.0 + 3.5 * p.oa
        for name, uc, wc, h in (
            ("osteophyte_med", p.u_med, p.wc_med, p.h_med),
            ("osteophyte_lat", p.u_lat, p.wc_lat, p.h_lat),
        ):
            sgn = np.sign(uc)
            parts[name] = _capsule(
                u, v, w, (uc + sgn * (h - 1), p.v_cond - 8, wc - 4), (uc + sgn * (h - 1), p.v_cond + 8, wc - 4), r_ost
            )
    return parts


def femur_sdf(parts: dict[str, np.ndarray]) -> np.ndarray:
    body = np.minimum(parts["medial_condyle"], parts["lateral_condyle"])
    body = _smin(body, parts["trochlea"], 3.0)
    for name in ("osteophyte_med", "osteophyte_lat"):
        if name in parts:
            body = _smin(body, parts[name], 1.5)
    return _smin(body, parts["shaft"], 8.0)


def _plateau_top(p: KneeParams, u, v):
    """Height (w) of the tibial plateau: posterior slope, concave medial, convex lateral, central spines."""
    top = -p.gap / 2 + TIBIAL_SLOPE * (v - p.v_cond)
    top = top - 1.2 * np.exp(-((u - p.u_med) ** 2 + (v - p.v_cond) ** 2) / (2 * 9.0**2))
    top = top + 0.6 * np.exp(-((u - p.u_lat) ** 2 + (v - p.v_cond) ** 2) / (2 * 9.0**2))
    top = top + 5.0 * np.exp(-(u**2) / (2 * 2.2**2) - (v - p.v_cond) ** 2 / (2 * 5.0**2))
    return top


def tibia_sdf(p: KneeParams, u, v, w) -> np.ndarray:
    top = _plateau_top(p, u, v)
    d_top = w - top
    # the metaphysis narrows from the plateau towards the shaft
    taper = 1.0 - 0.45 * np.clip((top - w) / 30.0, 0, 1) ** 2
    ell = np.hypot(u / (p.plateau_au * taper), (v - p.v_cond + 2) / (p.plateau_av * taper))
    d_side = (ell - 1.0) * min(p.plateau_au, p.plateau_av) * taper
    d_bottom = (top - 32.0) - w
    plateau = np.maximum(np.maximum(d_top, d_side), d_bottom)
    shaft = _vcapsule(u, v, w, 0.0, p.v_cond + 2, -300.0, -25.0, 15.0 * p.scale)
    return _smin(plateau, shaft, 10.0)


def patella_geometry(p: KneeParams) -> tuple[np.ndarray, np.ndarray]:
    vt = p.v_cond + 9.0 * p.scale
    semi = np.array([19.0, 8.5, 21.0]) * p.scale
    centre = np.array([1.5, vt + p.r_troch + 8.0 + semi[1], max(p.wc_med, p.wc_lat) + 12.0])
    return centre, semi


def patella_sdf(p: KneeParams, u, v, w) -> np.ndarray:
    """Ellipsoid; distance bound normalised by the gradient (first-order SDF)."""
    c, a = patella_geometry(p)
    q = np.stack([(u - c[0]) / a[0], (v - c[1]) / a[1], (w - c[2]) / a[2]])
    k0 = np.sqrt((q**2).sum(0))
    k1 = np.sqrt(((q / a.reshape(3, *[1] * (q.ndim - 1))) ** 2).sum(0))
    return k0 * (k0 - 1.0) / np.maximum(k1, 1e-9)


# ----------------------------------------------------------------------------------------------
# Cartilage coverage and thickness fields, evaluated at bone-surface points.


#: where each plate's lesion is centred (local frame, on the bone surface)
LESION_PLATES = ("MT", "LT", "cMF", "cLF")


def lesion_centre(p: KneeParams, plate: str) -> np.ndarray:
    """The bone-surface point a lesion of ``plate`` is centred on: the middle of the tibial plate, or
    the distal (weight-bearing) point of the femoral condyle."""
    if plate in ("MT", "LT"):
        uc = p.u_med if plate == "MT" else p.u_lat
        return np.array([uc, p.v_cond, float(_plateau_top(p, np.float64(uc), np.float64(p.v_cond)))])
    if plate in ("cMF", "cLF"):
        uc, wc, r = (p.u_med, p.wc_med, p.r_med) if plate == "cMF" else (p.u_lat, p.wc_lat, p.r_lat)
        return np.array([uc, p.v_cond, wc - r])
    raise ValueError(f"lesions can be placed on {', '.join(LESION_PLATES)}, not {plate!r}")


def _in_lesion(p: KneeParams, u, v, w, plates) -> np.ndarray:
    """Bone-surface points inside a lesion (a ball of radius sqrt(area / pi) around its centre)."""
    out = np.zeros(np.shape(u), dtype=bool)
    for plate in plates:
        area = p.lesions.get(plate, 0.0)
        if area > 0:
            c = lesion_centre(p, plate)
            out |= (u - c[0]) ** 2 + (v - c[1]) ** 2 + (w - c[2]) ** 2 < area / np.pi
    return out


def _taper(edge_mm, width: float | None = None, floor: float | None = None):
    """Cartilage thins towards its margins: 1 inside, ``floor`` at the margin (smoothstep in between)."""
    width = EDGE_TAPER_MM if width is None else width
    floor = EDGE_FLOOR if floor is None else floor
    x = np.clip(edge_mm / width, 0.0, 1.0)
    return floor + (1.0 - floor) * x * x * (3 - 2 * x)


def _femoral_field(p: KneeParams, u, v, w, parts) -> tuple[np.ndarray, np.ndarray]:
    names = ["medial_condyle", "lateral_condyle", "trochlea"]
    stack = np.stack([parts[n] for n in names])
    comp = np.argmin(stack, axis=0)
    near = np.min(stack, axis=0) < 0.6
    edge = np.full(u.shape, -1.0)
    ph = p.thick_phase
    # condyles: the distal and posterior rim, away from the side walls and the shaft
    for i, (uc, wc, h, r) in enumerate(
        ((p.u_med, p.wc_med, p.h_med, p.r_med), (p.u_lat, p.wc_lat, p.h_lat, p.r_lat))
    ):
        theta = np.arctan2(v - p.v_cond, -(w - wc))  # 0 = distal, +pi/2 = anterior, -pi/2 = posterior
        e = np.minimum(np.minimum(h - 2.0 - np.abs(u - uc), (theta + 2.2) * r), (1.2 - theta) * r)
        edge = np.where(comp == i, e, edge)
    # trochlea: its anterior face up to the upper trochlear margin
    vt = p.v_cond + 9.0 * p.scale
    wt = max(p.wc_med, p.wc_lat) + 6.0
    e = np.minimum(np.minimum(v - vt - 3.0, wt + 0.6 * p.r_troch - w), 17.0 * p.scale - np.abs(u))
    edge = np.where(comp == 2, e, edge)
    edge = np.minimum(edge, parts["shaft"] - 1.0)
    for name in ("osteophyte_med", "osteophyte_lat"):
        if name in parts:
            edge = np.minimum(edge, parts[name] - 0.5)
    covered = near & (edge > 0) & ~_in_lesion(p, u, v, w, ("cMF", "cLF"))
    base = p.thick_base["femoral"]
    t = base * (1 + 0.16 * np.sin(0.11 * v + ph[0]) * np.cos(0.09 * u + ph[1]) + 0.08 * np.sin(0.13 * w + ph[2]))
    medial = u > 0
    t = np.where(medial, t * (1 - 0.40 * p.oa * np.clip((wt - w) / 20.0, 0, 1)), t)
    return covered, t * _taper(edge)


def _tibial_field(p: KneeParams, u, v, w) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    top = _plateau_top(p, u, v)
    on_top = np.abs(w - top) < 0.8
    ph = p.thick_phase
    e_med = np.minimum((1 - np.hypot((u - p.u_med) / 13.0, (v - p.v_cond) / 17.0)) * 13.0, u - 6.0)
    e_lat = np.minimum((1 - np.hypot((u - p.u_lat) / 12.0, (v - p.v_cond) / 16.0)) * 12.0, -6.0 - u)
    t_med = p.thick_base["tibial_med"] * (1 + 0.15 * np.sin(0.2 * v + ph[3]) * np.cos(0.2 * u + ph[4]))
    t_med = t_med * (1 - 0.35 * p.oa) * _taper(e_med)
    t_lat = p.thick_base["tibial_lat"] * (1 + 0.15 * np.sin(0.2 * v + ph[5]) * np.cos(0.2 * u + ph[6]))
    t = np.where(u > 0, t_med, t_lat * _taper(e_lat))
    return (on_top & (e_med > 0) & ~_in_lesion(p, u, v, w, ("MT",)),
            on_top & (e_lat > 0) & ~_in_lesion(p, u, v, w, ("LT",)), t)


def _patellar_field(p: KneeParams, u, v, w) -> tuple[np.ndarray, np.ndarray]:
    c, a = patella_geometry(p)
    e_back = (-(v - c[1]) - 0.45 * a[1]) * 3.0  # depth behind the cut-off, scaled to ~mm along the face
    e_in = (1 - np.hypot((u - c[0]) / (0.85 * a[0]), (w - c[2]) / (0.8 * a[2]))) * 0.8 * a[0]
    edge = np.minimum(e_back, e_in)
    t = p.thick_base["patellar"] * (1 + 0.12 * np.sin(0.15 * w + p.thick_phase[7]))
    return edge > 0, t * _taper(edge)


# ----------------------------------------------------------------------------------------------


@dataclass
class Phantom:
    """A synthesised knee: arrays are indexed (x, y, z) in LPS with the given spacing and origin."""

    labels: np.ndarray
    image: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    truth: dict
    echoes: np.ndarray | None = None
    echo_spacing: tuple[float, float, float] | None = None
    echo_origin: tuple[float, float, float] | None = None


FOV_LOCAL = ((-48.0, 48.0), (-56.0, 56.0), (-62.0, 72.0))  # u, v, w extents (mm)


class _Frame:
    """Maps scanner (LPS) points to the knee's local (u, v, w) frame and back."""

    def __init__(self, p: KneeParams):
        self.mirror = -1.0 if p.side == "left" else 1.0
        a = np.deg2rad(p.yaw_deg)
        self.rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
        self.shift = np.asarray(p.shift)

    def to_local(self, x, y, z):
        # scanner -> un-rotated LPS -> local (u = mirror * x, v = -y, w = z)
        pts = np.stack([x - self.shift[0], y - self.shift[1], z - self.shift[2]])
        q = np.tensordot(self.rot.T, pts, axes=1)
        return self.mirror * q[0], -q[1], q[2]

    def to_scanner(self, uvw: np.ndarray) -> np.ndarray:
        q = np.stack([self.mirror * uvw[:, 0], -uvw[:, 1], uvw[:, 2]], axis=1)
        return q @ self.rot.T + self.shift


def _grid(spacing: tuple[float, float, float]):
    origin = tuple(FOV_LOCAL[i][0] for i in range(3))
    shape = tuple(int(round((FOV_LOCAL[i][1] - FOV_LOCAL[i][0]) / spacing[i])) + 1 for i in range(3))
    return origin, shape


def _shell(sdf_fn, field_fn, x, y, z, frame, shell_max=4.5, eps=0.05):
    """Given candidate voxel centres (scanner mm) return (d, covered, t, extra) at nearest surface points."""
    u, v, w = frame.to_local(x, y, z)
    f = sdf_fn(u, v, w)
    grads = []
    for du, dv, dw in ((eps, 0, 0), (0, eps, 0), (0, 0, eps)):
        grads.append((sdf_fn(u + du, v + dv, w + dw) - sdf_fn(u - du, v - dv, w - dw)) / (2 * eps))
    g = np.stack(grads)
    gn = np.maximum(np.sqrt((g**2).sum(0)), 1e-6)
    d = f / gn
    pu, pv, pw = u - d * g[0] / gn, v - d * g[1] / gn, w - d * g[2] / gn
    return d, field_fn(pu, pv, pw)


def _area_weighted_truth(mask_fn, field_fn, lo, hi, step=0.5, plain_field_fn=None):
    """Truth per plate from the implicit surfaces, independent of the voxel grid.

    ``mask_fn(u, v, w)`` is the bone SDF, evaluated on a fine local grid inside box [lo, hi]; the zero
    level set is triangulated by marching cubes and the fields evaluated at the triangle centroids.
    ``field_fn`` gives {plate: (covered, thickness)}; ``plain_field_fn`` the same without lesions (the
    plate's whole extent). Returns {plate: {"thickness": area-weighted mean over the covered area (mm),
    "tAB": plate extent (mm^2), "cAB": covered area (mm^2), "VC": cartilage volume (mm^3)}}. The volume
    of the shell 0 < d <= t over the surface is the integral of t + H t^2 with H = (k1 + k2) / 2, the
    mean curvature, taken as half the Laplacian of the SDF (the t^3 Gaussian-curvature term is < 0.3 %).
    """
    from skimage.measure import marching_cubes

    axes = [np.arange(lo[i], hi[i] + step, step) for i in range(3)]
    uu, vv, ww = np.meshgrid(*axes, indexing="ij")
    vol = mask_fn(uu, vv, ww).astype(np.float32)
    verts, faces, _, _ = marching_cubes(vol, 0.0, spacing=(step, step, step))
    verts += np.asarray(lo)
    tri = verts[faces]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    c = tri.mean(axis=1)
    e = 0.4
    f0 = mask_fn(c[:, 0], c[:, 1], c[:, 2])
    lap = -6.0 * f0
    for k in range(3):
        d = np.zeros(3)
        d[k] = e
        lap = lap + mask_fn(*(c + d).T) + mask_fn(*(c - d).T)
    mean_curv = np.clip(lap / e**2 / 2.0, -1.0, 1.0)  # 1/mm; clipped at the kinks where parts meet
    plain = (plain_field_fn or field_fn)(c[:, 0], c[:, 1], c[:, 2])
    out = {}
    for name, (covered, t) in field_fn(c[:, 0], c[:, 1], c[:, 2]).items():
        wgt = area * covered
        out[name] = {
            "thickness": float((wgt * t).sum() / wgt.sum()) if wgt.sum() > 0 else float("nan"),
            "tAB": float((area * plain[name][0]).sum()),
            "cAB": float(wgt.sum()),
            "VC": float((wgt * (t + mean_curv * t**2)).sum()),
        }
    return out


def femur_labels(seed: int, side: str = "right", oa: float = 0.0, spacing: float = 1.0):
    """Only the femur of :func:`synthesize`'s knee (same seed, side, oa): (mask uint8, spacing, origin).

    A fast route to cohorts of bone shapes (shape-model tests): no image, cartilage or other bones.
    """
    p = draw_params(seed, side, oa)
    sp = (float(spacing),) * 3
    frame = _Frame(p)
    origin, shape = _grid(sp)
    ax = [np.float32(origin[i]) + np.arange(shape[i], dtype=np.float32) * np.float32(sp[i]) for i in range(3)]
    X, Y, Z = np.meshgrid(*ax, indexing="ij")
    U, V, W = frame.to_local(X, Y, Z)
    f = femur_sdf(femur_parts(p, U, V, W))
    return (f <= 0).astype(np.uint8), sp, origin


def synthesize(
    seed: int,
    side: str = "right",
    oa: float = 0.0,
    spacing: float | tuple[float, float, float] = 0.7,
    mese: bool = True,
    mese_slice_mm: float = 2.1,
    snr: float = 40.0,
    lesions: dict[str, float] | None = None,
    contrast: float = 1.0,
) -> Phantom:
    """Synthesise one knee.

    Parameters
    ----------
    seed : random seed; the same seed, side, oa and spacing give identical arrays.
    side : ``"right"`` or ``"left"`` (left is the mirror image in scanner x).
    oa : OA severity in [0, 1].
    spacing : voxel size in mm (isotropic float or (x, y, z)); 0.7 mm gives ~4 M voxels (~1 s, ~0.5 GB).
    mese : also simulate a multi-echo spin-echo series (8 echoes, TE 10..80 ms) with sagittal
        slices ``mese_slice_mm`` thick (in-plane as ``spacing``).
    snr : signal-to-noise ratio of cartilage in the DESS image and in the first echo.
    lesions : full-thickness cartilage lesions, plate -> area of bone left bare (mm^2) on ``MT``, ``LT``
        (centred in the plate) or ``cMF``, ``cLF`` (centred on the condyle's distal point); a disc of
        radius sqrt(area / pi) on the bone surface. truth.json records the plates' dAB%.
    contrast : scales every tissue's DESS level about their mean (air stays 0): below 1 the tissues
        look more alike (cartilage against marrow and fluid), above 1 less; the noise stays
        ``cartilage / snr`` of the standard contrast. 1 is the standard image.
    """
    from scipy import ndimage

    p = draw_params(seed, side, oa)
    if lesions:
        for plate, area in lesions.items():
            lesion_centre(p, plate)  # names the plate if it cannot hold a lesion
            if not 0 <= float(area) <= 120.0:
                raise ValueError(f"lesion area on {plate} must be in [0, 120] mm^2 (inside the plate), got {area}")
        p = replace(p, lesions={k: float(v) for k, v in lesions.items()})
    sp = (float(spacing),) * 3 if np.isscalar(spacing) else tuple(float(s) for s in spacing)
    if min(sp) <= 0:
        raise ValueError(f"spacing must be positive, got {sp}")
    frame = _Frame(p)
    origin, shape = _grid(sp)
    rng = np.random.default_rng(seed + 7919)

    ax = [np.float32(origin[i]) + np.arange(shape[i], dtype=np.float32) * np.float32(sp[i]) for i in range(3)]
    X, Y, Z = np.meshgrid(*ax, indexing="ij")
    U, V, W = frame.to_local(X, Y, Z)

    labels = np.zeros(shape, dtype=np.uint8)
    z_axis = ax[2] - np.float32(p.shift[2])  # w of each z slice (the yaw is about w)
    c_pat, a_pat = patella_geometry(p)

    def slab(fn, w_lo, w_hi):
        """Evaluate an SDF only on the z slices that can hold the bone; 100 mm elsewhere."""
        out = np.full(shape, 100.0, dtype=np.float32)
        k = np.nonzero((z_axis >= w_lo) & (z_axis <= w_hi))[0]
        if k.size:
            sl = np.s_[:, :, k[0] : k[-1] + 1]
            out[sl] = fn(U[sl], V[sl], W[sl])
        return out

    f_fem = slab(lambda u, v, w: femur_sdf(femur_parts(p, u, v, w)), -p.gap / 2 - 6, 1e9)
    f_tib = slab(lambda u, v, w: tibia_sdf(p, u, v, w), -1e9, 6.0)
    f_pat = slab(lambda u, v, w: patella_sdf(p, u, v, w), c_pat[2] - a_pat[2] - 6, c_pat[2] + a_pat[2] + 6)
    labels[f_fem <= 0] = CANONICAL["femur"]
    labels[f_tib <= 0] = CANONICAL["tibia"]
    labels[f_pat <= 0] = CANONICAL["patella"]
    bone_dist = np.minimum(np.minimum(f_fem, f_tib), f_pat)

    def fem_sdf(u, v, w):
        return femur_sdf(femur_parts(p, u, v, w))

    def fem_field(u, v, w):
        return _femoral_field(p, u, v, w, femur_parts(p, u, v, w))

    def tib_sdf(u, v, w):
        return tibia_sdf(p, u, v, w)

    def pat_sdf(u, v, w):
        return patella_sdf(p, u, v, w)

    # cartilage shells: only background voxels within shell_max of a bone are candidates
    free = labels == 0
    for sdf_val, sdf_fn, kind in ((f_fem, fem_sdf, "fem"), (f_tib, tib_sdf, "tib"), (f_pat, pat_sdf, "pat")):
        cand = free & (sdf_val > 0) & (sdf_val < 4.5)
        idx = np.nonzero(cand)
        x, y, z = X[idx], Y[idx], Z[idx]
        if kind == "fem":
            d, (cov, t) = _shell(fem_sdf, fem_field, x, y, z, frame)
            sel = cov & (d <= t)
            lab = np.where(sel, CANONICAL["femoral_cartilage"], 0)
        elif kind == "tib":
            d, (med, lat, t) = _shell(tib_sdf, lambda a, b, c: _tibial_field(p, a, b, c), x, y, z, frame)
            lab = np.where(med & (d <= t), CANONICAL["medial_tibial_cartilage"], 0)
            lab = np.where(lat & (d <= t), CANONICAL["lateral_tibial_cartilage"], lab)
        else:
            d, (cov, t) = _shell(pat_sdf, lambda a, b, c: _patellar_field(p, a, b, c), x, y, z, frame)
            lab = np.where(cov & (d <= t), CANONICAL["patellar_cartilage"], 0)
        keep = (lab > 0) & (labels[idx] == 0)
        labels[tuple(i[keep] for i in idx)] = lab[keep].astype(np.uint8)

    # menisci: wedge-shaped rings on the plateau periphery, filling the gap up to the femur
    # the joint slab (plateau to femoral condyles) holds the menisci and the joint fluid
    kj = np.nonzero((z_axis >= -p.gap / 2 - 3) & (z_axis <= p.gap / 2 + 8))[0]
    js = np.s_[:, :, kj[0] : kj[-1] + 1]
    Uj, Vj, Wj = U[js], V[js], W[js]
    top = _plateau_top(p, Uj, Vj)
    lab_j = labels[js]
    for name, uc, ru, rv in (("medial_meniscus", p.u_med, 14.0, 17.5), ("lateral_meniscus", p.u_lat, 13.0, 16.5)):
        rho = np.hypot((Uj - uc) / ru, (Vj - p.v_cond) / rv)
        ring = (rho > 0.72) & (rho < 1.08) & (Wj > top) & (Wj < top + 7.0) & (f_fem[js] > 0.3)
        ring &= lab_j == 0
        ring &= (Uj > 3.0) if uc > 0 else (Uj < -3.0)
        lab_j[ring] = CANONICAL[name]

    # ---- ground truth
    vox = float(np.prod(sp))
    counts = np.bincount(labels.ravel(), minlength=16)
    volumes = {name: float(counts[val] * vox) for name, val in CANONICAL.items()}
    hi_w = max(p.wc_med, p.wc_lat) + 30.0
    bare = replace(p, lesions={})  # each plate's whole extent (tAB) ignores the lesions

    def fem_fields(q):
        return lambda a, b, c: {"femoral_cartilage": _femoral_field(q, a, b, c, femur_parts(q, a, b, c))}

    def tib_fields(q):
        def fields(a, b, c):
            med, lat, t = _tibial_field(q, a, b, c)
            return {"medial_tibial_cartilage": (med, t), "lateral_tibial_cartilage": (lat, t)}

        return fields

    def pat_fields(q):
        return lambda a_, b_, c_: {"patellar_cartilage": _patellar_field(q, a_, b_, c_)}

    c, a = c_pat, a_pat
    plates = {
        **_area_weighted_truth(fem_sdf, fem_fields(p), (-40.0, -40.0, 0.0), (40.0, 40.0, hi_w), step=0.6,
                               plain_field_fn=fem_fields(bare)),
        **_area_weighted_truth(tib_sdf, tib_fields(p), (-42.0, -40.0, -12.0), (42.0, 35.0, 3.0), step=0.6,
                               plain_field_fn=tib_fields(bare)),
        **_area_weighted_truth(pat_sdf, pat_fields(p), tuple(c - a - 2), tuple(c + a + 2), step=0.4,
                               plain_field_fn=pat_fields(bare)),
    }
    thickness = {k: v["thickness"] for k, v in plates.items()}
    plate_code = {"femoral_cartilage": "F", "medial_tibial_cartilage": "MT", "lateral_tibial_cartilage": "LT",
                  "patellar_cartilage": "P"}
    morpho = {}
    for name, v in plates.items():
        t_ab = v["tAB"]
        morpho[plate_code[name]] = {"VC": v["VC"], "tAB": t_ab, "cAB": v["cAB"],
                                    "dAB%": 100.0 * (t_ab - v["cAB"]) / t_ab if t_ab > 0 else float("nan")}

    # ---- tissues for image synthesis
    cart = np.isin(labels, [1, 2, 3, 4])
    men = np.isin(labels, [5, 6])
    bone = np.isin(labels, [7, 8, 9])
    cortex = bone & (bone_dist > -1.2)
    marrow = bone & ~cortex
    body = np.hypot(U / 47.0, (V - 2.0) / 54.0) < 1.0
    fluid = ndimage.binary_dilation(cart, iterations=2) & (labels == 0) & body
    fluid[js] |= (lab_j == 0) & body[js] & (Wj > top) & (f_fem[js] > 0) & (np.abs(Uj) < 30) & (np.abs(Vj - p.v_cond) < 20)
    soft = body & (labels == 0) & ~fluid

    tissue_masks = {
        "soft_tissue": soft,
        "fluid": fluid,
        "meniscus": men,
        "marrow": marrow,
        "cortex": cortex,
        "femoral_cartilage": labels == 2,
        "medial_tibial_cartilage": labels == 3,
        "lateral_tibial_cartilage": labels == 4,
        "patellar_cartilage": labels == 1,
    }
    if contrast <= 0:
        raise ValueError(f"contrast must be positive, got {contrast}")
    levels = dict(DESS_INTENSITY)  # contrast 1: exactly the standard levels
    if contrast != 1.0:
        mid = float(np.mean([v for k, v in DESS_INTENSITY.items() if k != "air"]))
        levels.update({k: max(0.0, mid + contrast * (v - mid)) for k, v in DESS_INTENSITY.items() if k != "air"})
    dess = np.zeros(shape, dtype=np.float32)
    for tissue, mask in tissue_masks.items():
        key = "cartilage" if tissue.endswith("cartilage") else tissue
        dess[mask] = levels[key]
    bias = _bias_field(rng, X, Y, Z)
    sigma_vox = [0.45 * 0.7 / s for s in sp]  # partial-volume blur, ~0.3 mm
    dess = ndimage.gaussian_filter(dess, sigma_vox) * bias
    dess = _rician(rng, dess, DESS_INTENSITY["cartilage"] / snr)
    image = np.round(dess * 1000).astype(np.int16)

    t2 = {k: v + (8.0 * oa if k.endswith("cartilage") else 0.0) for k, v in BASE_T2_MS.items()}
    truth = {
        "labels": dict(CANONICAL),
        "volumes_mm3": volumes,
        "thickness_mm": thickness,
        # from the implicit surfaces (not the voxels): plate -> VC (mm^3), tAB, cAB (mm^2), dAB% (%)
        "morphometrics": morpho,
        "lesions_mm2": dict(p.lesions),
        "t2_ms": t2,
        "oa_severity": float(oa),
        "side": side,
        "seed": int(seed),
        "spacing_mm": list(sp),
        "shape": list(shape),
    }

    echoes = echo_sp = echo_origin = None
    if mese:
        factor = max(1, int(round(mese_slice_mm / sp[0])))
        nx = shape[0] // factor
        echo_list = []
        for te in ECHO_TIMES_MS:
            sig = np.zeros(shape, dtype=np.float32)
            for tissue, mask in tissue_masks.items():
                sig[mask] = PD[tissue] * np.exp(-te / t2[tissue])
            sig = ndimage.gaussian_filter(sig, sigma_vox) * bias
            # thick sagittal slices: average `factor` thin slices
            sig = sig[: nx * factor].reshape(nx, factor, *shape[1:]).mean(axis=1)
            echo_list.append(sig)
        echo_arr = np.stack(echo_list, axis=-1)
        echo_arr = _rician(rng, echo_arr, PD["femoral_cartilage"] / snr)
        echoes = np.round(echo_arr * 1000).astype(np.int16)
        echo_sp = (sp[0] * factor, sp[1], sp[2])
        # slab centre of the first `factor` thin slices
        echo_origin = (origin[0] + 0.5 * (factor - 1) * sp[0], origin[1], origin[2])
        truth["echo_times_ms"] = list(ECHO_TIMES_MS)
    log.info("phantom seed=%d side=%s oa=%.2f shape=%s", seed, side, oa, shape)
    return Phantom(labels, image, sp, origin, truth, echoes, echo_sp, echo_origin)


def _bias_field(rng, X, Y, Z) -> np.ndarray:
    c = rng.uniform(-1, 1, size=6) * np.array([0.12, 0.12, 0.12, 0.05, 0.05, 0.05])
    x, y, z = X / 60.0, Y / 60.0, Z / 60.0
    return np.exp(c[0] * x + c[1] * y + c[2] * z + c[3] * x * y + c[4] * y * z + c[5] * z * z).astype(np.float32)


def _rician(rng, signal: np.ndarray, sigma: float) -> np.ndarray:
    n1 = rng.standard_normal(signal.shape, dtype=np.float32) * sigma
    n2 = rng.standard_normal(signal.shape, dtype=np.float32) * sigma
    return np.sqrt((signal + n1) ** 2 + n2**2)


def write(phantom: Phantom, out_dir: str | Path) -> dict[str, Path]:
    """Write image.nii.gz, labels.nii.gz, optional echoes.nii.gz + echoes.json, and truth.json."""
    import SimpleITK as sitk

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    def to_itk(arr, sp, org):
        img = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(arr, (2, 1, 0))))
        img.SetSpacing(tuple(float(s) for s in sp))
        img.SetOrigin(tuple(float(o) for o in org))
        return img

    paths = {"image": out / "image.nii.gz", "labels": out / "labels.nii.gz", "truth": out / "truth.json"}
    sitk.WriteImage(to_itk(phantom.image, phantom.spacing, phantom.origin), str(paths["image"]), True)
    sitk.WriteImage(to_itk(phantom.labels, phantom.spacing, phantom.origin), str(paths["labels"]), True)
    if phantom.echoes is not None:
        # 4-D NIfTI: (x, y, z, echo); ITK stores it as a vector image with one component per echo
        vec = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(phantom.echoes, (2, 1, 0, 3))), isVector=True)
        vec.SetSpacing(phantom.echo_spacing)
        vec.SetOrigin(phantom.echo_origin)
        paths["echoes"] = out / "echoes.nii.gz"
        sitk.WriteImage(vec, str(paths["echoes"]), True)
        paths["echoes_json"] = out / "echoes.json"
        paths["echoes_json"].write_text(json.dumps({"echo_times_ms": phantom.truth["echo_times_ms"]}, indent=1))
    paths["truth"].write_text(json.dumps(phantom.truth, indent=1, sort_keys=True))
    return paths


def parse_lesions(text: str) -> dict[str, float]:
    """``"MT=40,cMF=30"`` -> {"MT": 40.0, "cMF": 30.0}; empty -> {}."""
    out = {}
    for item in filter(None, (t.strip() for t in (text or "").split(","))):
        plate, _, area = item.partition("=")
        try:
            out[plate.strip()] = float(area)
        except ValueError:
            raise ValueError(f"lesion {item!r}: expected plate=area_mm2, e.g. MT=40") from None
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m kneeflow.phantom", description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--side", choices=("right", "left"), default="right")
    ap.add_argument("--oa", type=float, default=0.0, help="OA severity in [0, 1]")
    ap.add_argument("--spacing", type=float, default=0.7, help="isotropic voxel size (mm)")
    ap.add_argument("--no-mese", action="store_true", help="skip the multi-echo series")
    ap.add_argument("--lesions", default="", help="full-thickness lesions as plate=mm2,... (MT, LT, cMF, cLF)")
    ap.add_argument("--out", required=True, help="output folder")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    ph = synthesize(a.seed, a.side, a.oa, a.spacing, mese=not a.no_mese, lesions=parse_lesions(a.lesions))
    for k, v in write(ph, a.out).items():
        log.info("wrote %s: %s", k, v)


if __name__ == "__main__":
    main()
