"""Cartilage edge refinement (kneeflow.postprocess.refine_cartilage_edges) on a plate whose image is
known: the boundary a network put off the edge moves back to it; bones and edgeless images stay."""

import numpy as np
import pytest
from scipy import ndimage

from kneeflow.labels import CANONICAL
from kneeflow.postprocess import refine_cartilage_edges

FEMUR, FC = CANONICAL["femur"], CANONICAL["femoral_cartilage"]
LEVEL = {"bone": 420.0, "cartilage": 780.0, "fluid": 1000.0, "fat": 280.0}


def plate(fluid=LEVEL["fluid"], seed=0):
    """(z, y, x) 48^3 at 0.7 mm: bone below a tilted cartilage plate ~5 voxels thick; fluid above it on
    one half (y < 24), fat on the other; the image blurred (~0.3 mm) with noise sigma 20."""
    z, y, x = np.mgrid[:48, :48, :48].astype(float)
    bone_top = 14 + 0.15 * x
    lab = np.zeros((48, 48, 48), np.uint8)
    lab[z < bone_top] = FEMUR
    lab[(z >= bone_top) & (z < bone_top + 5)] = FC
    img = np.where(lab == FEMUR, LEVEL["bone"], LEVEL["cartilage"])
    img = np.where(lab == 0, np.where(y < 24, fluid, LEVEL["fat"]), img)
    img = ndimage.gaussian_filter(img, 0.45) + np.random.default_rng(seed).normal(0, 20, lab.shape)
    return img.astype(np.float32), lab


def dice(a, b):
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def off_edge(lab):
    """A network's map: the plate's top voxel missing where x < 24, one voxel too many elsewhere."""
    out = lab.copy()
    c = lab == FC
    top = c & ~np.roll(c, -1, axis=0)
    above = np.roll(top, 1, axis=0) & (lab == 0)
    x = np.arange(lab.shape[2])[None, None, :]
    out[top & (x < 24)] = 0
    out[above & (x >= 24)] = FC
    return out


def test_the_boundary_moves_back_to_the_edge_against_fluid_and_fat():
    img, truth = plate()
    net = off_edge(truth)
    assert dice(net == FC, truth == FC) < 0.91  # one voxel of five off everywhere
    got, stats = refine_cartilage_edges(img, net, (0.7, 0.7, 0.7))
    assert stats["grown"] > 0 and stats["shrunk"] > 0
    assert 15 < stats["noise"] < 25  # the robust spread of the plate's interior: the noise (20)
    for half in (slice(0, 24), slice(24, 48)):  # fluid above (y < 24), fat above (y >= 24)
        assert dice(got[:, half] == FC, truth[:, half] == FC) > 0.99
    # the bone is never touched
    assert np.array_equal(got == FEMUR, net == FEMUR)


def test_no_edge_no_change():
    # background as bright as cartilage: nothing to follow, the network's boundary stays
    img, truth = plate(fluid=LEVEL["cartilage"])
    img = np.where((truth == 0) & (np.arange(48)[None, :, None] >= 24), LEVEL["cartilage"], img).astype(np.float32)
    net = off_edge(truth)
    got, stats = refine_cartilage_edges(img, net, (0.7, 0.7, 0.7))
    assert stats["grown"] == 0 and stats["shrunk"] == 0
    assert np.array_equal(got, net)


def test_shapes_must_agree():
    img, truth = plate()
    with pytest.raises(ValueError, match="differ in shape"):
        refine_cartilage_edges(img[1:], truth, (0.7, 0.7, 0.7))
