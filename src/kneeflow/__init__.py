"""kneeflow: knee MRI to segmentations, meshes, cartilage thickness, T2, shape scores.

The library behind the kneeflow Snakemake workflow. Modules import their heavy dependencies
(torch, vtk, SimpleITK, ...) inside the functions that need them.
"""

__version__ = "0.1.0"
