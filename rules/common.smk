# Sample-sheet helpers; the logic lives in kneeflow.samples (tested on its own).
import inspect
import json
import re
from pathlib import Path
from snakemake.common import overwrite_function_params
from snakemake.exceptions import WorkflowError

from kneeflow.job import command_names, job_command, job_spec as _job_spec
from kneeflow.labels import BUILTIN_CONVENTIONS
from kneeflow.provenance import library_hash
from kneeflow.rule import export_src_path
from kneeflow.samples import SampleSheetError, id_pattern, load_samples

export_src_path(f"{workflow.basedir}/src")


def fixed_signature(f):
    """Give Snakemake the signature of an input, params or resources function once; it inspects
    it at every call otherwise (about 40 us; 3-4 calls a job, a tenth of the dry run of 10k scans).
    """
    overwrite_function_params(f, inspect.signature(f).parameters)
    return f


def per_attempt(base):
    """Memory (MB) or runtime (minutes) that grows with the attempt, so that `--retries` recovers
    from an out-of-memory kill or a time-out."""
    return fixed_signature(lambda wildcards, attempt: base * attempt)


def job_spec(rule, **params):
    """The `job` parameter of a per-sample rule that runs scripts/<rule>.py through job_shell."""
    spec = _job_spec(f"{workflow.basedir}/scripts/{rule}.py", **params)
    return fixed_signature(spec) if callable(spec) else spec


# The per-sample rules run their script from `shell:` (kneeflow.job says why: the graph of 10k scans
# builds 2x faster than with `script:`); the script still gets its `snakemake` object.
def job_shell(input=(), output=(), wildcards=("sample",)):  # noqa: A002
    """`shell:` of a per-sample rule: its script (named by the rule's `job` parameter) with the
    rule's named inputs, outputs and wildcards (checked against the rule by check_job_rules).
    """
    return job_command(
        input, output, wildcards, scripts=os.path.join(workflow.basedir, "scripts")
    )


def check_job_rules(rules):
    """Each `job_shell` names exactly its rule's inputs, outputs and wildcards (a name left out
    would be missing in the script; a name too many fails when the job's command is formatted).
    """
    for r in rules:
        if not (r.shellcmd or "").startswith("python -m kneeflow.job "):
            continue
        given = command_names(r.shellcmd)
        declared = {
            "input": set(r.input.keys()),
            "output": set(r.output.keys()),
            "wildcards": set(r.wildcard_names),
        }
        if given != declared:
            raise WorkflowError(
                f"the job_shell of rule {r.name!r} names {given}, the rule declares {declared}"
            )


CONVENTIONS = set(BUILTIN_CONVENTIONS) | set(config.get("label_conventions", {}))
DEMO = config.get("demo", {}).get("activate", False)


def _demo_outputs(sheet):
    """Files the demo rule writes, which may be missing before the run."""
    import pandas as pd

    if not DEMO:
        return set()
    ids = pd.read_csv(sheet, sep="\t", dtype=str, comment="#")["sample"]
    return {
        os.path.abspath(f"results/demo/{s}/{f}")
        for s in ids
        for f in ("image.nii.gz", "labels.nii.gz", "echoes.nii.gz")
    }


try:
    SAMPLES = load_samples(
        config["samples"],
        config["allowed_roots"],
        produced=_demo_outputs(config["samples"]),
        conventions=CONVENTIONS,
    )
except SampleSheetError as e:
    raise WorkflowError(f"Sample sheet error:\n{e}") from None

IDS = list(SAMPLES.index)
# plain dicts for the per-job lookups of input functions (pandas .at/.loc cost ~10 us a call)
ROWS = SAMPLES.to_dict("index")


wildcard_constraints:
    # a sample id, never a study-level folder (results/tables/t2.csv is not sample "tables")
    sample="(?!(models|export|tables|figures|demo|logs|benchmarks|provenance|report)/)[A-Za-z0-9_-]+",


SEG = config.get("segmentation", {"activate": False})
MODELS = list(SEG.get("models", {})) if SEG.get("activate") else []
# models this workflow trains (a `train` section); others are nnU-Net folders or ONNX files
TRAINED = [m for m in MODELS if "train" in SEG["models"][m]]
DEVICE = "cuda" if config.get("resources", {}).get("gpu", False) else "cpu"
# GPU stages ask SLURM for a GPU (the executor plugin's `gpu` resource) when the config says so
GPU_RESOURCES = (
    {
        "gpu": 1,
        "slurm_partition": config["resources"].get("gpu_partition", "gpu"),
        **(
            {"gpu_model": config["resources"]["gpu_model"]}
            if config["resources"].get("gpu_model")
            else {}
        ),
    }
    if DEVICE == "cuda"
    else {}
)
TRAIN_IDS = [
    s for s in IDS if ROWS[s]["split"] != "test" and ROWS[s]["labels"] is not None
]
_n_val = min(SEG.get("validation_cases", 1), max(len(TRAIN_IDS) - 1, 0))
VAL_IDS = TRAIN_IDS[len(TRAIN_IDS) - _n_val :]
FIT_IDS = TRAIN_IDS[: len(TRAIN_IDS) - _n_val]
SEGMENT_IDS = [
    s
    for s in IDS
    if ROWS[s]["image"] is not None
    and (ROWS[s]["split"] == "test" or ROWS[s]["labels"] is None)
]
DICE_IDS = [s for s in SEGMENT_IDS if ROWS[s]["reference_labels"] is not None]


