"""Similarity alignment of a knee's surface to a shape model's reference (mirror left knees, centre,
scale, VTK's ICP), with checks that refuse a mesh in the wrong pose or of the wrong bone."""

from __future__ import annotations

__all__ = ["Alignment", "align"]

from dataclasses import dataclass

import numpy as np

from kneeflow.bscore import ShapeError
from kneeflow.optional import require


@dataclass
class Alignment:
    """model = scale * R @ (mirror * x - centre) + t; ``mirror`` flips x for left knees."""

    mirror: bool
    centre: list[float]
    rotation: list[list[float]]
    scale: float
    translation: list[float]
    residual: float = 0.0  # RMS distance of the aligned points to the reference surface (model units)
    rotation_deg: float = 0.0

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64).copy()
        if self.mirror:
            x[:, 0] = -x[:, 0]
        return self.scale * (x - np.asarray(self.centre)) @ np.asarray(self.rotation).T + np.asarray(self.translation)

    def inverse(self, y: np.ndarray) -> np.ndarray:
        y = (np.asarray(y, dtype=np.float64) - np.asarray(self.translation)) / self.scale
        x = y @ np.asarray(self.rotation) + np.asarray(self.centre)
        if self.mirror:
            x[:, 0] = -x[:, 0]
        return x

    def flips_orientation(self) -> bool:
        return bool(self.mirror)


def _icp_similarity(source: np.ndarray, target: np.ndarray, iterations: int = 60, landmarks: int = 2000) -> np.ndarray:
    """4x4 similarity that moves ``source`` points onto ``target`` points (VTK's ICP)."""
    vtk, ns = require("vtk"), require("vtk.util.numpy_support")

    def cloud(p):
        poly = vtk.vtkPolyData()
        vp = vtk.vtkPoints()
        vp.SetData(ns.numpy_to_vtk(np.ascontiguousarray(p, dtype=np.float64), deep=True))
        poly.SetPoints(vp)
        verts = vtk.vtkVertexGlyphFilter()
        verts.SetInputData(poly)
        verts.Update()
        return verts.GetOutput()

    icp = vtk.vtkIterativeClosestPointTransform()
    icp.SetSource(cloud(source))
    icp.SetTarget(cloud(target))
    icp.GetLandmarkTransform().SetModeToSimilarity()
    icp.SetMaximumNumberOfIterations(iterations)
    icp.SetMaximumNumberOfLandmarks(landmarks)
    icp.StartByMatchingCentroidsOn()
    icp.CheckMeanDistanceOn()
    icp.SetMaximumMeanDistance(1e-7)
    icp.Modified()
    icp.Update()
    m = icp.GetMatrix()
    return np.array([[m.GetElement(i, j) for j in range(4)] for i in range(4)])


def align(points: np.ndarray, mirror: bool, reference: np.ndarray | None, *, unit_radius: float = 0.9,
          max_residual: float = 0.06, max_rotation_deg: float = 40.0, where: str = "mesh") -> Alignment:
    """Similarity-align a (mirrored) point cloud to ``reference`` (model-space points).

    Without a reference the shape is only centred and scaled so its farthest point lies at
    ``unit_radius`` (this is how the reference itself is made). A mesh that needs more than
    ``max_rotation_deg`` of rotation or stays farther than ``max_residual`` (RMS, model units) from
    the reference is refused: it is not in the reference pose (or not the same bone).
    """
    x = np.asarray(points, dtype=np.float64).copy()
    if mirror:
        x[:, 0] = -x[:, 0]
    c = x.mean(axis=0)
    radius = float(np.linalg.norm(x - c, axis=1).max())
    if not np.isfinite(radius) or radius <= 0:
        raise ShapeError(f"{where}: degenerate mesh (all points coincide)")
    if reference is None:
        return Alignment(mirror, c.tolist(), np.eye(3).tolist(), unit_radius / radius, [0.0, 0.0, 0.0])
    ref_radius = float(np.sqrt(((reference - reference.mean(0)) ** 2).sum(1).mean()))
    own_radius = float(np.sqrt(((x - c) ** 2).sum(1).mean()))
    s0 = ref_radius / own_radius
    y0 = (x - c) * s0 + reference.mean(0)
    rng = np.random.default_rng(0)
    sub = y0[rng.choice(len(y0), size=min(len(y0), 4000), replace=False)]
    m = _icp_similarity(sub, reference)
    a_lin, t_icp = m[:3, :3], m[:3, 3]
    s_icp = float(np.cbrt(np.linalg.det(a_lin)))
    r = a_lin / s_icp
    u, _, vt = np.linalg.svd(r)  # nearest rotation
    r = u @ vt
    angle = float(np.degrees(np.arccos(np.clip((np.trace(r) - 1) / 2, -1, 1))))
    scale = s0 * s_icp
    t = s_icp * (reference.mean(0) @ r.T) + t_icp
    al = Alignment(mirror, c.tolist(), r.tolist(), float(scale), t.tolist(), rotation_deg=angle)
    y = al.forward(points)
    from scipy.spatial import cKDTree

    d, _ = cKDTree(reference).query(y[rng.choice(len(y), size=min(len(y), 4000), replace=False)])
    al.residual = float(np.sqrt((d**2).mean()))
    if angle > max_rotation_deg:
        raise ShapeError(f"{where}: far from the reference pose (alignment needs a {angle:.0f} degree rotation, "
                         f"more than {max_rotation_deg:.0f}); is this a femur in scanner orientation?")
    if al.residual > max_residual:
        raise ShapeError(f"{where}: far from the reference shape after alignment (RMS {al.residual:.3f} model units, "
                         f"limit {max_residual}); is this the right bone, in the reference pose?")
    return al
