"""Code hashes are computed from the imports: editing a module plans again exactly the jobs that run it."""

import re
import shutil

import pytest
from conftest import ROOT

from kneeflow.workflow import provenance


def _entries():
    """Every rule's code entry as the rules declare it: `kneeflow <stage>` commands and scripts."""
    out = {}
    for smk in sorted((ROOT / "rules").glob("*.smk")):
        for block in re.split(r"\nrule |\n    rule:", smk.read_text())[1:]:
            name = re.search(r'name:\s*\n\s*f?"([^"]+)"', block)
            name = name.group(1) if name else block.split(":")[0].strip()
            cmd = re.search(r'code=command_code\("([^"]+)"\)', block)
            script = re.search(r'code=script_code\("([^"]+)"\)', block)
            if cmd:
                out[name] = f"kneeflow.workflow.cli:{cmd.group(1)}"
            elif script:
                out[name] = str(ROOT / "scripts" / f"{script.group(1)}.py")
    return out


def test_every_rule_has_a_computed_code_parameter():
    text = "".join(p.read_text() for p in (ROOT / "rules").glob("*.smk"))
    n_rules = len(re.findall(r"^rule \w+:|^    rule:", text, re.M))  # `all` (in the Snakefile) runs no code
    assert len(_entries()) == n_rules and "library_hash" not in text


@pytest.fixture
def lib_copy(tmp_path, monkeypatch):
    """kneeflow's source in a scratch folder that the code hashes read."""
    lib = tmp_path / "kneeflow"
    shutil.copytree(provenance.LIB, lib, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(provenance, "LIB", lib)
    provenance.module_closure.cache_clear()
    yield lib
    provenance.module_closure.cache_clear()


def _changed(lib, module):
    entries = _entries()
    before = {r: provenance.code_hash(e) for r, e in entries.items()}
    with open(lib / f"{module}.py", "a") as fh:
        fh.write("\n# an edit\n")
    provenance.module_closure.cache_clear()
    return {r for r, e in entries.items() if provenance.code_hash(e) != before[r]}


def test_editing_the_bscore_module_replans_the_shape_and_bscore_jobs_only(lib_copy):
    changed = _changed(lib_copy, "bscore")
    assert {"bscore", "fit_bscore", "fit_nsm_{_batch}", "train_nsm"} <= changed
    assert not changed & {"thickness", "subregions", "t2", "ingest", "phantom", "dice", "fig_thickness",
                          "segment_{_model}_{_batch}", "train_model", "table_thickness"}


def test_editing_the_nnunet_back_end_replans_segmentation_and_export_only(lib_copy):
    changed = _changed(lib_copy, "nnunet")
    assert "segment_{_model}_{_batch}" in changed and "export_nnunet" in changed
    assert not changed & {"thickness", "t2", "ingest", "fit_nsm_{_batch}", "bscore", "dice", "fig_thickness",
                          "segment_labels"}


def test_editing_a_figure_helper_replans_the_figures_only(lib_copy):
    changed = _changed(lib_copy, "figures")
    assert changed and all(r.startswith("fig_") for r in changed)
    assert {"fig_thickness", "fig_bscore", "fig_t2"} <= changed


def _import_graph():
    import pkgutil

    import kneeflow

    mods = [m.name for m in pkgutil.walk_packages(kneeflow.__path__, "kneeflow.") if not m.name.endswith("__main__")]
    return {m: provenance._kneeflow_imports(provenance._module_file(m).read_text()) for m in mods}


def test_the_library_has_no_import_cycle():
    graph = _import_graph()
    state = {}

    def visit(m, path):
        state[m] = "open"
        for n in sorted(graph.get(m, ())):
            assert state.get(n) != "open", f"import cycle: {' -> '.join([*path, n])}"
            if n not in state:
                visit(n, [*path, n])
        state[m] = "done"

    for m in graph:
        if m not in state:
            visit(m, [m])
    assert len(graph) >= 25 and "kneeflow.workflow.cli" in graph


def test_the_science_never_imports_the_workflow_glue():
    graph = _import_graph()
    science = {m: deps for m, deps in graph.items() if not m.startswith("kneeflow.workflow")}
    assert len(science) >= 20
    leaks = {m: sorted(d for d in deps if d.startswith("kneeflow.workflow")) for m, deps in science.items()}
    assert not {m: d for m, d in leaks.items() if d}
