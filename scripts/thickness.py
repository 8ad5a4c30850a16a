"""Bone and cartilage meshes with per-vertex thickness, and the sample's tidy thickness table."""

from pathlib import Path

from kneeflow import io, mesh
from kneeflow.rule import run, write_table
from kneeflow.thickness import measure_knee


def main(sm):
    labels = io.read_volume(sm.input.labels, what="label map")
    p = sm.params
    meshes, table = measure_knee(
        labels, sm.wildcards.sample, n_points=dict(p.n_points), bone_smooth_var_mm2=p.bone_var,
        cartilage_smooth_var_mm2=p.cart_var, ray_in=p.ray_in, ray_out=p.ray_out, crop_percent=p.crop,
        source=str(sm.input.labels),
    )
    out_dir = Path(sm.output.meshes)
    for name, poly in meshes.items():
        mesh.write_vtk(poly, out_dir / f"{name}.vtk")
    write_table(table, sm.output.table)


run(snakemake, main)  # noqa: F821
