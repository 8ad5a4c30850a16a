"""kneeflow.job: the per-sample rules' scripts run from `shell:` with the same `snakemake` object."""

import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest

from kneeflow.job import Named, job_io, job_spec, main

ROOT = Path(__file__).resolve().parents[1]


class _NL(dict):
    """Stands in for Snakemake's Namedlist in job_spec's call (it uses .items() only)."""


def test_named_behaves_like_snakemakes_namedlist():
    n = Named({"labels": "a.nii.gz", "fits": ["x.json", "y.json"], "image": []})
    assert n.labels == "a.nii.gz" and n["fits"] == ["x.json", "y.json"] and n.get("image") == []
    assert n.get("missing") is None
    assert list(n) == ["a.nii.gz", "x.json", "y.json"] and n[0] == "a.nii.gz" and len(n) == 3
    assert dict(n) == {"labels": "a.nii.gz", "fits": ["x.json", "y.json"], "image": []}
    with pytest.raises(AttributeError):
        n.nope
    log = Named(positional=["l.log"])
    assert log[0] == "l.log" and len(log) == 1


def _script(tmp_path, body):
    scripts = tmp_path / "scripts"
    scripts.mkdir(exist_ok=True)
    (scripts / "demo_rule.py").write_text(body)
    return scripts


def test_spec_carries_params_and_the_scripts_hash_io_the_files(tmp_path):
    scripts = _script(tmp_path, "x = 1\n")
    # constant parameters: one string; a parameter of the wildcards: a function of the wildcards only
    # (a function of input/output would be "derived", and Snakemake would not compare it)
    const = json.loads(job_spec(scripts / "demo_rule.py", ray=2.5))
    spec = job_spec(scripts / "demo_rule.py", ray=2.5, side=lambda wc: wc["sample"] + "-side")
    assert list(inspect.signature(spec).parameters) == ["wildcards"]
    out = json.loads(spec(_NL(sample="k1")))
    assert out["rule"] == const["rule"] == "demo_rule" and out["script_sha256"] == const["script_sha256"]
    assert out["params"] == {"ray": 2.5, "side": "k1-side"} and const["params"] == {"ray": 2.5}
    io = json.loads(job_io(_NL(sample="k1"), _NL(labels="in.nii.gz"), _NL(table="out.csv")))
    assert io == {"input": {"labels": "in.nii.gz"}, "output": {"table": "out.csv"}, "wildcards": {"sample": "k1"}}
    # an edit of the script changes the parameter, so Snakemake plans the rule's jobs again
    (scripts / "demo_rule.py").write_text("x = 2\n")
    assert json.loads(job_spec(scripts / "demo_rule.py", ray=2.5))["script_sha256"] != const["script_sha256"]


def test_script_runs_with_its_snakemake_object(tmp_path):
    scripts = _script(tmp_path, (
        "from pathlib import Path\n"
        "sm = snakemake  # noqa: F821\n"
        "Path(sm.output.table).write_text(\n"
        "    f'{sm.rule} {sm.wildcards.sample} {sm.input.labels} {sm.params.ray} {sm.threads} '\n"
        "    f'{sm.resources[\"mem_mb\"]} {sm.log[0]} {sorted(dict(sm.params))}')\n"))
    spec = job_spec(scripts / "demo_rule.py", ray=2.5)
    io = job_io(_NL(sample="k1"), _NL(labels="in.nii.gz"), _NL(table=str(tmp_path / "out.txt")))
    # as the rule's shell command runs it: a new interpreter, the library on PYTHONPATH
    r = subprocess.run([sys.executable, "-m", "kneeflow.job", spec, "--io", io, "--log", "l.log", "--threads", "2",
                        "--resources", "mem_mb=3000", "runtime=20", "--scripts", str(scripts)],
                       cwd=tmp_path, capture_output=True, text=True, env={"PYTHONPATH": str(ROOT / "src")})
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out.txt").read_text() == "demo_rule k1 in.nii.gz 2.5 2 3000 l.log ['ray']"


def test_a_script_edited_after_planning_is_refused(tmp_path):
    scripts = _script(tmp_path, "x = 1\n")
    spec = job_spec(scripts / "demo_rule.py")
    io = job_io(_NL(sample="k1"), _NL(), _NL())
    (scripts / "demo_rule.py").write_text("x = 2\n")
    with pytest.raises(SystemExit, match="demo_rule.py changed since the workflow was planned"):
        main([spec, "--io", io, "--scripts", str(scripts)])
