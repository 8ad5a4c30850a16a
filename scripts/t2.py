"""T2 map (ms) of the sample's multi-echo series, masked to cartilage, and its regional table."""

import json
from pathlib import Path

import SimpleITK as sitk

from kneeflow import io
from kneeflow.rule import run, write_table
from kneeflow.t2 import sample_t2


def main(sm):
    p = sm.params
    echoes = sitk.ReadImage(sm.input.echoes)
    tes = json.loads(Path(sm.input.times).read_text())["echo_times_ms"]
    labels = io.read_volume(sm.input.labels, what="label map")
    t2map, table, info = sample_t2(
        echoes, tes, labels, sm.wildcards.sample, method=p.method, drop_first_echo=p.drop_first_echo,
        noise_floor_snr=p.noise_floor_snr, min_ms=p.min_ms, max_ms=p.max_ms,
    )
    io.write_image(t2map, sm.output.t2map)
    write_table(table, sm.output.table)
    with open(sm.log[0], "a") as fh:
        fh.write(json.dumps(info) + "\n")


run(snakemake, main)  # noqa: F821
