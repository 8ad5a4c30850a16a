# Shared helpers of the rules: function signatures, `kneeflow` command options, computed code hashes.
# The rest is split by concern: resources.smk, sheet.smk, models.smk, targets.smk.
import inspect
import json
import re
import shlex
from pathlib import Path
from snakemake.common import overwrite_function_params
from snakemake.exceptions import WorkflowError

from kneeflow.labels import BUILTIN_CONVENTIONS
from kneeflow.workflow.provenance import code_hash
from kneeflow.workflow.rule import export_src_path
from kneeflow.workflow.samples import (
    SampleSheetError,
    id_pattern,
    load_samples,
    sample_id_pattern,
)

export_src_path(f"{workflow.basedir}/src")


def fixed_signature(f):
    """Give Snakemake the signature of an input, params or resources function once; it inspects
    it at every call otherwise (about 40 us; 3-4 calls a job, a tenth of the dry run of 10k scans).
    """
    overwrite_function_params(f, inspect.signature(f).parameters)
    return f


def cli_options(**opts):
    """Config values as `kneeflow` command options (`ray_out_mm=10.0` -> `--ray-out-mm 10.0`), one
    string for params (so `--list-changes params` sees a change), spliced into `shell:`. A value
    may be a function of the wildcards (then so is the result, called once per job). The rule's code
    hash travels as `--code` (one parameter per rule keeps the graph of 10k scans fast).
    """

    def words(values):
        out = []
        for k, v in values.items():
            flag = f"--{k.replace('_', '-')}"
            if isinstance(v, bool):
                out.append(flag if v else f"--no-{flag[2:]}")
            elif isinstance(v, dict):
                out += [
                    flag,
                    shlex.quote(",".join(f"{a}={b}" for a, b in v.items()) or "{}"),
                ]
            elif v is not None and v != "":
                out += [flag, shlex.quote(str(v))]
        return " ".join(out)

    if not any(callable(v) for v in opts.values()):
        return words(opts)
    return fixed_signature(
        lambda wildcards: words(
            {k: (v(wildcards) if callable(v) else v) for k, v in opts.items()}
        )
    )


def script_code(name):
    """The `code` parameter of `script:` rules: the script and every kneeflow module it imports."""
    return code_hash(os.path.join(workflow.basedir, "scripts", f"{name}.py"))


def command_code(stage):
    """The `code` parameter of rules that run `kneeflow <stage>`: kneeflow.workflow.cli and what that
    stage's function imports, transitively (an edit of any of them plans the rule's jobs again).
    """
    return code_hash(f"kneeflow.workflow.cli:{stage}")