def model_cfg(name):
    return SEG["models"][name]


def segment_backend(name):
    """train (our checkpoint) | nnunet (an nnU-Net v2 model folder) | onnx (an exported model)."""
    m = model_cfg(name)
    for kind in ("train", "nnunet", "onnx"):
        if kind in m:
            return kind
    raise WorkflowError(
        f"segmentation model {name!r} needs a `train`, `nnunet` or `onnx` section"
    )


def segment_model_input(name):
    """The file(s) a segmentation job needs for its model (Hub models are fetched by the job)."""
    kind, m = segment_backend(name), model_cfg(name)
    if kind == "train":
        return [f"results/models/{name}/checkpoint.pt"]
    if kind == "onnx":
        return [m["onnx"]["file"]]
    folder = m["nnunet"].get("folder")
    return [os.path.join(folder, "plans.json")] if folder else []


def segment_batches():
    """(model, batch index, sample ids): one job loads a model once and segments a batch."""
    n = max(1, int(SEG.get("batch_size", 8)))
    for m in MODELS:
        for b in range(0, len(SEGMENT_IDS), n):
            yield m, b // n, SEGMENT_IDS[b : b + n]


# sample -> its batch index (the same for every model)
SEGMENT_BATCH = {s: b for m, b, ids in segment_batches() for s in ids}


def segment_staging(model, batch):
    """Where a batch job leaves its label maps (one per scan it could read) and manifest.json."""
    return f"results/models/{model}/segmented/batch{batch}"


def row(wc):
    return ROWS[wc.sample]


def has_image(s):
    return ROWS[s]["image"] is not None


def has_echoes(s):
    return ROWS[s]["echoes"] is not None or ROWS[s]["sequence"] == "mese"


def has_labels(s):
    return ROWS[s]["labels"] is not None


def labels_path(wc):
    """The label map analyses use: the sheet's own (imported) if given, else the first model's."""
    if has_labels(wc.sample) or not MODELS:
        return f"results/{wc.sample}/labels/provided.nii.gz"
    return f"results/{wc.sample}/labels/{MODELS[0]}.nii.gz"


def has_any_labels(s):
    return has_labels(s) or (bool(MODELS) and s in SEGMENT_IDS)


# The analyses' label map (LABELS), with femoral subregions (11-15) when configured (REGIONS): a
# plain pattern where it is the same for every sample, since Snakemake's call of an input function
# costs about 0.1 ms a job (a graph of 10k scans: 1 s each).
if not MODELS or all(has_labels(s) for s in IDS):
    LABELS = "results/{sample}/labels/provided.nii.gz"
elif not any(has_labels(s) for s in IDS):
    LABELS = f"results/{{sample}}/labels/{MODELS[0]}.nii.gz"
else:
    LABELS = fixed_signature(labels_path)
REGIONS = (
    "results/{sample}/labels/subregions.nii.gz"
    if config["thickness"].get("femoral_subregions", False)
    else LABELS
)


def sheet_input(paths):
    """A rule's input from the sheet ({sample: path}): a plain pattern when the paths follow one (as
    data/{sample}.nii.gz), else a function of the sample (Snakemake calls it once per job).
    """
    return id_pattern(paths) or fixed_signature(lambda wc: paths[wc.sample])


# import_labels checks a sheet's label map against the ingested image, where the sheet gives one (a
# pattern when every row does, an optional input, maybe empty, when only some do), and remaps it
# from the row's convention (a constant when the sheet has one): per-job functions only where needed.
_LABELLED = [s for s in IDS if has_labels(s)]
if all(has_image(s) for s in _LABELLED):
    IMPORT_IMAGE = {"image": "results/{sample}/image.nii.gz"}
elif not any(has_image(s) for s in _LABELLED):
    IMPORT_IMAGE = {}
else:
    IMPORT_IMAGE = {
        "image": fixed_signature(
            lambda wc: (
                f"results/{wc.sample}/image.nii.gz" if has_image(wc.sample) else []
            )
        )
    }
_conventions = {ROWS[s]["label_convention"] for s in _LABELLED}
LABEL_CONVENTION = (
    _conventions.pop()
    if len(_conventions) == 1
    else fixed_signature(lambda wc: row(wc)["label_convention"])
)


