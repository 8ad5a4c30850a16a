from pathlib import Path

import pytest

from kneeflow.workflow.samples import SampleSheetError, load_samples

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


def test_links_are_followed_to_where_they_lead(tmp_path):
    """A link inside the allowed roots that leads out of them is refused; one that stays in is named by its target."""
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "c.nii.gz").write_bytes(b"x")
    p = _sheet(tmp_path, [["k1", "s", "right", "data/out.nii.gz", "dess", "", ""]])
    (tmp_path / "data" / "out.nii.gz").symlink_to(tmp_path / "elsewhere" / "c.nii.gz")
    with pytest.raises(SampleSheetError, match=r"'data/out.nii.gz' resolves to .*elsewhere/c.nii.gz, outside the allowed roots"):
        _load(tmp_path, p)
    (tmp_path / "data" / "in.nii.gz").symlink_to(tmp_path / "data" / "a.nii.gz")
    (tmp_path / "data" / "dangling.nii.gz").symlink_to(tmp_path / "data" / "gone.nii.gz")
    p = _sheet(tmp_path, [["k1", "s", "right", "data/in.nii.gz", "dess", "", ""]])
    assert _load(tmp_path, p).at["k1", "image"] == "data/a.nii.gz"
    p = _sheet(tmp_path, [["k1", "s", "right", "data/dangling.nii.gz", "dess", "", ""]])
    with pytest.raises(SampleSheetError, match="file not found: .*gone.nii.gz"):
        _load(tmp_path, p)


def test_paths_outside_the_working_directory_stay_absolute(tmp_path):
    wd, store = tmp_path / "wd", tmp_path / "store"
    wd.mkdir()
    store.mkdir()
    p = _sheet(store, [["k1", "s", "right", "data/a.nii.gz", "dess", "", ""]])
    df = load_samples(p, [str(store / "data")], workdir=wd, conventions={"canonical"})
    assert df.at["k1", "image"] == str((store / "data" / "a.nii.gz").resolve())


def test_id_pattern_only_when_it_gives_every_path():
    from kneeflow.workflow.samples import id_pattern

    assert id_pattern({"k1": "data/k1.nii.gz", "k2": "data/k2.nii.gz"}) == "data/{sample}.nii.gz"
    assert id_pattern({"k1": "/d/k1/k1_T2.nii.gz", "k22": "/d/k22/k22_T2.nii.gz"}) == "/d/{sample}/{sample}_T2.nii.gz"
    assert id_pattern({"k1": "data/all.nii.gz", "k2": "data/all.nii.gz"}) == "data/all.nii.gz"
    # one row off the pattern, an id that is part of the fixed path, braces: no pattern
    assert id_pattern({"k1": "data/k1.nii.gz", "k2": "data/k2.nii.gz", "k3": "other/k3.nii.gz"}) is None
    assert id_pattern({"1": "v1/1.nii.gz", "2": "v1/2.nii.gz"}) is None
    assert id_pattern({"k1": "data/{k1}.nii.gz"}) is None
    assert id_pattern({}) is None and id_pattern({"k1": None}) is None
