"""Cartilage morphometrics in the standard nomenclature, per plate and per standard subregion.

Names follow Eckstein et al. (Osteoarthritis Cartilage 2006): per cartilage plate

- ``tAB``  total area of subchondral bone (mm^2): the plate's bone interface, covered or denuded;
- ``cAB``  cartilage-covered part of tAB; ``dAB%`` = 100 (tAB - cAB) / tAB, full-thickness loss;
- ``AC``   area of the articular (outer) cartilage surface (mm^2);
- ``VC``   cartilage volume (mm^3);
- ``ThCcAB.Me`` mean thickness over cAB, ``ThCtAB.Me`` mean over tAB with denuded bone counted as 0
  (= ThCcAB.Me x cAB / tAB), ``ThCcAB.Max`` the largest thickness (mm; of the thickness averaged over
  each vertex and its neighbours, so that one ray does not set it).

Everything is measured on the bone meshes of :func:`kneeflow.thickness.measure_knee`, whose vertices
carry the thickness (mm, 0 = no cartilage) and the cartilage label above them. A vertex's area is a third
of its triangles' areas; means are area-weighted. Plates: ``MT``, ``LT`` (tibia), ``P`` (patella) and the
femoral plates from the femoral subregions (labels 11-15): ``TrF`` (anterior / trochlea), ``cMF``,
``cLF`` (central weight-bearing), ``pMF``, ``pLF`` (posterior); ``F`` is all femoral cartilage.

**Denuded bone.** On each bone the vertices without cartilage fall into connected pieces (mesh
edges); the largest piece is the bone outside the joint, every other piece is enclosed by cartilage.
An enclosed piece of at least ``min_denuded_mm2`` is denuded bone of the plate that borders most of it
(full-thickness loss inside the plate counts); a smaller one is a measurement dropout (a ray that met
the cartilage surface other than twice) and counts as covered. A lesion that opens onto the plate's
margin is not enclosed and is not counted: its area is indistinguishable from bone outside the joint.

**Subregions** (Wirth & Eckstein, IEEE TMI 2008), in the knee's own frame: medial = from the lateral to
the medial tibial plate's centroid, superior = the plateau's mean bone normal, anterior = towards the
patella (each orthogonalised), so the same anatomy gives the same subregions in any scan orientation
and on either side. Tibia (MT, LT): the central subregion ``c`` is the ellipse centred at the plate's
area centroid, axes in proportion to the plate's medio-lateral and antero-posterior extent, holding 20 %
of tAB; the rest is split into anterior ``a``, posterior ``p``, internal ``i`` (towards the
intercondylar eminence: lateral on MT, medial on LT) and external ``e`` by the lines from the centroid to
the corners of the plate's bounding rectangle (medio-lateral x antero-posterior). Femur (cMF, cLF): three
bands of equal medio-lateral width, internal (towards the notch), central and external: ``icMF``,
``ccMF``, ``ecMF`` and likewise for cLF.

Volume is counted in voxels (each cartilage voxel goes to the nearest tAB vertex of its own plate; the
label map is the segmentation, so its voxel count is its volume); AC is the area of the cartilage
mesh's triangles that lie more than half the local thickness above the bone and face along the bone
normal (within 60 degrees), i.e. the upper face without the plate's rim.
"""

from __future__ import annotations

__all__ = ["FEMUR_PLATES", "MEASURES", "PLATE_LABELS", "STD_SUBREGIONS", "BoneInterface", "KneeFrame",
           "PlateSubregions", "bone_interface", "footprint", "knee_frame", "measure_plates", "morphometrics",
           "vertex_areas"]

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from kneeflow.labels import CANONICAL, FEMORAL_SUBREGIONS

log = logging.getLogger(__name__)

