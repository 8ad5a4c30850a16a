"""Reading scans (DICOM folders, NIfTI, NRRD), checking them, and writing images and JSON (QC: kneeflow.qc).

Everything is read into SimpleITK images in LPS scanner coordinates (ITK's convention): origin and
direction cosines are kept, so outputs overlay the input in 3D Slicer. Errors are ``InputError`` (a
``ValueError``) with a one-line message that names the file and the problem.
"""

from __future__ import annotations

__all__ = ["IMAGE_SUFFIXES", "InputError", "Scan", "check_geometry", "echoes_sidecar", "has_image_suffix",
           "load_label_map", "read_dicom_folder", "read_echoes", "read_scan", "read_volume", "same_geometry",
           "write_image", "write_json"]

import json
import logging
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kneeflow.atomic import atomic_path
from kneeflow.optional import require

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


class InputError(ValueError):
    """A bad input file: the message names the file and the problem in one line."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


@dataclass
class Scan:
    """A checked 3-D image, optionally with a multi-echo series on the same or another grid."""

    image: "object"  # SimpleITK.Image (3-D, float32)
    source: str
    echoes: "object | None" = None  # SimpleITK vector image, one component per echo
    echo_times_ms: list[float] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    series: dict = field(default_factory=dict)



def has_image_suffix(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(IMAGE_SUFFIXES)


def check_geometry(img, path: str | os.PathLike, *, what: str = "image") -> None:
    """Raise InputError unless ``img`` is a proper 3-D volume with positive, finite spacing."""
    dim = img.GetDimension()
    if dim == 2:
        raise InputError(path, f"{what} is 2-D ({img.GetSize()}); a 3-D volume is needed")
    if dim == 4 or img.GetNumberOfComponentsPerPixel() > 1:
        raise InputError(
            path,
            f"{what} is 4-D / multi-component (size {img.GetSize()}, "
            f"{img.GetNumberOfComponentsPerPixel()} components); give a 3-D volume, or the series "
            "as the sample's `echoes` with its echo times",
        )
    if dim != 3:
        raise InputError(path, f"{what} has {dim} dimensions; a 3-D volume is needed")
    size = img.GetSize()
    if min(size) < 2:
        raise InputError(path, f"{what} has size {size}: a single slice is 2-D; a 3-D volume is needed")
    sp = np.asarray(img.GetSpacing(), dtype=float)
    if not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise InputError(path, f"{what} spacing must be positive and finite, got {tuple(sp.tolist())}")
    d = np.asarray(img.GetDirection(), dtype=float).reshape(3, 3)
    if not np.all(np.isfinite(d)) or abs(abs(np.linalg.det(d)) - 1) > 1e-3:
        raise InputError(path, f"{what} direction cosines are not orthonormal: {d.ravel().tolist()}")


def read_volume(path: str | os.PathLike, *, what: str = "image"):
    """Read a NIfTI/NRRD/MHA file as a checked 3-D SimpleITK image (pixel type kept)."""
    sitk = require("SimpleITK")
    p = Path(path)
    if not p.exists():
        raise InputError(p, f"{what} file does not exist")
    if p.is_dir():
        raise InputError(p, f"{what} is a folder; for DICOM give the folder as `image`, not `labels`")
    if p.stat().st_size == 0:
        raise InputError(p, f"{what} file is empty (0 bytes)")
    if not has_image_suffix(p):
        raise InputError(p, f"unsupported file extension for {what}; expected one of {IMAGE_SUFFIXES}")
    _check_gzip(p)
    problem = _header_problem(p)
    if problem:
        raise InputError(p, problem)
    try:
        img = sitk.ReadImage(str(p))
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        detail = next((line.strip() for line in first if "rror" in line or "annot" in line), "")
        raise InputError(p, f"unreadable {what} ({detail[:160] or 'ITK could not read it'})") from None
    check_geometry(img, p, what=what)
    return img


def _check_gzip(p: Path) -> None:
    """A truncated .gz decompresses partially in ITK; read it through once to catch that early."""
    if not str(p).lower().endswith(".gz"):
        return
    import gzip
    import zlib

    try:
        with gzip.open(p, "rb") as fh:
            while fh.read(1 << 22):
                pass
    except (EOFError, OSError, zlib.error) as e:
        raise InputError(p, f"truncated or corrupt gzip file ({e})") from None


def _header_problem(p: Path) -> str | None:
    """Spacing problems ITK would hide (it silently replaces a zero NIfTI pixdim) or report vaguely."""
    name = p.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        # read the raw header: nibabel and ITK both silently "fix" a non-positive pixdim
        import gzip
        import struct

        opener = gzip.open if name.endswith(".gz") else open
        with opener(p, "rb") as fh:
            raw = fh.read(348)
        if len(raw) < 348:
            return "unreadable NIfTI header (file shorter than 348 bytes)"
        for endian in ("<", ">"):
            size = struct.unpack(endian + "i", raw[:4])[0]
            if size == 540:
                return None  # NIfTI-2: left to ITK's checks
            if size == 348:
                break
        else:
            return "unreadable NIfTI header (sizeof_hdr is not 348: corrupt or not NIfTI-1)"
        dim = struct.unpack(endian + "8h", raw[40:56])
        pix = np.asarray(struct.unpack(endian + "8f", raw[76:108])[1 : 1 + min(max(dim[0], 1), 3)], dtype=float)
        if not np.all(np.isfinite(pix)) or np.any(pix <= 0):
            return f"spacing must be positive and finite, got pixdim {tuple(pix.tolist())}"
    elif name.endswith((".nrrd", ".nhdr")):
        with open(p, "rb") as fh:
            head = fh.read(4096).split(b"\n\n")[0].decode("latin-1", "replace")
        for line in head.splitlines():
            key, _, val = line.partition(":")
            if key.strip() == "space directions":
                vecs = [v for v in val.replace("none", "").split(")") if "(" in v]
                for v in vecs:
                    nums = np.array([float(x) for x in v.split("(")[1].split(",")])
                    n = float(np.linalg.norm(nums))
                    if not np.isfinite(n) or n <= 0:
                        return f"spacing must be positive and finite, got space direction ({v.split('(')[1]})"
            if key.strip() == "spacings":
                sp = np.array([float(x) for x in val.split()], dtype=float)
                if not np.all(np.isfinite(sp)) or np.any(sp <= 0):
                    return f"spacing must be positive and finite, got spacings {tuple(sp.tolist())}"
    return None


# ---------------------------------------------------------------------------------------------- DICOM


def _dicom_files(folder: Path) -> list[Path]:
    files = sorted(f for f in folder.rglob("*") if f.is_file() and not f.name.startswith("."))
    if not files:
        raise InputError(folder, "DICOM folder holds no files")
    return files


def read_dicom_folder(folder: str | os.PathLike, series_uid: str | None = None) -> Scan:
    """Read one DICOM series (optionally multi-echo) from ``folder``.

    Files are grouped by SeriesInstanceUID; a folder with several series is refused unless
    ``series_uid`` picks one. Within a series, files are grouped by EchoTime; each echo must hold the
    same slice positions, evenly spaced along the slice normal (a gap means missing slices).
    The returned ``image`` is the first echo; ``echoes`` holds all of them when there are several.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    sitk = require("SimpleITK")
    folder = Path(folder)
    headers = []
    for f in _dicom_files(folder):
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except (InvalidDicomError, OSError, EOFError, ValueError) as e:
            raise InputError(f, f"not a readable DICOM file ({type(e).__name__}: {str(e)[:120]})") from None
        if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds:
            raise InputError(f, "DICOM file has no ImagePositionPatient/ImageOrientationPatient (not an image slice)")
        headers.append((f, ds))
    by_series: dict[str, list] = defaultdict(list)
    for f, ds in headers:
        by_series[str(ds.get("SeriesInstanceUID", "?"))].append((f, ds))
    if series_uid is not None:
        if series_uid not in by_series:
            raise InputError(folder, f"series {series_uid} not found; present: {sorted(by_series)}")
        chosen = by_series[series_uid]
    elif len(by_series) > 1:
        desc = {uid: f"{len(v)} files, '{v[0][1].get('SeriesDescription', '')}'" for uid, v in by_series.items()}
        raise InputError(folder, f"mixed series in one folder ({len(by_series)} series: {desc}); pick one with series_uid")
    else:
        chosen = next(iter(by_series.values()))

    by_echo: dict[float, list] = defaultdict(list)
    for f, ds in chosen:
        te = ds.get("EchoTime", None)
        by_echo[round(float(te), 4) if te not in (None, "") else float("nan")].append((f, ds))
    echo_times = sorted(by_echo)
    ds0 = chosen[0][1]
    iop = np.asarray([float(x) for x in ds0.ImageOrientationPatient])
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    positions_ref = None
    volumes = []
    for te in echo_times:
        group = by_echo[te]
        for f, ds in group:
            if not np.allclose([float(x) for x in ds.ImageOrientationPatient], iop, atol=1e-4):
                raise InputError(f, "slice orientation differs from the rest of the series (mixed series?)")
        group.sort(key=lambda it: float(np.dot(normal, [float(x) for x in it[1].ImagePositionPatient])))
        pos = np.array([np.dot(normal, [float(x) for x in ds.ImagePositionPatient]) for _, ds in group])
        if positions_ref is None:
            positions_ref = pos
            _check_slice_positions(pos, folder, te)
        elif len(pos) != len(positions_ref) or not np.allclose(pos, positions_ref, atol=1e-3):
            raise InputError(
                folder,
                f"echo TE={te} ms has {len(pos)} slices but the first echo has {len(positions_ref)} "
                "(missing echo images or slices)",
            )
        slices = []
        for f, _ in group:
            try:
                ds = pydicom.dcmread(f)
                arr = ds.pixel_array.astype(np.float32)
            except Exception as e:  # pydicom raises many types for truncated pixel data
                raise InputError(f, f"pixel data unreadable or truncated ({type(e).__name__}: {str(e)[:120]})") from None
            slope = float(ds.get("RescaleSlope", 1) or 1)
            inter = float(ds.get("RescaleIntercept", 0) or 0)
            slices.append(arr * slope + inter)
        shapes = {s.shape for s in slices}
        if len(shapes) != 1:
            raise InputError(folder, f"slices of different sizes in one series: {sorted(shapes)}")
        volumes.append(np.stack(slices))  # (z, rows, cols) = ITK (k, j, i)
    n_slices = len(positions_ref)
    if n_slices < 2:
        raise InputError(folder, "series has a single slice; a 3-D volume is needed")
    ps = [float(x) for x in ds0.PixelSpacing]  # (row spacing = along columns, column spacing = along rows)
    dz = float(np.median(np.diff(positions_ref)))
    spacing = (ps[1], ps[0], dz)
    direction = np.column_stack([row, col, normal]).ravel().tolist()
    first = by_echo[echo_times[0]][0][1]
    origin = [float(x) for x in first.ImagePositionPatient]

    def make(arr):
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing(spacing)
        img.SetDirection(direction)
        img.SetOrigin(origin)
        return img

    image = make(volumes[0])
    check_geometry(image, folder)
    scan = Scan(image=image, source=str(folder))
    scan.series = {
        "series_uid": str(ds0.get("SeriesInstanceUID", "")),
        "description": str(ds0.get("SeriesDescription", "")),
        "manufacturer": str(ds0.get("Manufacturer", "")),
        "n_files": len(chosen),
        "repetition_time_ms": float(ds0.get("RepetitionTime", 0) or 0) or None,
        "flip_angle_deg": float(ds0.get("FlipAngle", 0) or 0) or None,
    }
    if len(echo_times) > 1:
        if any(np.isnan(te) for te in echo_times):
            raise InputError(folder, "some files lack EchoTime; cannot group the multi-echo series")
        stack = np.stack(volumes, axis=-1)
        vec = sitk.GetImageFromArray(stack, isVector=True)
        vec.SetSpacing(spacing)
        vec.SetDirection(direction)
        vec.SetOrigin(origin)
        scan.echoes = vec
        scan.echo_times_ms = [float(t) for t in echo_times]
    elif not np.isnan(echo_times[0]):
        scan.echo_times_ms = [float(echo_times[0])]
    return scan