def cohort_tables():
    t = []
    with_labels = [s for s in IDS if has_any_labels(s)]
    if MODELS and DICE_IDS:
        t.append("results/tables/dice.csv")
    if config["thickness"]["activate"] and with_labels:
        t.append("results/tables/thickness.csv")
    if config["t2"]["activate"] and any(has_echoes(s) for s in with_labels):
        t.append("results/tables/t2.csv")
    if any(has_image(s) for s in IDS):
        t.append("results/tables/qc.csv")
    if NSM_FIT_IDS and (BSCORE_FIT_IDS or SHAPE.get("bscore_model")):
        t.append("results/tables/bscore.csv")
    return t


SHAPE = config.get("shape", {"activate": False})
NSM = SHAPE.get("name", "nsm_femur")
NSM_PRETRAINED = SHAPE.get("pretrained", {}).get("folder", "")
# knees with label maps (so with meshes): all are fitted; training uses the train split only
NSM_FIT_IDS = [s for s in IDS if has_any_labels(s)] if SHAPE.get("activate") else []
NSM_TRAIN_IDS = (
    [s for s in NSM_FIT_IDS if ROWS[s]["split"] != "test"] if not NSM_PRETRAINED else []
)
# the BScore model is fitted on the train split's healthy and OA knees; test knees are only scored
BSCORE_FIT_IDS = [
    s
    for s in NSM_FIT_IDS
    if ROWS[s]["split"] != "test" and ROWS[s]["group"] in ("healthy", "oa")
]


EXPORT = config.get("export", {"activate": False})


def export_targets():
    if not EXPORT.get("activate"):
        return []
    t = [f"results/export/{m}/parity.json" for m in TRAINED]
    t += [f"results/export/{n}/parity.json" for n in EXPORT.get("nnunet", {})]
    if EXPORT.get("minilm", False):
        t.append("results/export/minilm/parity.json")
    return t


def nsm_checkpoint():
    """The given model's checkpoint (ours: model.pth; public: model/<highest epoch>.pth), else the trained one."""
    if NSM_PRETRAINED:
        from kneeflow.shape import find_checkpoint, find_config

        cfg = json.loads(find_config(Path(NSM_PRETRAINED)).read_text())
        return str(
            find_checkpoint(
                Path(NSM_PRETRAINED), cfg, SHAPE["pretrained"].get("checkpoint")
            )
        )
    return f"results/models/{NSM}/model.pth"


def nsm_surfaces():
    """The surfaces the shape model fits (femur first): one reconstruction mesh each."""
    if NSM_PRETRAINED:
        from kneeflow.shape import find_config, public_surfaces

        p = SHAPE["pretrained"]
        cfg = json.loads(find_config(Path(NSM_PRETRAINED)).read_text())
        names = p.get("surfaces") or cfg.get("surfaces")
        return list(names or public_surfaces(cfg))
    return list(SHAPE.get("train", {}).get("surfaces", ["femur"]))


def bscore_model_path():
    """A given BScore model.json (e.g. the public one), else the one fitted on this cohort."""
    return SHAPE.get("bscore_model") or f"results/models/{NSM}/bscore/model.json"


def nsm_batches():
    """(batch index, sample ids): one job loads the shape model once and fits a batch of knees."""
    n = max(1, int(SHAPE.get("batch_size", 16)))
    for b in range(0, len(NSM_FIT_IDS), n):
        yield b // n, NSM_FIT_IDS[b : b + n]


def sample_meta():
    cols = ["sample", "group", "kl_grade", "side", "oa_severity"]
    return {c: [None if v is None else str(v) for v in SAMPLES[c]] for c in cols}


def fig_outputs(name, caption=None):
    """png (in the report, with its caption), pdf and the plotted data as csv."""
    return {
        "png": report(
            f"results/figures/{name}.png",
            caption=f"../report/fig_{caption or name}.rst",
            category="Figures",
        ),
        "pdf": f"results/figures/{name}.pdf",
        "csv": f"results/figures/{name}.csv",
    }


def figure_targets():
    if not config.get("figures", {}).get("activate", True):
        return []
    names = ["runtime_per_rule"]
    if export_targets():
        names.append("export_parity")
    if "results/tables/bscore.csv" in cohort_tables():
        names.append("bscore")
    if "results/tables/thickness.csv" in cohort_tables():
        names += ["thickness_by_group", "femoral_thickness_maps"]
    if "results/tables/t2.csv" in cohort_tables():
        names.append("t2_by_group")
    if TRAINED:
        names.append("training_curves")
        if DICE_IDS:
            names.append("dice")
    return [f"results/figures/{n}.png" for n in names]


def all_targets():
    t = [f"results/{s}/qc.json" for s in IDS if has_image(s)]
    return (
        t
        + cohort_tables()
        + export_targets()
        + ["results/provenance.tsv"]
        + figure_targets()
    )