#: measure -> unit, in the order of the table
MEASURES: dict[str, str] = {
    "VC": "mm3", "tAB": "mm2", "cAB": "mm2", "dAB%": "%", "AC": "mm2",
    "ThCcAB.Me": "mm", "ThCtAB.Me": "mm", "ThCcAB.Max": "mm",
}
FEMUR_PLATES: dict[int, str] = {
    FEMORAL_SUBREGIONS["anterior_femoral_cartilage"]: "TrF",
    FEMORAL_SUBREGIONS["medial_weight_bearing_femoral_cartilage"]: "cMF",
    FEMORAL_SUBREGIONS["lateral_weight_bearing_femoral_cartilage"]: "cLF",
    FEMORAL_SUBREGIONS["medial_posterior_femoral_cartilage"]: "pMF",
    FEMORAL_SUBREGIONS["lateral_posterior_femoral_cartilage"]: "pLF",
}
#: label in the (subregion) label map -> plate
PLATE_LABELS: dict[int, str] = {
    CANONICAL["medial_tibial_cartilage"]: "MT",
    CANONICAL["lateral_tibial_cartilage"]: "LT",
    CANONICAL["patellar_cartilage"]: "P",
    CANONICAL["femoral_cartilage"]: "F",  # femoral cartilage not split into plates
    **FEMUR_PLATES,
}
LABEL_OF_PLATE = {v: k for k, v in PLATE_LABELS.items()}
BONE_OF_PLATE = {"MT": "tibia", "LT": "tibia", "P": "patella", **{p: "femur" for p in ("F", *FEMUR_PLATES.values())}}
CARTILAGE_MESH = {"tibia": ("medial_tibial_cartilage", "lateral_tibial_cartilage"), "patella": ("patellar_cartilage",),
                  "femur": ("femoral_cartilage",)}
#: standard subregion -> integer in ``subregions_std.nii.gz`` and the meshes' ``subregion_std`` array;
#: plates without subregions carry their plate code
STD_SUBREGIONS: dict[str, int] = {
    "cMT": 31, "aMT": 32, "pMT": 33, "iMT": 34, "eMT": 35,
    "cLT": 41, "aLT": 42, "pLT": 43, "iLT": 44, "eLT": 45,
    "ccMF": 51, "icMF": 52, "ecMF": 53,
    "ccLF": 61, "icLF": 62, "ecLF": 63,
    "TrF": 70, "pMF": 71, "pLF": 72, "F": 73,
    "P": 80,
}
_TIBIAL_FRACTION = 0.20


# ------------------------------------------------------------------------------------ mesh helpers


def _triangles(poly) -> np.ndarray:
    from vtk.util import numpy_support as ns

    cells = ns.vtk_to_numpy(poly.GetPolys().GetConnectivityArray()).astype(np.int64)
    offsets = ns.vtk_to_numpy(poly.GetPolys().GetOffsetsArray()).astype(np.int64)
    if len(offsets) and not np.all(np.diff(offsets) == 3):
        raise ValueError("mesh has non-triangular faces")
    return cells.reshape(-1, 3)


def _point_array(poly, name: str) -> np.ndarray:
    from vtk.util import numpy_support as ns

    arr = poly.GetPointData().GetArray(name)
    if arr is None:
        raise KeyError(f"mesh has no point array {name!r}")
    return ns.vtk_to_numpy(arr)


def _tri_areas(pts: np.ndarray, tris: np.ndarray) -> np.ndarray:
    t = pts[tris]
    return 0.5 * np.linalg.norm(np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0]), axis=1)


def vertex_areas(pts: np.ndarray, tris: np.ndarray) -> np.ndarray:
    """A third of the area of every triangle a vertex belongs to (sums to the surface area)."""
    out = np.zeros(len(pts))
    a = _tri_areas(pts, tris) / 3.0
    for k in range(3):
        np.add.at(out, tris[:, k], a)
    return out


def _adjacency(n: int, tris: np.ndarray):
    from scipy.sparse import coo_matrix

    i = np.concatenate([tris[:, 0], tris[:, 1], tris[:, 2]])
    j = np.concatenate([tris[:, 1], tris[:, 2], tris[:, 0]])
    m = coo_matrix((np.ones(len(i), dtype=np.int8), (i, j)), shape=(n, n)).tocsr()
    return (m + m.T).tocsr()


