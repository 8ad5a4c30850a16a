"""One scan's label map from its batch's staging folder, checked against the ingested image."""

import json
from pathlib import Path

from kneeflow import io
from kneeflow.rule import run


def main(sm):
    staging = Path(sm.input.staging)
    manifest = json.loads((staging / "manifest.json").read_text())
    entry = manifest["samples"].get(sm.wildcards.sample)
    if entry is None:
        raise RuntimeError(f"{staging}/manifest.json has no entry for {sm.wildcards.sample} (stale batch? rerun it)")
    if "error" in entry:
        raise io.InputError(entry["scan"], entry["error"].removeprefix(f"{entry['scan']}: "))
    image = io.read_volume(sm.input.image)
    lab = io.read_volume(staging / entry["labels"], what="label map")
    diff = io.same_geometry(image, lab)
    if diff:
        raise io.InputError(staging / entry["labels"], f"label map does not match the ingested image {sm.input.image}: {diff}")
    # the ingested image's header exactly (NIfTI stores the affine in float32)
    lab.CopyInformation(image)
    io.write_image(lab, sm.output.nii)
    io.write_image(lab, sm.output.nrrd)
    # the batch job's record (device, weights) travels with the labels
    batch = json.loads(staging.with_name(staging.name + ".prov.json").read_text())
    return manifest["weights_sha256"], {"segmented_by": {k: batch.get(k) for k in ("rule", "device", "resources", "weights_sha256")}}


run(snakemake, main)  # noqa: F821
