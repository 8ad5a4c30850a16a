"""Triangle meshes as numpy arrays: reading and checking surfaces, sampling points on them, signed
and surface-to-surface distances, and the signed-distance samples a shape model trains on (VTK)."""

from __future__ import annotations

__all__ = ["check_surface", "load_surface", "make_poly", "mesh_arrays", "sample_on_surface", "sdf_samples",
           "signed_distance", "surface_distance"]

import os
from pathlib import Path

import numpy as np

from kneeflow.bscore import ShapeError
from kneeflow.optional import require



def load_surface(path: str | os.PathLike, *, closed: bool = True):
    """Read a triangle mesh; refuse empty meshes (and open ones when ``closed``) with the file's name."""
    from kneeflow.mesh import read_vtk

    p = Path(path)
    if not p.exists():
        raise ShapeError(f"{p}: mesh not found")
    try:
        poly = read_vtk(p)
    except Exception as e:  # noqa: BLE001 - reader errors vary
        raise ShapeError(str(e) if str(p) in str(e) else f"{p}: unreadable mesh ({e})") from None
    check_surface(poly, str(p), closed=closed)
    return poly


def check_surface(poly, where: str = "mesh", closed: bool = True) -> None:
    vtk, _ = require("vtk"), require("vtk.util.numpy_support")
    if poly is None or poly.GetNumberOfPoints() == 0 or poly.GetNumberOfCells() == 0:
        raise ShapeError(f"{where}: empty mesh (no points or no triangles)")
    if not closed:
        return
    fe = vtk.vtkFeatureEdges()
    fe.SetInputData(poly)
    fe.BoundaryEdgesOn()
    fe.FeatureEdgesOff()
    fe.ManifoldEdgesOff()
    fe.NonManifoldEdgesOn()
    fe.Update()
    n = fe.GetOutput().GetNumberOfCells()
    if n:
        raise ShapeError(f"{where}: mesh is not closed ({n} boundary or non-manifold edges); "
                         "signed distances need a watertight surface")


def mesh_arrays(poly) -> tuple[np.ndarray, np.ndarray]:
    """(points (n, 3) float64, triangles (m, 3) int64)."""
    vtk, ns = require("vtk"), require("vtk.util.numpy_support")
    tri = vtk.vtkTriangleFilter()
    tri.SetInputData(poly)
    tri.Update()
    out = tri.GetOutput()
    pts = ns.vtk_to_numpy(out.GetPoints().GetData()).astype(np.float64)
    cells = ns.vtk_to_numpy(out.GetPolys().GetConnectivityArray()).reshape(-1, 3).astype(np.int64)
    return pts, cells


def make_poly(points: np.ndarray, triangles: np.ndarray):
    vtk, ns = require("vtk"), require("vtk.util.numpy_support")
    poly = vtk.vtkPolyData()
    vp = vtk.vtkPoints()
    vp.SetData(ns.numpy_to_vtk(np.ascontiguousarray(points, dtype=np.float64), deep=True))
    poly.SetPoints(vp)
    cells = vtk.vtkCellArray()
    offsets = np.arange(0, 3 * len(triangles) + 1, 3, dtype=np.int64)
    cells.SetData(ns.numpy_to_vtkIdTypeArray(offsets, deep=True),
                  ns.numpy_to_vtkIdTypeArray(np.ascontiguousarray(triangles.ravel(), dtype=np.int64), deep=True))
    poly.SetPolys(cells)
    return poly


def sample_on_surface(points: np.ndarray, tris: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Area-weighted uniform points on a triangle mesh."""
    a, b, c = points[tris[:, 0]], points[tris[:, 1]], points[tris[:, 2]]
    area = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)
    idx = rng.choice(len(tris), size=n, p=area / area.sum())
    r1, r2 = rng.random(n), rng.random(n)
    s = np.sqrt(r1)
    return (1 - s)[:, None] * a[idx] + (s * (1 - r2))[:, None] * b[idx] + (s * r2)[:, None] * c[idx]


def signed_distance(points: np.ndarray, tris: np.ndarray, query: np.ndarray, *, auto_orient: bool = True) -> np.ndarray:
    """Signed distance of ``query`` to the mesh (negative inside), via VTK.

    ``auto_orient`` orients the normals outward, which needs a closed surface; an open surface
    (a clipped femur) keeps the winding of its triangles (outward for the workflow's meshes).
    """
    vtk, ns = require("vtk"), require("vtk.util.numpy_support")
    poly = make_poly(points, tris)
    normals = vtk.vtkPolyDataNormals()
    normals.SetInputData(poly)
    normals.ComputePointNormalsOn()
    normals.ComputeCellNormalsOn()
    normals.SetAutoOrientNormals(auto_orient)
    normals.ConsistencyOn()
    normals.SplittingOff()
    normals.Update()
    f = vtk.vtkImplicitPolyDataDistance()
    f.SetInput(normals.GetOutput())
    q = ns.numpy_to_vtk(np.ascontiguousarray(query, dtype=np.float64), deep=True)
    out = vtk.vtkDoubleArray()
    f.FunctionValue(q, out)
    return ns.vtk_to_numpy(out).copy()


def surface_distance(a_pts: np.ndarray, a_tris: np.ndarray, b_pts: np.ndarray, b_tris: np.ndarray,
                     n: int = 20000, seed: int = 0) -> dict[str, float]:
    """Symmetric surface distance between two meshes (points sampled on each, distance to the other)."""
    rng = np.random.default_rng(seed)
    da = np.abs(signed_distance(b_pts, b_tris, sample_on_surface(a_pts, a_tris, n, rng)))
    db = np.abs(signed_distance(a_pts, a_tris, sample_on_surface(b_pts, b_tris, n, rng)))
    return {"assd": float((da.mean() + db.mean()) / 2), "hd95": float(max(np.percentile(da, 95), np.percentile(db, 95))),
            "max": float(max(da.max(), db.max()))}


def sdf_samples(points: np.ndarray, tris: np.ndarray, n: int, rng: np.random.Generator,
                sigmas: tuple[float, ...] = (0.005, 0.025), uniform_fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Near-surface and uniform points (model space) with their signed distance to the mesh."""
    n_uni = int(n * uniform_fraction)
    n_near = n - n_uni
    per = [n_near // len(sigmas)] * len(sigmas)
    per[0] += n_near - sum(per)
    q = [sample_on_surface(points, tris, k, rng) + rng.normal(0, s, size=(k, 3)) for k, s in zip(per, sigmas)]
    q.append(rng.uniform(-1, 1, size=(n_uni, 3)))
    q = np.concatenate(q)
    return q.astype(np.float32), signed_distance(points, tris, q).astype(np.float32)
