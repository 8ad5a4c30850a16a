"""Scale of the graph: `snakemake -n -q` on kneeflow vs a plain chained workflow with as many jobs.

    .venv/bin/python benchmarks/dag.py [--sizes 1000 10000]

For each size a sample sheet of label-map-only rows is generated (every row points at one small
label map, so no data is read), the dry run of kneeflow is timed, and so is a plain Snakefile whose
rules chain the same number of jobs per sample. Prints a table and writes dag.json.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

PLAIN = '''
IDS = [l.split("\\t")[0] for l in open("config/samples.tsv").read().splitlines()[1:]]

rule all:
    input: "results/tables/thickness.csv", "results/provenance.tsv"

rule import_labels:
    input: "data/labels.nii.gz"
    output: "results/{sample}/labels/provided.nii.gz"
    shell: "cp {input} {output}"

rule thickness:
    input: "results/{sample}/labels/provided.nii.gz"
    output: "results/{sample}/thickness.csv"
    shell: "touch {output}"

rule table:
    input: expand("results/{sample}/thickness.csv", sample=IDS)
    output: "results/tables/thickness.csv"
    shell: "cat {input} > {output}"

rule provenance:
    input: "results/tables/thickness.csv"
    output: "results/provenance.tsv"
    shell: "touch {output}"
'''


def setup(wd: Path, n: int) -> None:
    (wd / "config").mkdir(parents=True, exist_ok=True)
    (wd / "data").mkdir(exist_ok=True)
    (wd / "data" / "labels.nii.gz").write_bytes(b"placeholder: never read by a dry run")
    rows = ["sample\tside\tlabels\tlabel_convention"] + [f"s{i:05d}\tright\t../data/labels.nii.gz\tcanonical"
                                                         for i in range(n)]
    (wd / "config" / "samples.tsv").write_text("\n".join(rows) + "\n")
    (wd / "config" / "config.yaml").write_text((ROOT / "config" / "config.yaml").read_text())
    cfg = {"samples": "config/samples.tsv", "allowed_roots": ["."],
           "thickness": {"activate": True, "ray_in_mm": 2.5, "ray_out_mm": 10.0, "femoral_subregions": False},
           "t2": {"activate": False, "method": "loglinear"}}
    (wd / "config" / "dag.yaml").write_text(yaml.safe_dump(cfg))
    (wd / "Snakefile.plain").write_text(PLAIN)


def timed(cmd, cwd) -> tuple[float, int]:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-2000:])
    jobs = sum(int(x.split()[-1]) for x in r.stdout.splitlines() if x.strip().startswith("total"))
    return time.perf_counter() - t0, jobs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--out", default=str(ROOT / "results" / "benchmarks" / "dag"))
    a = ap.parse_args()
    smk = str(Path(sys.executable).with_name("snakemake"))
    rows = []
    for n in a.sizes:
        wd = Path(a.out) / f"n{n}"
        setup(wd, n)
        ours, jobs_ours = timed([smk, "-n", "-q", "-s", str(ROOT / "Snakefile"), "-d", str(wd),
                                 "--configfile", "config/dag.yaml"], wd)
        plain, jobs_plain = timed([smk, "-n", "-q", "-s", "Snakefile.plain", "-d", str(wd)], wd)
        rows.append({"samples": n, "kneeflow_s": round(ours, 2), "plain_s": round(plain, 2),
                     "ratio": round(ours / plain, 2), "jobs_kneeflow": jobs_ours, "jobs_plain": jobs_plain})
    print(f"{'samples':>8s} {'kneeflow s':>11s} {'plain s':>8s} {'ratio':>6s} {'jobs':>7s}")
    for r in rows:
        print(f"{r['samples']:8d} {r['kneeflow_s']:11.2f} {r['plain_s']:8.2f} {r['ratio']:6.2f} {r['jobs_kneeflow']:7d}")
    Path(a.out, "dag.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
