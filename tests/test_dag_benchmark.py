"""benchmarks/dag.py compares like with like: as many jobs per scan in every workflow it times."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_dag_benchmark_runs_and_plans_as_many_jobs_per_scan(tmp_path):
    n = 12
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "dag.py"), "--sizes", str(n), "--repeat", "1",
                        "--calls", "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    (row,) = json.loads((tmp_path / "dag.json").read_text())
    assert row["samples"] == n
    # two jobs a scan (import_labels, thickness) in each; kneeflow adds cohort jobs only (thickness and
    # morphometrics tables, runtime, thickness, thickness-map and morphometrics figures, provenance,
    # the study report, all: 9 against the plain chain's 3 and the declared chain's 4, which also has the
    # morphometrics table reading every scan's morphometrics.csv)
    assert row["jobs_plain"] == 2 * n + 3 and row["jobs_declared"] == row["jobs_plain"] + 1
    assert row["jobs_kneeflow"] == 2 * n + 9
    for k in ("kneeflow_s", "plain_s", "declared_s", "declared_script_s"):
        assert row[k] > 0
    # the ratio comes from unrounded times, the times are printed to 0.01 s
    assert abs(row["ratio"] - row["kneeflow_s"] / row["plain_s"]) < 0.02
    # declaring more files and directives is more work for Snakemake, never less
    assert row["calls_declared"] > row["calls_plain"]
    assert row["calls_declared_script"] > row["calls_declared"]
    assert "kneeflow/declared" in r.stdout and "Python function calls" in r.stdout
