"""kneeflow.job: the per-sample rules' scripts run from `shell:` with the same `snakemake` object."""

import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest

from kneeflow.job import Named, job_command, job_spec, main

ROOT = Path(__file__).resolve().parents[1]


class _NL(dict):
    """Stands in for Snakemake's Wildcards in job_spec's call (it uses [name] only)."""


def _filled(cmd, input, output, wildcards, job):  # noqa: A002
    """The command as Snakemake fills it in when the job runs (its own formatter and containers)."""
    from snakemake.iocontainers import InputFiles, Log, Namedlist, OutputFiles, Params, Wildcards
    from snakemake.utils import format as snakemake_format

    return snakemake_format(cmd, input=InputFiles(fromdict=input), output=OutputFiles(fromdict=output),
                            wildcards=Wildcards(fromdict=wildcards), params=Params(fromdict={"job": job}),
                            log=Log(["l.log"]), threads=2, resources=Namedlist(fromdict={"mem_mb": 3000, "runtime": 20}))


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
    scripts.mkdir(parents=True, exist_ok=True)
    (scripts / "demo_rule.py").write_text(body)
    return scripts


def test_spec_carries_params_and_the_scripts_hash(tmp_path):
    scripts = _script(tmp_path, "x = 1\n")
    # constant parameters: one string; a parameter of the wildcards: a function of the wildcards only
    # (a function of input/output would be "derived", and Snakemake would not compare it)
    const = json.loads(job_spec(scripts / "demo_rule.py", ray=2.5))
    spec = job_spec(scripts / "demo_rule.py", ray=2.5, side=lambda wc: wc["sample"] + "-side")
    assert list(inspect.signature(spec).parameters) == ["wildcards"]
    out = json.loads(spec(_NL(sample="k1")))
    assert out["rule"] == const["rule"] == "demo_rule" and out["script_sha256"] == const["script_sha256"]
    assert out["params"] == {"ray": 2.5, "side": "k1-side"} and const["params"] == {"ray": 2.5}
    # an edit of the script changes the parameter, so Snakemake plans the rule's jobs again
    (scripts / "demo_rule.py").write_text("x = 2\n")
    assert json.loads(job_spec(scripts / "demo_rule.py", ray=2.5))["script_sha256"] != const["script_sha256"]


def test_script_runs_with_its_snakemake_object(tmp_path):
    scripts = _script(tmp_path / "my {scripts}", (
        "from pathlib import Path\n"
        "sm = snakemake  # noqa: F821\n"
        "Path(sm.output.table).write_text(\n"
        "    f'{sm.rule} {sm.wildcards.sample} {sm.input.labels} {sm.input.get(\"image\")} {sm.params.ray} '\n"
        "    f'{sm.threads} {sm.resources[\"mem_mb\"]} {sm.log[0]} {sorted(dict(sm.params))} {list(sm.input)}')\n"))
    spec = job_spec(scripts / "demo_rule.py", ray=2.5)
    # an optional input left empty is absent; a path with a space and quotes survives the shell
    cmd = _filled(job_command(("labels", "image"), ("table",), scripts=scripts),
                  {"labels": "in 'a'.nii.gz", "image": []}, {"table": str(tmp_path / "out.txt")}, {"sample": "k1"}, spec)
    # as the rule's shell command runs it: a shell, a new interpreter, the library on PYTHONPATH
    r = subprocess.run(cmd.replace("python -m", f"{sys.executable} -m", 1), shell=True, cwd=tmp_path,
                       capture_output=True, text=True, env={"PYTHONPATH": str(ROOT / "src")})
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out.txt").read_text() == "demo_rule k1 in 'a'.nii.gz None 2.5 2 3000 l.log ['ray'] [\"in 'a'.nii.gz\"]"


def test_a_script_edited_after_planning_is_refused(tmp_path):
    scripts = _script(tmp_path, "x = 1\n")
    spec = job_spec(scripts / "demo_rule.py")
    (scripts / "demo_rule.py").write_text("x = 2\n")
    with pytest.raises(SystemExit, match="demo_rule.py changed since the workflow was planned"):
        main([spec, "--wildcards", "sample=k1", "--scripts", str(scripts)])


def test_malformed_file_arguments_are_refused(tmp_path):
    scripts = _script(tmp_path, "x = 1\n")
    spec = job_spec(scripts / "demo_rule.py")
    with pytest.raises(SystemExit, match="input 'in.nii.gz' is not NAME=VALUE"):
        main([spec, "--input", "in.nii.gz", "--scripts", str(scripts)])


def test_command_names_reads_back_what_job_command_passes():
    from kneeflow.job import command_names

    cmd = job_command(("labels", "image"), ("nii",), ("sample", "model"), scripts="/s")
    assert command_names(cmd) == {"input": {"labels", "image"}, "output": {"nii"}, "wildcards": {"sample", "model"}}
