import gzip
import json
import shutil

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from conftest import to_itk

from kneeflow import io, qc


@pytest.fixture(scope="module")
def mese_scan(mese_dir):
    return io.read_dicom_folder(mese_dir)


def test_real_mese_geometry_and_echo_times(mese_scan):
    img = mese_scan.image
    assert img.GetSize() == (256, 256, 24)
    assert img.GetSpacing()[:2] == pytest.approx((0.625, 0.625))
    assert mese_scan.echoes.GetNumberOfComponentsPerPixel() == 8
    assert mese_scan.echo_times_ms == pytest.approx([6.312 * k for k in range(1, 9)], abs=1e-3)
    # slices evenly spaced along the normal, direction orthonormal
    d = np.asarray(img.GetDirection()).reshape(3, 3)
    assert np.allclose(d.T @ d, np.eye(3), atol=1e-5)
    assert img.GetSpacing()[2] > 2.9
    # the first echo is the brightest: echoes are ordered by TE
    arr = sitk.GetArrayFromImage(mese_scan.echoes)
    means = arr.reshape(-1, 8).mean(0)
    assert np.all(np.diff(means) < 0)


def test_ingest_writes_image_qc_and_echoes(tmp_path, mese_dir):
    rec = qc.ingest(mese_dir, tmp_path / "image.nii.gz", tmp_path / "qc.json", out_echoes=tmp_path / "echoes.nii.gz")
    rec_qc = json.loads((tmp_path / "qc.json").read_text())
    assert rec_qc == json.loads(json.dumps(rec, default=float)) or rec_qc["size"] == rec["size"]
    assert rec_qc["size"] == [256, 256, 24] and rec_qc["n_echoes"] == 8
    assert len(rec_qc["orientation"]) == 3
    assert rec_qc["intensity_percentiles"]["p99"] > rec_qc["intensity_percentiles"]["p50"]
    e = sitk.ReadImage(str(tmp_path / "echoes.nii.gz"))
    assert e.GetNumberOfComponentsPerPixel() == 8
    assert json.loads((tmp_path / "echoes.json").read_text())["echo_times_ms"][0] == pytest.approx(6.312)
    back = sitk.ReadImage(str(tmp_path / "image.nii.gz"))
    assert np.allclose(back.GetDirection(), rec["direction"], atol=1e-5)


# ---------------------------------------------------------------------------- the bad-input corpus


def _volume(tmp_path, name="img.nii.gz", arr=None, spacing=(1.0, 1.0, 1.0)):
    arr = np.random.default_rng(0).random((20, 21, 22)).astype(np.float32) if arr is None else arr
    p = tmp_path / name
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    sitk.WriteImage(img, str(p))
    return p


def _copy_dicom(src, dst, keep=lambda ds: True, edit=None):
    dst.mkdir()
    n = 0
    for f in sorted(src.iterdir()):
        ds = pydicom.dcmread(f)
        if not keep(ds):
            continue
        if edit:
            edit(ds)
        ds.save_as(dst / f.name)
        n += 1
    return n


def _truncated(tmp_path):
    p = _volume(tmp_path)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    return p


def _corrupt_header(tmp_path):
    p = _volume(tmp_path, "hdr.nii")
    b = bytearray(p.read_bytes())
    b[0:4] = b"\x00\x00\x00\x07"  # sizeof_hdr must be 348
    b[40:48] = b"\xff" * 8
    p.write_bytes(bytes(b))
    return p


def _nrrd_spacing(tmp_path, value):
    p = _volume(tmp_path, "sp.nrrd")
    text = p.read_bytes()
    head, _, body = text.partition(b"\n\n")
    lines = [ln for ln in head.split(b"\n") if not ln.startswith(b"space directions")]
    lines.append(b"space directions: (" + value + b",0,0) (0,1,0) (0,0,1)")
    p.write_bytes(b"\n".join(lines) + b"\n\n" + body)
    return p


def _nifti_pixdim(tmp_path, value):
    import struct

    p = _volume(tmp_path, "pix.nii")
    b = bytearray(p.read_bytes())
    b[84:88] = struct.pack("<f", value)  # pixdim[2]
    b[252:256] = struct.pack("<hh", 0, 0)  # qform_code, sform_code: spacing from pixdim
    p.write_bytes(bytes(b))
    return p


def _two_d(tmp_path):
    p = tmp_path / "flat.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((30, 30), np.float32)), str(p))
    return p


def _four_d(tmp_path):
    p = tmp_path / "four.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.random.default_rng(1).random((3, 5, 6, 7)).astype(np.float32)), str(p))
    return p


def _empty(tmp_path):
    p = tmp_path / "empty.nii.gz"
    p.write_bytes(b"")
    return p


def _wrong_ext(tmp_path):
    p = _volume(tmp_path)
    q = tmp_path / "scan.jpg"
    shutil.copy(p, q)
    return q


def _all_zero(tmp_path):
    return _volume(tmp_path, "zero.nii.gz", np.zeros((10, 11, 12), np.float32))


def _missing_slice(tmp_path, mese_dir):
    # drop every echo's 12th slice: a gap in the slice positions
    out = tmp_path / "gap"
    pos = sorted({round(float(pydicom.dcmread(f, stop_before_pixels=True).SliceLocation), 3) for f in mese_dir.iterdir()})
    drop = pos[12]
    _copy_dicom(mese_dir, out, keep=lambda ds: round(float(ds.SliceLocation), 3) != drop)
    return out


