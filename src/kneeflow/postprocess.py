"""Label maps after segmentation: clean-up (scipy.ndimage; 26-connectivity) and medial/lateral
assignment from the anatomy.

Modes (a model entry's ``clean``):

* ``largest``: the public knee pipeline's: every label keeps its largest connected component, and
  holes in the bones are filled. Right for maps where each structure is one piece; a cartilage plate
  split by a full-thickness lesion loses its smaller part.
* ``attached`` (kneeflow's default for its own models): bone voxels cut off from their label's
  largest piece join the bone whose largest piece they touch most, or go
  (:func:`assign_bone_fragments`); the bones' holes are filled in 3D and then in the slices along
  each array axis (:func:`fill_holes` with
  ``slices=True``: a shaft cut by the scan's edge is open in 3D, so marrow the network missed there
  is no 3D hole, but it is enclosed by the cortex in the slices across the shaft); every other
  label keeps each component that touches its anchor (cartilage: its bone; menisci: the tibia or
  the tibial cartilage) within ``margin`` voxels, so islands far from their structure go and a plate
  in pieces stays. A label none of whose pieces touch keeps its
  largest.
* ``bones``: the bones' largest components only (nothing else touched).
"""

from __future__ import annotations

__all__ = ["CLEAN_MODES", "MEDIAL_LATERAL", "anchors", "assign_bone_fragments", "assign_medial_lateral",
           "clean_labels", "fill_holes", "keep_attached", "keep_largest_components", "refine_cartilage_edges"]

import logging

import numpy as np

from kneeflow.labels import BONE_CARTILAGE, BONES, CANONICAL

log = logging.getLogger(__name__)

CLEAN_MODES = ("largest", "attached", "bones")
_STRUCTURE = np.ones((3, 3, 3), dtype=bool)


def _box(mask: np.ndarray, margin: int = 0):
    from scipy import ndimage

    box = ndimage.find_objects(mask.astype(np.uint8))[0]
    return tuple(slice(max(s.start - margin, 0), min(s.stop + margin, n)) for s, n in zip(box, mask.shape))


def keep_largest_components(lab: np.ndarray, labels) -> np.ndarray:
    """Keep only the largest 26-connected component of each label in ``labels`` (others set to 0;
    components tied for the largest are all kept, so the result does not depend on the axis order)."""
    out = lab.copy()
    for c in labels:
        m = out == c
        if not m.any():
            continue
        box, largest = _largest_pieces(m)
        out[box][m[box] & ~largest] = 0
    return out


def _largest_pieces(m: np.ndarray):
    """(bounding box of ``m``, mask of its largest 26-connected components within the box). Components
    tied for the largest are all kept: which one comes first depends on the array's axis order, and
    the result must not depend on how the scan is stored."""
    from scipy import ndimage

    box = _box(m)  # label only inside the bounding box: a plate fills a small part of the scan
    cc, _ = ndimage.label(m[box], structure=_STRUCTURE)
    sizes = np.bincount(cc.ravel())
    sizes[0] = 0
    return box, (sizes == sizes.max())[cc] & (cc > 0)


def assign_bone_fragments(lab: np.ndarray, bones=None) -> np.ndarray:
    """Bone voxels that are not part of their label's largest piece (its *core*) go to the bone whose
    core they touch most, as one piece with the bone voxels they are connected to; pieces that touch
    no core, or that are larger than the core they touch, become background.

    A network that sees the knee in small patches tells bone from not-bone well but which bone less
    well: the patella's rim and the distal tibial shaft, away from the joint that tells them apart,
    come out partly as femur. Largest-component clean-up alone turns those voxels into background
    (a patella one voxel thin all round); here they join the bone they are attached to. Counts of
    contacts do not depend on the array's axis order; ties go to the first label of ``bones``.
    """
    from scipy import ndimage

    bones = [CANONICAL[b] for b in BONES] if bones is None else list(bones)
    out = lab.copy()
    core = np.zeros(lab.shape, np.uint8)  # index into `bones` + 1
    core_size = np.zeros(len(bones) + 1, np.int64)
    for k, c in enumerate(bones, 1):
        m = lab == c
        if not m.any():
            continue
        box, largest = _largest_pieces(m)
        core[box][largest] = k
        core_size[k] = int(largest.sum())
    loose = np.isin(lab, bones) & (core == 0)
    if not loose.any():
        return out
    pieces, n = ndimage.label(loose, structure=_STRUCTURE)
    for i, sl in enumerate(ndimage.find_objects(pieces), 1):
        sl = tuple(slice(max(s.start - 1, 0), min(s.stop + 1, size)) for s, size in zip(sl, lab.shape))
        piece = pieces[sl] == i
        ring = ndimage.binary_dilation(piece, structure=_STRUCTURE) & ~piece
        touch = np.bincount(core[sl][ring], minlength=len(bones) + 1)
        touch[0] = 0
        k = int(np.argmax(touch))
        sub = out[sl]
        sub[piece] = bones[k - 1] if touch[k] > 0 and piece.sum() < core_size[k] else 0
    return out


