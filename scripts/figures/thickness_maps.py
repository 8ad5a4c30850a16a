"""Figure: flattened femoral cartilage thickness maps per sample and the OA - healthy difference."""

from pathlib import Path

import pandas as pd
from vtk.util import numpy_support as ns

from kneeflow import figures, mesh
from kneeflow.workflow.rule import run


def main(sm):
    meta = pd.DataFrame(sm.params.meta)
    sides = meta.set_index("sample")["side"].to_dict()
    maps = {}
    for s, d in zip(sm.params.samples, sm.params.meshes):
        femur = mesh.read_vtk(Path(d) / "femur.vtk")
        th = ns.vtk_to_numpy(femur.GetPointData().GetArray("thickness_mm"))
        maps[s], xe, ae = figures.femoral_thickness_map(mesh.points(femur), th, sides[s])
    figures.thickness_maps(maps, meta, xe, ae, sm.output.png)


run(snakemake, main)  # noqa: F821