def _check_slice_positions(pos: np.ndarray, folder: Path, te: float) -> None:
    if len(pos) < 2:
        return
    d = np.diff(pos)
    if np.any(d < 1e-4):
        raise InputError(folder, f"duplicate slice positions (TE={te} ms): two files at the same location (mixed series?)")
    med = float(np.median(d))
    bad = np.nonzero(np.abs(d - med) > max(0.01 * med, 1e-3))[0]
    if bad.size:
        i = int(bad[0])
        raise InputError(
            folder,
            f"non-uniform slice positions (missing slices?): gap of {d[i]:.3f} mm after slice {i} "
            f"where the spacing is {med:.3f} mm",
        )


# ---------------------------------------------------------------------------------------------- scans


def read_echoes(path: str | os.PathLike, echo_times_ms: list[float] | None = None):
    """Read a multi-echo series: a DICOM folder, or a 4-D NIfTI with a sidecar ``.json`` (echo_times_ms)."""
    p = Path(path)
    if p.is_dir():
        scan = read_dicom_folder(p)
        if scan.echoes is None:
            raise InputError(p, f"expected a multi-echo series but found one echo ({scan.echo_times_ms} ms)")
        return scan.echoes, scan.echo_times_ms
    sitk = require("SimpleITK")
    if not p.exists():
        raise InputError(p, "echo series does not exist")
    if p.stat().st_size == 0:
        raise InputError(p, "echo series file is empty (0 bytes)")
    _check_gzip(p)
    try:
        img = sitk.ReadImage(str(p))
    except RuntimeError:
        raise InputError(p, "unreadable echo series") from None
    if img.GetNumberOfComponentsPerPixel() == 1 and img.GetDimension() == 4:
        arr = sitk.GetArrayFromImage(img)  # (e, z, y, x)
        vec = sitk.GetImageFromArray(np.moveaxis(arr, 0, -1), isVector=True)
        vec.SetSpacing(img.GetSpacing()[:3])
        vec.SetOrigin(img.GetOrigin()[:3])
        vec.SetDirection(np.asarray(img.GetDirection()).reshape(4, 4)[:3, :3].ravel().tolist())
        img = vec
    if img.GetNumberOfComponentsPerPixel() < 2:
        raise InputError(p, "echo series has a single echo; T2 needs at least two")
    if echo_times_ms is None:
        side = echoes_sidecar(p)
        if side is None or not side.exists():
            raise InputError(p, "echo times unknown: put {'echo_times_ms': [...]} in a .json beside the file")
        echo_times_ms = json.loads(side.read_text()).get("echo_times_ms")
    n = img.GetNumberOfComponentsPerPixel()
    if echo_times_ms is None or len(echo_times_ms) != n:
        raise InputError(p, f"{n} echoes but echo times {echo_times_ms}: one echo missing or times wrong")
    tes = [float(t) for t in echo_times_ms]
    if any(t <= 0 or not np.isfinite(t) for t in tes) or any(b <= a for a, b in zip(tes, tes[1:])):
        raise InputError(p, f"echo times must be positive and increasing, got {tes}")
    sp = np.asarray(img.GetSpacing())
    if not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise InputError(p, f"echo series spacing must be positive and finite, got {tuple(sp.tolist())}")
    return img, tes