def _mixed_series(tmp_path, mese_dir):
    out = tmp_path / "mixed"

    def edit(ds):
        if float(ds.EchoTime) > 40:
            ds.SeriesInstanceUID = "1.2.3.4.5"
            ds.SeriesDescription = "other"

    _copy_dicom(mese_dir, out, edit=edit)
    return out


def _missing_echo_image(tmp_path, mese_dir):
    out = tmp_path / "echo_gap"
    state = {"dropped": False}

    def keep(ds):
        if not state["dropped"] and abs(float(ds.EchoTime) - 25.248) < 1e-3:
            state["dropped"] = True
            return False
        return True

    _copy_dicom(mese_dir, out, keep=keep)
    return out


def _truncated_dicom(tmp_path, mese_dir):
    out = tmp_path / "trunc_dcm"
    shutil.copytree(mese_dir, out)
    f = sorted(out.iterdir())[5]
    f.write_bytes(f.read_bytes()[:4000])
    return out


CASES = {
    "truncated gzip": (_truncated, "truncated or corrupt gzip"),
    "corrupt NIfTI header": (_corrupt_header, "unreadable"),
    "zero spacing": (lambda t: _nrrd_spacing(t, b"0"), "spacing must be positive"),
    "negative spacing": (lambda t: _nifti_pixdim(t, -1.0), "spacing must be positive|unreadable"),
    "zero pixdim": (lambda t: _nifti_pixdim(t, 0.0), "spacing must be positive|unreadable"),
    "NaN spacing": (lambda t: _nrrd_spacing(t, b"nan"), "spacing must be positive|unreadable"),
    "2-D image": (_two_d, "2-D"),
    "4-D image": (_four_d, "4-D"),
    "empty file": (_empty, "empty"),
    "wrong extension": (_wrong_ext, "extension"),
    "all-zero image": (_all_zero, "constant"),
}
DICOM_CASES = {
    "missing slice": (_missing_slice, "missing slices"),
    "mixed series": (_mixed_series, "mixed series"),
    "multi-echo with one echo image missing": (_missing_echo_image, "missing echo"),
    "truncated DICOM": (_truncated_dicom, "truncated|not a readable DICOM"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_file_gets_one_line_error_naming_it(tmp_path, name):
    make, pattern = CASES[name]
    path = make(tmp_path)
    with pytest.raises(io.InputError, match=pattern) as e:
        io.read_scan(path)
    msg = str(e.value)
    assert "\n" not in msg
    assert str(path) in msg or e.value.path.startswith(str(tmp_path))


@pytest.mark.parametrize("name", sorted(DICOM_CASES))
def test_bad_dicom_folder(tmp_path, mese_dir, name):
    make, pattern = DICOM_CASES[name]
    path = make(tmp_path, mese_dir)
    with pytest.raises(io.InputError, match=pattern) as e:
        io.read_scan(path)
    assert "\n" not in str(e.value)
    assert str(tmp_path) in str(e.value)


def test_ingest_leaves_no_partial_output(tmp_path):
    bad = _truncated(tmp_path)
    out = tmp_path / "out"
    with pytest.raises(io.InputError):
        qc.ingest(bad, out / "image.nii.gz", out / "qc.json")
    assert not (out / "image.nii.gz").exists() and not (out / "qc.json").exists()


def test_label_map_geometry_and_unknown_labels(tmp_path):
    lab = np.zeros((10, 12, 14), np.uint8)
    lab[2:5, 2:5, 2:5] = 7
    ref = to_itk(np.zeros((10, 12, 14), np.float32), (1, 1, 1))
    p = tmp_path / "lab.nii.gz"
    sitk.WriteImage(to_itk(lab, (1, 1, 1)), str(p))
    from kneeflow.labels import CANONICAL, PYMSKT

    out = io.load_label_map(p, CANONICAL, reference=ref)
    assert sitk.GetArrayFromImage(out).max() == 7
    other = to_itk(np.zeros((10, 12, 14), np.float32), (1, 1, 2))
    with pytest.raises(io.InputError, match="geometry differs"):
        io.load_label_map(p, CANONICAL, reference=other)
    lab[0, 0, 0] = 42
    sitk.WriteImage(to_itk(lab, (1, 1, 1)), str(p))
    with pytest.raises(ValueError, match=r"\[42\].*not in the declared convention"):
        io.load_label_map(p, CANONICAL)
    lab[0, 0, 0] = 5  # pymskt: 5 femur -> canonical 7, 7 patella -> canonical 9
    sitk.WriteImage(to_itk(lab, (1, 1, 1)), str(p))
    remapped = sitk.GetArrayFromImage(io.load_label_map(p, PYMSKT))
    assert remapped[0, 0, 0] == 7 and remapped[2, 2, 2] == 9


def test_echo_nifti_needs_matching_echo_times(tmp_path):
    vec = sitk.GetImageFromArray(np.random.default_rng(2).random((5, 6, 7, 4)).astype(np.float32), isVector=True)
    p = tmp_path / "e.nii.gz"
    sitk.WriteImage(vec, str(p))
    with pytest.raises(io.InputError, match="echo times unknown"):
        io.read_echoes(p)
    (tmp_path / "e.json").write_text(json.dumps({"echo_times_ms": [10, 20, 30]}))
    with pytest.raises(io.InputError, match="4 echoes but echo times"):
        io.read_echoes(p)
    (tmp_path / "e.json").write_text(json.dumps({"echo_times_ms": [10, 20, 30, 40]}))
    img, tes = io.read_echoes(p)
    assert tes == [10, 20, 30, 40] and img.GetNumberOfComponentsPerPixel() == 4
    assert gzip.open(p).read(4)