# ----------------------------------------------------------------------------------- bone interface


@dataclass
class BoneInterface:
    """Per vertex of one bone mesh: its plate label (0 = outside the joint), cartilage cover, area."""

    pts: np.ndarray
    normals: np.ndarray
    area: np.ndarray
    thickness: np.ndarray
    plate: np.ndarray      # label of PLATE_LABELS, 0 outside every plate's tAB
    covered: np.ndarray    # in cAB (measured cartilage, or a dropout counted as covered)
    measured: np.ndarray   # in cAB with an articular thickness (> 0): the vertices behind ThCcAB
    denuded: np.ndarray    # in tAB without cartilage
    ring: np.ndarray       # thickness averaged over the vertex and its measured neighbours (for the max)
    found: np.ndarray      # the meshes' own thickness rays (thickness.csv's) found cartilage of a plate
    mesh_thickness: np.ndarray  # their thickness (thickness_mm; the thickness map shows it)


def footprint(labels_img, pts: np.ndarray, normals: np.ndarray, plate_labels, *, depth_mm: float = 1.0,
              step_mm: float = 0.1) -> np.ndarray:
    """The plate label found right above each bone vertex (0 = none): the label map sampled (nearest
    voxel) along the outward normal from the vertex to ``depth_mm`` above it, the most common of
    ``plate_labels`` met. The label map's own cartilage footprint, unlike the thickness rays, which need
    the smoothed cartilage surface twice and so miss the thin margins of a plate."""
    import SimpleITK as sitk

    from kneeflow.mesh import physical_to_index

    arr = sitk.GetArrayViewFromImage(labels_img)
    ts = np.arange(0.0, depth_mm + 1e-9, step_mm)
    q = pts[:, None, :] + ts[None, :, None] * normals[:, None, :]
    ijk = np.rint(physical_to_index(labels_img, q.reshape(-1, 3))).astype(np.int64)
    inside = np.all((ijk >= 0) & (ijk < np.asarray(arr.shape[::-1])), axis=1)
    lab = np.zeros(len(ijk), dtype=np.int64)
    ijk = ijk[inside]
    lab[inside] = np.asarray(arr)[ijk[:, 2], ijk[:, 1], ijk[:, 0]]
    lab = lab.reshape(len(pts), len(ts))
    counts = np.stack([(lab == v).sum(1) for v in plate_labels], axis=1)
    out = np.asarray(plate_labels)[np.argmax(counts, axis=1)]
    out[counts.max(1) == 0] = 0
    return out