def fill_holes(lab: np.ndarray, labels, *, slices: bool = False, max_rounds: int = 4) -> np.ndarray:
    """Fill the background holes enclosed by each label in ``labels`` (voxels of other labels stay).

    With ``slices`` also the holes enclosed within 2D slices along each of the three array axes: each
    round fills, from the same mask, the slice holes along all three axes at once (so the result does
    not depend on the order of the axes), until a round adds nothing (at most ``max_rounds``).
    """
    from scipy import ndimage

    out = lab.copy()
    for c in labels:
        m = out == c
        if not m.any():
            continue
        box = _box(m)
        sub = out[box]
        sub[ndimage.binary_fill_holes(m[box]) & (sub == 0)] = c
        for _ in range(max_rounds if slices else 0):
            mask = sub == c
            add = np.zeros_like(mask)
            for ax in range(3):
                f = np.stack([ndimage.binary_fill_holes(s) for s in np.moveaxis(mask, ax, 0)], axis=0)
                add |= np.moveaxis(f, 0, ax)
            add &= sub == 0
            if not add.any():
                break
            sub[add] = c
    return out


def anchors() -> dict[int, tuple[int, ...]]:
    """{label: the labels it must touch}: each cartilage its bone, each meniscus the tibia or its cartilage."""
    out = {CANONICAL[c]: (CANONICAL[b],) for b, cs in BONE_CARTILAGE.items() for c in cs}
    tibial = (CANONICAL["tibia"], CANONICAL["medial_tibial_cartilage"], CANONICAL["lateral_tibial_cartilage"])
    for m in ("medial_meniscus", "lateral_meniscus"):
        out[CANONICAL[m]] = tibial
    return out


def keep_attached(lab: np.ndarray, label_anchors: dict[int, tuple[int, ...]], margin: int = 2) -> np.ndarray:
    """Keep the components of each label that come within ``margin`` voxels of one of its anchors."""
    from scipy import ndimage

    out = lab.copy()
    for c, anchor in label_anchors.items():
        m = out == c
        if not m.any():
            continue
        box = _box(m, margin)
        cc, n = ndimage.label(m[box], structure=_STRUCTURE)
        if n <= 1:
            continue
        near = ndimage.binary_dilation(np.isin(out[box], anchor), structure=_STRUCTURE, iterations=margin)
        keep = np.unique(cc[near & (cc > 0)])
        if keep.size == 0:  # nothing touches: keep the largest (all tied) rather than lose the structure
            sizes = np.bincount(cc.ravel())
            sizes[0] = 0
            keep = np.flatnonzero(sizes == sizes.max())
        sub = out[box]
        sub[m[box] & ~np.isin(cc, keep)] = 0
    return out


def clean_labels(lab: np.ndarray, mode: str = "largest", labels=None) -> np.ndarray:
    """Clean a canonical label map (see the module's modes); ``labels``: the values ``largest`` treats
    (default: 1-9)."""
    bones = [CANONICAL[b] for b in BONES]
    if mode == "bones":
        return keep_largest_components(lab, bones)
    if mode == "largest":
        return fill_holes(keep_largest_components(lab, labels if labels is not None else range(1, 10)), bones)
    if mode == "attached":
        # the bones first: their clean shapes are the anchors of the rest. assign_bone_fragments
        # leaves each bone as its largest piece(s) (every other piece joined a touching core or went)
        return keep_attached(fill_holes(assign_bone_fragments(lab, bones), bones, slices=True), anchors())
    raise ValueError(f"unknown clean-up {mode!r}; one of {CLEAN_MODES}")