def echoes_sidecar(p: Path) -> Path | None:
    name = p.name
    for suf in IMAGE_SUFFIXES:
        if name.lower().endswith(suf):
            return p.with_name(name[: -len(suf)] + ".json")
    return None


def read_scan(image: str | os.PathLike, echoes: str | os.PathLike | None = None) -> Scan:
    """Read and check a sample's image (file or DICOM folder) and optional separate echo series."""
    sitk = require("SimpleITK")
    p = Path(image)
    if p.is_dir():
        scan = read_dicom_folder(p)
    else:
        scan = Scan(image=read_volume(p), source=str(p))
    scan.image = sitk.Cast(scan.image, sitk.sitkFloat32)
    arr = sitk.GetArrayViewFromImage(scan.image)
    if not np.all(np.isfinite(arr)):
        raise InputError(p, "image holds NaN or infinite values")
    if float(arr.max()) == float(arr.min()):
        raise InputError(p, f"image is constant (all voxels {float(arr.max())}): nothing to segment")
    if echoes:
        scan.echoes, scan.echo_times_ms = read_echoes(echoes)
    sp = scan.image.GetSpacing()
    if max(sp) / min(sp) > 4:
        scan.warnings.append(f"strongly anisotropic voxels {tuple(round(s, 4) for s in sp)}")
    return scan