def bone_interface(poly, plate_labels, labels_img=None, *, min_denuded_mm2: float = 4.0,
                   footprint_mm: float | None = None) -> BoneInterface:
    """Find each plate's tAB on a bone mesh carrying ``thickness_mm`` and ``region`` point arrays.

    cAB is where the thickness rays measured cartilage, plus (with ``labels_img``) the label map's
    cartilage footprint (:func:`footprint`, ``footprint_mm`` deep; default 0.6 x the largest voxel
    spacing, which put tAB within 2 % of the phantoms' implicit-surface truth), plus dropouts; tAB adds
    the denuded pieces. The thickness behind ThCcAB is ``articular_thickness_mm`` where the mesh has it
    (see :func:`kneeflow.thickness.measure_knee`; else ``thickness_mm``), over the covered vertices
    where it is > 0 in the vertex's own plate.
    """
    from scipy.sparse.csgraph import connected_components

    from kneeflow import mesh as M

    pts = M.points(poly)
    normals = M.point_normals(poly)
    tris = _triangles(poly)
    area = vertex_areas(pts, tris)
    thick = _point_array(poly, "thickness_mm").astype(float)
    region = _point_array(poly, "region").astype(np.int64)
    found = (thick > 0) & np.isin(region, list(plate_labels))
    plate = np.where(found, region, 0)
    covered = found.copy()
    if labels_img is not None and footprint_mm is None:
        footprint_mm = 0.6 * max(labels_img.GetSpacing())
    if labels_img is not None and footprint_mm > 0:
        foot = footprint(labels_img, pts, normals, list(plate_labels), depth_mm=footprint_mm)
        extra = (foot > 0) & ~found
        plate[extra] = foot[extra]
        covered |= extra
    denuded = np.zeros(len(pts), dtype=bool)
    adj = _adjacency(len(pts), tris)
    free = np.nonzero(~covered)[0]
    if covered.any() and free.size:
        sub = adj[free][:, free]
        n_comp, comp = connected_components(sub, directed=False)
        comp_area = np.bincount(comp, weights=area[free], minlength=n_comp)
        outside = int(np.argmax(comp_area))
        for c in range(n_comp):
            if c == outside:
                continue
            members = free[comp == c]
            # the plate bordering the piece: most common plate among its measured neighbours
            nb = np.unique(adj[members].indices)
            nb = nb[covered[nb]]
            if nb.size == 0:
                continue
            labels_nb, counts = np.unique(plate[nb], return_counts=True)
            owner = int(labels_nb[np.argmax(counts)])
            plate[members] = owner
            if comp_area[c] >= min_denuded_mm2:
                denuded[members] = True
            else:
                covered[members] = True
    mesh_thick = np.where(found, thick, 0.0)
    if poly.GetPointData().HasArray("articular_thickness_mm"):
        thick = _point_array(poly, "articular_thickness_mm").astype(float)
        art_region = _point_array(poly, "articular_region").astype(np.int64)
        measured = covered & (thick > 0) & np.isin(art_region, list(plate_labels))
    else:
        measured = found
    thick = np.where(measured, thick, 0.0)
    # the largest thickness of a plate from single vertices swings with the mesh (10 % between a knee
    # and its mirror image); averaged over each vertex's ring of measured neighbours, < 1 %
    w = adj @ measured.astype(float) + measured
    ring = np.where(measured, (adj @ (thick * measured) + thick * measured) / np.maximum(w, 1), 0.0)
    return BoneInterface(pts, normals, area, thick, plate, covered, measured, denuded, ring, found, mesh_thick)


# ------------------------------------------------------------------------------------- knee frame


@dataclass
class KneeFrame:
    """Unit vectors (LPS) of the knee's medial, anterior and superior directions."""

    medial: np.ndarray
    anterior: np.ndarray
    superior: np.ndarray
    source: str


def _unit(v):
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v


