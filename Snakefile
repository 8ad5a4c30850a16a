# kneeflow: knee MRI -> segmentations, meshes, cartilage thickness, T2 (see README.md)
import sys

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version

min_version("9.14.1")

# the library; every job (local or on a cluster node) gets src/ on its PYTHONPATH (rules/common.smk)
sys.path.insert(0, f"{workflow.basedir}/src")
from kneeflow.workflow.schema import validate_config  # noqa: E402


configfile: "config/config.yaml"


try:
    validate_config(config, f"{workflow.basedir}/config/schemas/config.schema.yaml")
except ValueError as e:
    raise WorkflowError(str(e)) from None


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/resources.smk"
include: "rules/sheet.smk"
include: "rules/models.smk"
include: "rules/targets.smk"
include: "rules/demo.smk"
include: "rules/ingest.smk"
include: "rules/segment.smk"
include: "rules/thickness.smk"
include: "rules/t2.smk"
include: "rules/shape.smk"
include: "rules/export.smk"
include: "rules/tables.smk"
include: "rules/figures.smk"
include: "rules/report.smk"


rule all:
    default_target: True
    input:
        all_targets(),
