"""Scale of the graph: `snakemake -n -q` on kneeflow vs a plain chained workflow with as many jobs.

    .venv/bin/python benchmarks/dag.py [--sizes 1000 10000] [--repeat 3]

For each size a sample sheet of label-map-only rows is generated (every row points at one small
label map, so no data is read) and four dry runs are timed:
- kneeflow;
- plain: a Snakefile whose rules chain the same number of jobs per sample with one input, one output
  and `shell:` only (the issue's comparison);
- declared: the same chain declaring what kneeflow's per-sample rules declare (the meshes folder,
  morphometrics table, subregion map and thickness map beside each thickness table, log, benchmark,
  conda, threads, resources, params) and the second cohort table the thickness jobs feed (the
  morphometrics table, whose inputs are the per-sample morphometrics tables), still `shell:`:
  Snakemake's own cost of those files and directives, so kneeflow / declared is the cost of
  kneeflow's code (sheet checks, config schema, input patterns, its other rules);
- declared, script: the same with `script:`, which Snakemake reads and caches once per job: the
  reason the per-sample rules run the `kneeflow` command from `shell:`.
Each time is the fastest of --repeat runs, the workflows taking turns. With --calls each dry run is
also run once under cProfile and its Python function calls are counted: a measure of work that does
not vary with the machine's speed (which varied by 20-50 % between runs here). Prints a
table and writes dag.json.
"""

import argparse
import json
import pstats
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


# the same chain declaring what kneeflow's per-sample rules declare (files and directives), with
# `script:` here and `shell:` below: Snakemake's own per-job cost of those declarations
DECLARED_SCRIPT = PLAIN.replace(
    '''    output: "results/{sample}/labels/provided.nii.gz"
    shell: "cp {input} {output}"''',
    '''    output: "results/{sample}/labels/provided.nii.gz"
    log: "results/logs/import_labels/{sample}.log"
    priority: 45
    conda: "env.yaml"
    threads: 1
    resources: mem_mb=lambda wc, attempt: 2000 * attempt, runtime=lambda wc, attempt: 10 * attempt
    params: convention="canonical"
    script: "noop.py"''').replace(
    '''    output: "results/{sample}/thickness.csv"
    shell: "touch {output}"''',
    '''    output: meshes=directory("results/{sample}/meshes"), table="results/{sample}/thickness.csv",
            morphometrics="results/{sample}/morphometrics.csv",
            subregions_std="results/{sample}/labels/subregions_std.nii.gz",
            thickness_map="results/{sample}/thickness_map.nii.gz"
    log: "results/logs/thickness/{sample}.log"
    benchmark: "results/benchmarks/thickness/{sample}.tsv"
    conda: "env.yaml"
    threads: 1
    resources: mem_mb=lambda wc, attempt: 3000 * attempt, runtime=lambda wc, attempt: 20 * attempt
    params: ray_in=2.5, ray_out=10.0
    script: "noop.py"''').replace(
    '''    input: "results/tables/thickness.csv", "results/provenance.tsv"''',
    '''    input: "results/tables/thickness.csv", "results/tables/morphometrics.csv", "results/provenance.tsv"''') + '''
rule table_morphometrics:
    input: expand("results/{sample}/morphometrics.csv", sample=IDS)
    output: "results/tables/morphometrics.csv"
    shell: "cat {input} > {output}"
'''

# the same declarations with `shell:` in place of `script:`, as kneeflow's per-sample rules have them
DECLARED = DECLARED_SCRIPT.replace('script: "noop.py"', 'shell: "python noop.py {params:q}"')


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
    (wd / "Snakefile.declared_script").write_text(DECLARED_SCRIPT)
    (wd / "Snakefile.declared").write_text(DECLARED)
    (wd / "noop.py").write_text("pass\n")
    (wd / "env.yaml").write_text("channels: [conda-forge]\ndependencies: [python=3.11]\n")


def seconds(cmd, cwd) -> float:
    """Seconds of one `cmd -n -q` (as the issue times it)."""
    t0 = time.perf_counter()
    r = subprocess.run(cmd + ["-n", "-q"], cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-2000:])
    return time.perf_counter() - t0


def calls(cmd, cwd) -> int:
    """Python function calls made by one `cmd -n -q`, counted by cProfile."""
    prof = Path(cwd) / "calls.prof"
    r = subprocess.run([sys.executable, "-m", "cProfile", "-o", str(prof)] + cmd + ["-n", "-q"],
                       cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-2000:])
    n = pstats.Stats(str(prof)).total_calls
    prof.unlink()
    return n