def knee_frame(voxels: dict[str, np.ndarray], bones: dict[str, BoneInterface], side: str | None = None) -> KneeFrame:
    """The knee's axes from its anatomy: medial from the lateral to the medial tibial plate's voxel
    centroid (femoral weight-bearing plates as fallback), superior the tibial plateau's mean bone normal,
    anterior towards the patellar cartilage (trochlea as fallback), each orthogonalised. ``voxels`` maps a
    plate to its cartilage voxel centres (LPS mm). Only where the anatomy is missing, ``side`` and the
    scanner's LPS axes stand in (and say so)."""
    def centre(*plates):
        pts = [voxels[p] for p in plates if p in voxels and len(voxels[p])]
        return np.concatenate(pts).mean(0) if len(pts) == len(plates) else None

    sources = []
    mt, lt = centre("MT"), centre("LT")
    medial = None
    if mt is not None and lt is not None:
        medial, how = mt - lt, "medial: tibial plates"
    elif centre("cMF") is not None and centre("cLF") is not None:
        medial, how = centre("cMF") - centre("cLF"), "medial: femoral weight-bearing plates"
    elif side in ("right", "left"):
        medial, how = np.array([1.0 if side == "right" else -1.0, 0.0, 0.0]), f"medial: scanner x ({side} knee)"
    if medial is None:
        raise ValueError("cannot tell medial from lateral: neither both tibial plates nor both femoral "
                         "weight-bearing plates are in the label map, and no side was given")
    sources.append(how)
    tib = bones.get("tibia")
    lab = LABEL_OF_PLATE
    plateau = np.isin(tib.plate, [lab["MT"], lab["LT"]]) if tib is not None else None
    if plateau is not None and plateau.any():
        superior = _unit((tib.normals * (tib.area * plateau)[:, None]).sum(0))
        sources.append("superior: tibial plateau normal")
    else:
        superior = np.array([0.0, 0.0, 1.0])
        sources.append("superior: scanner +z")
    medial = _unit(medial - superior * (medial @ superior))
    joint = centre("MT", "LT") if mt is not None and lt is not None else None
    if centre("P") is not None and joint is not None:
        anterior, how = centre("P") - joint, "anterior: patella"
    elif centre("TrF") is not None and centre("cMF", "cLF") is not None:
        anterior, how = centre("TrF") - centre("cMF", "cLF"), "anterior: trochlea"
    else:
        # LPS: anterior is -y; as a cross product it follows the handedness the side implies
        anterior = np.cross(medial, superior) if side == "right" else np.cross(superior, medial) if side == "left" else None
        how = f"anterior: medial x superior ({side} knee)"
        if anterior is None:
            raise ValueError("cannot tell anterior from posterior: no patellar cartilage, no trochlear plate "
                             "and no side given")
    sources.append(how)
    anterior = anterior - superior * (anterior @ superior) - medial * (anterior @ medial)
    return KneeFrame(medial, _unit(anterior), superior, "; ".join(sources))


# ------------------------------------------------------------------------------------- subregions


class PlateSubregions:
    """The standard subregions of one plate as a function of position.

    The geometry (centroid, bounding rectangle in the knee frame) comes from the plate's cartilage
    voxels, so a knee and its mirror image get mirror-image subregions; the central tibial ellipse is
    sized on tAB (vertex areas) to hold 20 % of it.
    """

    def __init__(self, plate: str, frame: KneeFrame, voxels: np.ndarray, vertices=None, area=None):
        self.plate, self.frame = plate, frame
        x, y = self._xy(voxels)
        self.cx, self.cy = float(x.mean()), float(y.mean())
        self.box = (float(x.min()), float(x.max()), float(y.min()), float(y.max()))
        self.r_central = np.inf
        if plate in ("MT", "LT") and vertices is not None and len(vertices):
            r = self._radius(*self._xy(vertices))
            order = np.argsort(r, kind="stable")
            cum = np.cumsum(area[order])
            k = min(int(np.searchsorted(cum, _TIBIAL_FRACTION * cum[-1])), len(order) - 1)
            self.r_central = float(r[order[k]])

    def _xy(self, pts):
        return pts @ self.frame.medial, pts @ self.frame.anterior

    def _radius(self, x, y):
        xmin, xmax, ymin, ymax = self.box
        return np.hypot((x - self.cx) / max((xmax - xmin) / 2, 1e-6), (y - self.cy) / max((ymax - ymin) / 2, 1e-6))

    def codes(self, pts: np.ndarray) -> np.ndarray:
        """Codes of :data:`STD_SUBREGIONS` at points (N, 3) LPS mm."""
        p = self.plate
        if p not in ("MT", "LT", "cMF", "cLF"):
            return np.full(len(pts), STD_SUBREGIONS[p], dtype=np.int32)
        x, y = self._xy(pts)
        xmin, xmax, ymin, ymax = self.box
        if p in ("cMF", "cLF"):
            band = np.clip(np.floor((x - xmin) / max(xmax - xmin, 1e-6) * 3.0), 0, 2).astype(int)  # 0 lateral-most
            names = np.array([STD_SUBREGIONS[n + p] for n in ({"cMF": "ice", "cLF": "eci"}[p])])
            return names[band].astype(np.int32)
        dx, dy = x - self.cx, y - self.cy
        th = np.arctan2(dy, dx)
        a_pp = np.arctan2(ymax - self.cy, xmax - self.cx)  # corner (+medial, +anterior)
        a_mp = np.arctan2(ymax - self.cy, xmin - self.cx)  # (-medial, +anterior)
        a_mm = np.arctan2(ymin - self.cy, xmin - self.cx)  # (-medial, -anterior)
        a_pm = np.arctan2(ymin - self.cy, xmax - self.cx)  # (+medial, -anterior)
        anterior = (th >= a_pp) & (th < a_mp)
        posterior = (th >= a_mm) & (th < a_pm)
        lateral_side = (th >= a_mp) | (th < a_mm)
        medial_side = ~(anterior | posterior | lateral_side)
        internal, external = (lateral_side, medial_side) if p == "MT" else (medial_side, lateral_side)
        out = np.zeros(len(pts), dtype=np.int32)
        out[anterior] = STD_SUBREGIONS["a" + p]
        out[posterior] = STD_SUBREGIONS["p" + p]
        out[internal] = STD_SUBREGIONS["i" + p]
        out[external] = STD_SUBREGIONS["e" + p]
        out[self._radius(x, y) <= self.r_central] = STD_SUBREGIONS["c" + p]
        return out