def refine_cartilage_edges(image: np.ndarray, lab: np.ndarray, spacing, *, radius_mm: float = 3.0,
                           iterations: int = 2, min_contrast: float = 4.0) -> tuple[np.ndarray, dict]:
    """Move each cartilage plate's boundary against background to the image's edge (a model entry's
    ``refine_edges``).

    A network's cartilage-fluid boundary can sit a fraction of a voxel to a voxel off the intensity
    edge (measured on the demo: the lateral tibial articular surface 0.2-0.7 mm inside it where fluid
    is thin, benchmarks/surface_shift.py), which is most of a plate's thickness error. Here each voxel
    on either side of a cartilage/background boundary is given to the class whose local mean
    intensity it is closer to: cartilage (the plates' interior), bright background (fluid) or dark
    background (fat, soft tissue), each a Gaussian-weighted mean over ``radius_mm`` of the voxels
    that are clearly that class (background not touching cartilage). Background voxels touching a
    plate that look like cartilage join it; plate voxels touching background that look like
    background leave it; ``iterations`` such passes move a boundary by at most that many voxels. Only
    cartilage/background boundaries move (bone, menisci and the other labels are never touched), and
    only where the background class a voxel is compared with differs from cartilage by
    ``min_contrast`` times the noise (the robust spread of the cartilage interior about its local
    mean): where the image has no edge to follow, the network's boundary stays. ``image``, ``lab``: (z, y, x) arrays on one grid; ``spacing``:
    (x, y, z) mm as SimpleITK gives it. Returns the new map and counts (grown, shrunk, noise).
    """
    from scipy import ndimage

    img = np.asarray(image, np.float32)
    if img.shape != lab.shape:
        raise ValueError(f"refine_cartilage_edges: image {img.shape} and labels {lab.shape} differ in shape")
    plates = [CANONICAL[c] for c in ("patellar_cartilage", "femoral_cartilage", "medial_tibial_cartilage",
                                     "lateral_tibial_cartilage")]
    sigma = [radius_mm / float(s) for s in tuple(spacing)[::-1]]
    out = lab.copy()
    stats = {"grown": 0, "shrunk": 0, "noise": float("nan")}

    def local_mean(mask):
        w = ndimage.gaussian_filter(mask.astype(np.float32), sigma)
        m = ndimage.gaussian_filter(np.where(mask, img, 0).astype(np.float32), sigma)
        return m / np.maximum(w, 1e-6), w

    for _ in range(iterations):
        cart = np.isin(out, plates)
        bg = out == 0
        inner = ndimage.binary_erosion(cart)
        if inner.sum() < 50:
            break
        m_cart, w_cart = local_mean(inner)
        dev = img[inner] - m_cart[inner]
        noise = float(1.4826 * np.median(np.abs(dev - np.median(dev))))  # robust: a mislabelled voxel is no noise
        stats["noise"] = noise
        clear_bg = bg & ~ndimage.binary_dilation(cart)
        # the nearest background class present here (by local mean), and whether it has an edge to cartilage
        d_bg = np.full(img.shape, np.inf, np.float32)
        edge = np.zeros(img.shape, bool)
        for side in (img > m_cart, img <= m_cart):
            m_bg, w_bg = local_mean(clear_bg & side)
            d = np.where((w_bg > 0.02) & (w_cart > 0.02), np.abs(img - m_bg), np.inf)
            nearer = d < d_bg
            edge = np.where(nearer, np.abs(m_bg - m_cart) > min_contrast * noise, edge)
            d_bg = np.minimum(d_bg, d)
        like_cart = np.abs(img - m_cart) < d_bg
        grown = shrunk = 0
        for c in plates:
            plate = out == c
            if not plate.any():
                continue
            grow = bg & (out == 0) & edge & like_cart & ndimage.binary_dilation(plate)
            shrink = plate & edge & ~like_cart & ndimage.binary_dilation(bg)
            out[grow] = c
            out[shrink] = 0
            grown, shrunk = grown + int(grow.sum()), shrunk + int(shrink.sum())
        stats["grown"] += grown
        stats["shrunk"] += shrunk
        if not grown and not shrunk:
            break
    return out, stats


#: (medial, lateral) label pairs that :func:`assign_medial_lateral` reassigns
MEDIAL_LATERAL = ((CANONICAL["medial_tibial_cartilage"], CANONICAL["lateral_tibial_cartilage"]),
                  (CANONICAL["medial_meniscus"], CANONICAL["lateral_meniscus"]))


def assign_medial_lateral(lab: np.ndarray, image, side: str, slab_mm: float = 20.0) -> np.ndarray:
    """Medial vs lateral tibial cartilage and menisci from anatomy instead of the network's guess.

    The split is the patient left-right position (LPS x) of the tibial plateau's centre: the mean x of
    the tibia's top ``slab_mm``. For a right knee medial is towards the patient's left (+x), for a
    left knee towards the right. A network trained with left-right flips sees both knees as one and
    can only guess medial from lateral in a patch; the union of each pair it segments well.
    ``lab`` is a (z, y, x) array on ``image``'s grid; returns a new array.
    """
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right' to assign medial/lateral, got {side!r}")
    tibia = np.nonzero(lab == CANONICAL["tibia"])
    if not len(tibia[0]):
        log.warning("no tibia in the prediction: medial/lateral labels left as predicted")
        return lab
    d = np.asarray(image.GetDirection(), float).reshape(3, 3) * np.asarray(image.GetSpacing(), float)
    org = np.asarray(image.GetOrigin(), float)

    def phys(idx, axis):  # LPS coordinate ``axis`` of array indices (z, y, x)
        return org[axis] + d[axis, 0] * idx[2] + d[axis, 1] * idx[1] + d[axis, 2] * idx[0]

    sup = phys(tibia, 2)
    top = sup >= sup.max() - slab_mm
    mid = float(phys(tuple(i[top] for i in tibia), 0).mean())
    out = lab.copy()
    for med, lat in MEDIAL_LATERAL:
        idx = np.nonzero((lab == med) | (lab == lat))
        if not len(idx[0]):
            continue
        x = phys(idx, 0)
        medial = x > mid if side == "right" else x < mid
        out[idx] = np.where(medial, med, lat).astype(lab.dtype)
    return out
