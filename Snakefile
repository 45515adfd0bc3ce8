# symprep: the cross-subject DAG. Rules live in workflows/*.smk; library code in pipeline/.
# Run: snakemake --configfile configs/demo.yaml --cores all   (or: make demo)
from pathlib import Path

from snakemake.utils import min_version

min_version("9.0")


configfile: str(Path(workflow.basedir) / "configs" / "config.yaml")


include: "workflows/common.smk"
include: "workflows/participant.smk"
include: "workflows/group.smk"
include: "workflows/models.smk"


rule all:
    default_target: True
    input:
        group_targets(),