# ------------------------------------------------------------------------------------- measures


def _rows(sample, plate, subregion, *, area, covered, measured, thick, ring, vc, n_vox, ac, n_tri):
    t_ab = float(area.sum())
    c_ab = float(area[covered].sum())
    am, tm = area[measured], thick[measured]
    me = float((am * tm).sum() / am.sum()) if am.sum() > 0 else np.nan
    vals = {
        "VC": (vc, n_vox),
        "tAB": (t_ab, len(area)),
        "cAB": (c_ab, int(covered.sum())),
        "dAB%": (100.0 * (t_ab - c_ab) / t_ab if t_ab > 0 else np.nan, len(area)),
        "AC": (ac, n_tri),
        "ThCcAB.Me": (me, int(measured.sum())),
        "ThCtAB.Me": (me * c_ab / t_ab if t_ab > 0 else np.nan, len(area)),
        "ThCcAB.Max": (float(ring[measured].max()) if tm.size else np.nan, int(measured.sum())),
    }
    return [{"sample": sample, "plate": plate, "subregion": subregion, "measure": m, "value": v, "unit": MEASURES[m],
             "n": int(n)} for m, (v, n) in vals.items()]


def measure_plates(labels_img, meshes: dict, sample: str, *, min_denuded_mm2: float = 4.0,
                   side: str | None = None):
    """Morphometrics of a knee from :func:`kneeflow.thickness.measure_knee`'s meshes.

    Returns ``(table, std_labels, thickness_map)``: the tidy table (sample, plate, subregion, measure,
    value, unit, n), the cartilage voxels labelled with :data:`STD_SUBREGIONS` and the thickness map
    (float32 mm on the label map's grid, each cartilage voxel holding the thickness.csv thickness of
    the nearest bone vertex of its plate where it was measured). Bone meshes gain point arrays
    ``plate`` (label of the tAB the vertex belongs to), ``denuded`` and ``subregion_std``. ``side``
    is used only where the label map lacks the anatomy that defines the knee's axes (see
    :func:`knee_frame`).
    """
    import SimpleITK as sitk
    from scipy.spatial import cKDTree

    from kneeflow import mesh as M

    arr = sitk.GetArrayViewFromImage(labels_img)
    present = set(np.unique(arr).tolist())
    a_mat, b_vec = M.index_to_physical(labels_img)
    vox_idx, vox_xyz = {}, {}
    for lab, name in PLATE_LABELS.items():
        if lab in present:
            kji = np.argwhere(arr == lab)
            vox_idx[name] = kji
            vox_xyz[name] = kji[:, ::-1].astype(float) @ a_mat.T + b_vec
    bones: dict[str, BoneInterface] = {}
    for bone in ("femur", "tibia", "patella"):
        if bone in meshes:
            labs = [k for k, v in PLATE_LABELS.items() if BONE_OF_PLATE[v] == bone]
            bones[bone] = bone_interface(meshes[bone], labs, labels_img, min_denuded_mm2=min_denuded_mm2)
    frame = knee_frame(vox_xyz, bones, side)
    log.info("%s: knee frame from %s", sample, frame.source)

    subs: dict[str, PlateSubregions] = {}
    codes = {}
    for bone, bi in bones.items():
        codes[bone] = np.zeros(len(bi.pts), dtype=np.int32)
        for lab in np.unique(bi.plate):
            name = PLATE_LABELS.get(int(lab))
            if name is None or name not in vox_xyz:
                continue
            sel = bi.plate == lab
            subs[name] = PlateSubregions(name, frame, vox_xyz[name], bi.pts[sel], bi.area[sel])
            codes[bone][sel] = subs[name].codes(bi.pts[sel])
        M.add_point_array(meshes[bone], "plate", bi.plate.astype(np.int32))
        M.add_point_array(meshes[bone], "denuded", bi.denuded.astype(np.uint8))
        M.add_point_array(meshes[bone], "subregion_std", codes[bone])

    # cartilage voxels: subregion by position; thickness of the nearest vertex of the plate where the
    # meshes' own rays (thickness.csv's) measured it
    std = np.zeros(arr.shape, dtype=np.uint8)
    tmap = np.zeros(arr.shape, dtype=np.float32)
    vox_code: dict[str, np.ndarray] = {}
    for name, xyz in vox_xyz.items():
        kji = tuple(vox_idx[name].T)
        plate_sub = subs.get(name) or PlateSubregions(name, frame, xyz)
        vox_code[name] = plate_sub.codes(xyz)
        std[kji] = vox_code[name].astype(np.uint8)
        bi = bones.get(BONE_OF_PLATE[name])
        lab = LABEL_OF_PLATE[name]
        meas = np.nonzero(bi.found & (bi.plate == lab))[0] if bi is not None else np.array([], int)
        if bi is not None and meas.size == 0 and name == "F":  # leftovers of the split: any femoral plate
            meas = np.nonzero(bi.found)[0]
        if meas.size == 0:
            log.warning("%s: no thickness measured under %s; its %d voxels are 0 in the thickness map",
                        sample, name, len(xyz))
            continue
        _, j = cKDTree(bi.pts[meas]).query(xyz)
        tmap[kji] = bi.mesh_thickness[meas[j]]

    # articular surface: cartilage mesh triangles more than half the local thickness above the bone
    tri_code: dict[str, list] = {}
    for bone, bi in bones.items():
        meas = np.nonzero(bi.measured)[0]
        if meas.size == 0:
            continue
        tree = cKDTree(bi.pts[meas])
        for cm in CARTILAGE_MESH[bone]:
            if cm not in meshes:
                continue
            cp = M.points(meshes[cm])
            ct = _triangles(meshes[cm])
            cen = cp[ct].mean(1)
            _, j = tree.query(cen)
            v = meas[j]
            h = ((cen - bi.pts[v]) * bi.normals[v]).sum(1)
            t = cp[ct]
            n_tri = np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0])
            facing = np.abs((n_tri * bi.normals[v]).sum(1)) > 0.5 * np.linalg.norm(n_tri, axis=1)
            outer = (h > 0.5 * bi.thickness[v]) & facing  # the upper face, not the plate's rim
            a = _tri_areas(cp, ct)
            for lab in np.unique(bi.plate[v]):
                name = PLATE_LABELS.get(int(lab))
                if name is None or name not in subs:
                    continue
                sel = outer & (bi.plate[v] == lab)
                tri_code.setdefault(name, []).append((subs[name].codes(cen[sel]), a[sel]))

    rows = []
    femoral = ["TrF", "cMF", "cLF", "pMF", "pLF", "F"]
    empty = (np.zeros(0, np.int32), np.zeros(0))
    for name in ("MT", "LT", "cMF", "cLF", "TrF", "pMF", "pLF", "P", "F"):
        bone = BONE_OF_PLATE[name]
        bi = bones.get(bone)
        if bi is None:
            continue
        group = femoral if name == "F" else [name]
        labs = [k for k, v in PLATE_LABELS.items() if v in group]
        sel_v = np.isin(bi.plate, labs)
        if not sel_v.any():
            continue
        vc_codes = np.concatenate([vox_code.get(g, empty[0]) for g in group])
        tris = [t for g in group for t in tri_code.get(g, [empty])]
        tri_c = np.concatenate([t[0] for t in tris])
        tri_a = np.concatenate([t[1] for t in tris])
        regions = [("all", None)]
        if name in ("MT", "LT", "cMF", "cLF"):
            regions += [(k, v) for k, v in STD_SUBREGIONS.items() if k.endswith(name)]
        for sub, code in regions:
            sv = sel_v if code is None else sel_v & (codes[bone] == code)
            sx = np.ones(len(vc_codes), bool) if code is None else vc_codes == code
            st = np.ones(len(tri_c), bool) if code is None else tri_c == code
            rows += _rows(sample, name, sub, area=bi.area[sv], covered=bi.covered[sv], measured=bi.measured[sv],
                          thick=bi.thickness[sv], ring=bi.ring[sv], vc=float(sx.sum()) * float(np.prod(labels_img.GetSpacing())),
                          n_vox=int(sx.sum()), ac=float(tri_a[st].sum()), n_tri=int(st.sum()))
    table = pd.DataFrame(rows, columns=["sample", "plate", "subregion", "measure", "value", "unit", "n"])

    def image(a):
        img = sitk.GetImageFromArray(a)
        img.CopyInformation(labels_img)
        return img

    return table, image(std), image(tmap)


