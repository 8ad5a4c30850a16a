from pathlib import Path

import pytest

from kneeflow.samples import SampleSheetError, load_samples

HEADER = "sample\tsubject\tside\timage\tsequence\tlabels\tlabel_convention\n"


def _sheet(tmp_path, rows, header=HEADER):
    (tmp_path / "data").mkdir(exist_ok=True)
    (tmp_path / "data" / "a.nii.gz").write_bytes(b"x")
    (tmp_path / "data" / "b.nii.gz").write_bytes(b"x")
    p = tmp_path / "sheet.tsv"
    p.write_text(header + "".join("\t".join(r) + "\n" for r in rows))
    return p


def _load(tmp_path, p, **kw):
    return load_samples(p, ["data"], workdir=tmp_path, conventions={"canonical", "pymskt"}, **kw)


def test_good_sheet_resolves_paths(tmp_path):
    p = _sheet(tmp_path, [["k1", "s1", "right", "data/a.nii.gz", "dess", "", ""],
                          ["k2", "s1", "left", "", "", "data/b.nii.gz", "pymskt"]])
    df = _load(tmp_path, p)
    assert list(df.index) == ["k1", "k2"]
    assert Path(tmp_path, df.at["k1", "image"]).resolve() == (tmp_path / "data" / "a.nii.gz").resolve()
    assert df.at["k2", "image"] is None and df.at["k2", "label_convention"] == "pymskt"


BAD = {
    "duplicate id": ([["k1", "s", "right", "data/a.nii.gz", "dess", "", ""],
                      ["k1", "s", "right", "data/b.nii.gz", "dess", "", ""]], r"rows \[2, 3\]: duplicate sample id 'k1'"),
    "unknown side": ([["k1", "s", "up", "data/a.nii.gz", "dess", "", ""]], r"row 2 \(sample 'k1'\): column side: 'up' is not one of"),
    "unknown sequence": ([["k1", "s", "left", "data/a.nii.gz", "flair", "", ""]], "column sequence"),
    "missing file": ([["k1", "s", "right", "data/nope.nii.gz", "dess", "", ""]], r"row 2 .*file not found: .*nope.nii.gz"),
    "outside roots": ([["k1", "s", "right", "../outside.nii.gz", "dess", "", ""]], "outside the allowed roots"),
    "slash in id": ([["a/b", "s", "right", "data/a.nii.gz", "dess", "", ""]], "'a/b' is not a valid id"),
    "dots in id": ([["..", "s", "right", "data/a.nii.gz", "dess", "", ""]], "'..' is not a valid id"),
    "reserved id": ([["tables", "s", "right", "data/a.nii.gz", "dess", "", ""]], "reserved"),
    "labels without convention": ([["k1", "s", "right", "", "", "data/a.nii.gz", ""]], "without `label_convention`"),
    "unknown convention": ([["k1", "s", "right", "", "", "data/a.nii.gz", "mine"]], "unknown label_convention 'mine'"),
    "nothing to process": ([["k1", "s", "right", "", "", "", ""]], "give an `image`"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_sheet_names_row_and_problem(tmp_path, case):
    rows, pattern = BAD[case]
    p = _sheet(tmp_path, rows)
    with pytest.raises(SampleSheetError, match=pattern) as e:
        _load(tmp_path, p)
    assert str(p) in str(e.value)


def test_missing_and_unknown_columns(tmp_path):
    p = _sheet(tmp_path, [["k1", "right"]], header="sample\tknee\n")
    with pytest.raises(SampleSheetError, match=r"missing required column\(s\) \['side'\]"):
        _load(tmp_path, p)
    p = _sheet(tmp_path, [["k1", "right", "x"]], header="sample\tside\tcolour\n")
    with pytest.raises(SampleSheetError, match=r"unknown column\(s\) \['colour'\]"):
        _load(tmp_path, p)


def test_produced_files_may_be_missing(tmp_path):
    p = _sheet(tmp_path, [["k1", "s", "right", "data/later.nii.gz", "dess", "", ""]])
    with pytest.raises(SampleSheetError):
        _load(tmp_path, p)
    df = _load(tmp_path, p, produced={str(tmp_path / "data" / "later.nii.gz")})
    assert df.at["k1", "image"].endswith("later.nii.gz")