def jobs(cmd, cwd) -> int:
    """The planned job count, from an untimed dry run whose job table is not silenced."""
    r = subprocess.run(cmd + ["-n", "--quiet", "rules", "reason", "host"], cwd=cwd, capture_output=True, text=True)
    out = r.stdout + r.stderr
    jobs = max([int(x.split()[-1]) for x in out.splitlines() if x.strip().startswith("total")], default=0)
    if jobs == 0:
        raise RuntimeError(f"no job count in the dry run of {cmd}:\n{out[-2000:]}")
    return jobs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--repeat", type=int, default=3, help="runs per workflow; the fastest counts")
    ap.add_argument("--calls", action="store_true", help="also count function calls under cProfile")
    ap.add_argument("--out", default=str(ROOT / "results" / "benchmarks" / "dag"))
    a = ap.parse_args()
    smk = str(Path(sys.executable).with_name("snakemake"))
    rows = []
    for n in a.sizes:
        wd = Path(a.out) / f"n{n}"
        setup(wd, n)
        cmds = {"ours": [smk, "-s", str(ROOT / "Snakefile"), "-d", str(wd), "--configfile", "config/dag.yaml"],
                "plain": [smk, "-s", "Snakefile.plain", "-d", str(wd)],
                "declared": [smk, "-s", "Snakefile.declared", "-d", str(wd)],
                "declared_script": [smk, "-s", "Snakefile.declared_script", "-d", str(wd)]}
        best = {k: float("inf") for k in cmds}
        for _ in range(a.repeat):
            for k, cmd in cmds.items():
                best[k] = min(best[k], seconds(cmd, wd))
        ours, plain, decl = best["ours"], best["plain"], best["declared"]
        rows.append({"samples": n, "kneeflow_s": round(ours, 2), "plain_s": round(plain, 2),
                     "ratio": round(ours / plain, 2),
                     "declared_s": round(decl, 2), "declared_over_plain": round(decl / plain, 2),
                     "kneeflow_over_declared": round(ours / decl, 2),
                     "declared_script_s": round(best["declared_script"], 2),
                     "declared_script_over_plain": round(best["declared_script"] / plain, 2),
                     "jobs_kneeflow": jobs(cmds["ours"], wd), "jobs_plain": jobs(cmds["plain"], wd),
                     "jobs_declared": jobs(cmds["declared"], wd), "repeat": a.repeat})
        if a.calls:
            c = {k: calls(cmd, wd) for k, cmd in cmds.items()}
            rows[-1].update({f"calls_{k}": v for k, v in c.items()})
            rows[-1].update({"calls_ratio": round(c["ours"] / c["plain"], 3),
                             "calls_declared_over_plain": round(c["declared"] / c["plain"], 3),
                             "calls_kneeflow_over_declared": round(c["ours"] / c["declared"], 3)})
    print(f"{'samples':>8s} {'kneeflow s':>11s} {'plain s':>8s} {'ratio':>6s} {'declared s':>11s} "
          f"{'/plain':>7s} {'kneeflow/declared':>18s} {'declared,script: s':>19s} {'/plain':>7s} "
          f"{'jobs ours':>10s} {'jobs plain':>10s}")
    for r in rows:
        print(f"{r['samples']:8d} {r['kneeflow_s']:11.2f} {r['plain_s']:8.2f} {r['ratio']:6.2f} "
              f"{r['declared_s']:11.2f} {r['declared_over_plain']:7.2f} {r['kneeflow_over_declared']:18.2f} "
              f"{r['declared_script_s']:19.2f} {r['declared_script_over_plain']:7.2f} "
              f"{r['jobs_kneeflow']:10d} {r['jobs_plain']:10d}")
    if a.calls:
        print(f"\nPython function calls (cProfile, one run each)\n{'samples':>8s} {'kneeflow':>12s} {'plain':>12s} "
              f"{'ratio':>6s} {'declared':>12s} {'/plain':>7s} {'kneeflow/declared':>18s}")
        for r in rows:
            print(f"{r['samples']:8d} {r['calls_ours']:12d} {r['calls_plain']:12d} {r['calls_ratio']:6.2f} "
                  f"{r['calls_declared']:12d} {r['calls_declared_over_plain']:7.2f} "
                  f"{r['calls_kneeflow_over_declared']:18.2f}")
    Path(a.out, "dag.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
