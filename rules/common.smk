# Sample-sheet helpers; the logic lives in kneeflow.samples (tested on its own).
from snakemake.exceptions import WorkflowError

from kneeflow.labels import BUILTIN_CONVENTIONS
from kneeflow.rule import export_src_path
from kneeflow.samples import SampleSheetError, load_samples

export_src_path(f"{workflow.basedir}/src")
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


wildcard_constraints:
    sample="[A-Za-z0-9_-]+",


def row(wc):
    return SAMPLES.loc[wc.sample]


def has_image(s):
    return SAMPLES.at[s, "image"] is not None


def has_echoes(s):
    return SAMPLES.at[s, "echoes"] is not None or SAMPLES.at[s, "sequence"] == "mese"


def has_labels(s):
    return SAMPLES.at[s, "labels"] is not None


def labels_path(wc):
    """The sample's canonical label map: imported from the sheet (segmentation skipped)."""
    return f"results/{wc.sample}/labels/provided.nii.gz"


def regions_path(wc):
    """Label map with femoral subregions (11-15) when configured, else the canonical labels."""
    if config["thickness"].get("femoral_subregions", False):
        return f"results/{wc.sample}/labels/subregions.nii.gz"
    return labels_path(wc)


def all_targets():
    t = []
    with_labels = [s for s in IDS if has_labels(s)]
    t += [f"results/{s}/qc.json" for s in IDS if has_image(s)]
    if config["thickness"]["activate"] and with_labels:
        t.append("results/tables/thickness.csv")
    if config["t2"]["activate"] and any(has_echoes(s) for s in with_labels):
        t.append("results/tables/t2.csv")
    if any(has_image(s) for s in IDS):
        t.append("results/tables/qc.csv")
    return t
