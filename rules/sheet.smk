# The sample sheet: validated rows (the logic lives in kneeflow.workflow.samples, tested on its own) and the
# per-sample inputs taken from it (plain patterns where every row follows one).


CONVENTIONS = set(BUILTIN_CONVENTIONS) | set(config["label_conventions"])
DEMO = config["demo"]["activate"]


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
    sample=sample_id_pattern(),


def row(wc):
    return ROWS[wc.sample]


def has_image(s):
    return ROWS[s]["image"] is not None


# the samples with a scan, listed once for the cohort rules
IMAGE_IDS = [s for s in IDS if has_image(s)]


def has_echoes(s):
    return ROWS[s]["echoes"] is not None or ROWS[s]["sequence"] == "mese"


def has_labels(s):
    return ROWS[s]["labels"] is not None


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