def write_image(img, path: str | os.PathLike) -> None:
    """Write atomically (temp file + rename) so a killed job leaves no partial file."""
    sitk = require("SimpleITK")
    path = Path(path)
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    with atomic_path(path, suffix) as tmp:
        sitk.WriteImage(img, str(tmp), True)


def write_json(obj, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1, sort_keys=True, default=_json_default) + "\n")


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o)}")


def same_geometry(a, b, tol_mm: float = 1e-3) -> str | None:
    """None if images a and b share size, spacing, origin and direction; else what differs."""
    if a.GetSize() != b.GetSize():
        return f"size {b.GetSize()} vs {a.GetSize()}"
    if not np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tol_mm):
        return f"spacing {tuple(round(s, 5) for s in b.GetSpacing())} vs {tuple(round(s, 5) for s in a.GetSpacing())}"
    if not np.allclose(a.GetOrigin(), b.GetOrigin(), atol=10 * tol_mm):
        return f"origin {tuple(round(s, 3) for s in b.GetOrigin())} vs {tuple(round(s, 3) for s in a.GetOrigin())}"
    if not np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-4):
        return "direction cosines differ"
    return None


def load_label_map(path: str | os.PathLike, convention: dict, reference=None):
    """Read a label map, check it against ``reference`` (the sample's image) and remap to canonical.

    Returns a uint8 SimpleITK image in the canonical convention with the file's geometry.
    """
    from kneeflow.labels import remap_to_canonical

    sitk = require("SimpleITK")
    img = read_volume(path, what="label map")
    pid = img.GetPixelID()
    if pid in (sitk.sitkFloat32, sitk.sitkFloat64):
        arr = sitk.GetArrayViewFromImage(img)
        if not np.all(np.equal(np.mod(arr, 1), 0)):
            raise InputError(path, "label map holds non-integer values (is this an image, not labels?)")
    if reference is not None:
        diff = same_geometry(reference, img)
        if diff:
            raise InputError(path, f"label map geometry differs from its image: {diff}")
    arr = remap_to_canonical(sitk.GetArrayFromImage(img).astype(np.int64), convention, source=str(path))
    out = sitk.GetImageFromArray(arr.astype(np.uint8))
    out.CopyInformation(img)
    return out