def morphometrics(labels_img, sample: str = "", *, min_denuded_mm2: float = 4.0, side: str | None = None,
                  plates: bool = True, articular_smooth_var_mm2: float = 0.0625, articular_min_facing: float = 0.5,
                  **mesh_options):
    """Meshes, thickness and morphometrics of a label map in one call (see :func:`measure_plates`),
    measured in the knee's canonical frame (:func:`kneeflow.orientation.canonical_knee`: a left knee
    as its mirror image, any scan orientation on one array), so a knee and its mirror image give the
    same numbers; meshes and images come back in the label map's world and grid.

    Returns ``(meshes, thickness_table, morphometrics_table, std_labels, thickness_map)`` (the last
    three None with ``plates=False``). The thickness table and the thickness map are pymskt's
    convention (the meshes' smoothing); ThCcAB, ThCtAB and ThCcAB.Max use the articular thickness
    (``articular_smooth_var_mm2``, ``articular_min_facing``: see :func:`kneeflow.thickness.measure_knee`).
    """
    from kneeflow.orientation import canonical_knee
    from kneeflow.thickness import measure_knee

    frame = canonical_knee(labels_img, side, source=mesh_options.get("source", ""))
    if plates:
        mesh_options = {**mesh_options, "articular_smooth_var_mm2": articular_smooth_var_mm2,
                        "articular_min_facing": articular_min_facing}
    meshes, thick = measure_knee(frame.image, sample, **mesh_options)
    table = std = tmap = None
    if plates:
        table, std, tmap = measure_plates(frame.image, meshes, sample, min_denuded_mm2=min_denuded_mm2,
                                          side=frame.canonical_side)
        std, tmap = frame.to_original(std), frame.to_original(tmap)
    from kneeflow.mesh import transform

    meshes = {name: transform(poly, frame.matrix, frame.offset) for name, poly in meshes.items()}
    return meshes, thick, table, std, tmap
