# Shared setup: validate the config with symprep's own schema, discover subjects with pybids.
import shlex
import sys
from pathlib import Path

from pipeline.bids import check_bids_dir, select_participants
from pipeline.bids_names import clean_label
from pipeline.config import validate_config
from pipeline.errors import SymprepError
from pipeline.io import write_text
from pipeline.outputs import STATUS_RECORD, output_dir_of

import yaml

try:
    CONFIG = validate_config(
        {k: v for k, v in config.items() if k != "symprep_command"}, "snakemake config"
    )
    if not CONFIG.bids_dir or not CONFIG.output_dir:
        raise SymprepError(
            "set bids_dir and output_dir (e.g. --configfile configs/demo.yaml "
            "or --config bids_dir=DIR output_dir=DIR)"
        )
    LAYOUT = check_bids_dir(CONFIG.bids_dir, validate=not CONFIG.skip_bids_validation)
    SUBJECTS = select_participants(LAYOUT, CONFIG.participant_label)
except SymprepError as exc:
    raise WorkflowError(f"symprep: {exc}") from None

BIDS_DIR = str(Path(CONFIG.bids_dir).resolve())
OUT = str(Path(CONFIG.output_dir).resolve())
WORK = (
    str(Path(CONFIG.work_dir).resolve())
    if CONFIG.work_dir
    else str(Path(OUT).parent / "work")
)
# the CLI reads the same validated configuration as this workflow
RUN_CONFIG = Path(OUT) / "logs" / "snakemake_config.yaml"
_text = yaml.safe_dump(CONFIG.model_dump(), sort_keys=False)
if not RUN_CONFIG.exists() or RUN_CONFIG.read_text() != _text:
    write_text(RUN_CONFIG, _text)
# the symprep command: this interpreter's module, so a virtualenv needs no activation
SYMPREP = config.get("symprep_command") or f"{shlex.quote(sys.executable)} -m pipeline"
CONTAINER_IMAGE = "docker://ghcr.io/symprep/symprep:0.1.0"


wildcard_constraints:
    subject="[A-Za-z0-9]+",


def t1w_input(wildcards):
    return str(
        LAYOUT.get(
            subject=wildcards.subject,
            suffix="T1w",
            extension=[".nii", ".nii.gz"],
            return_type="file",
        )[0]
    )


def participant_targets():
    return expand(f"{OUT}/{STATUS_RECORD}", subject=SUBJECTS)


#: models the group stage trains (models.enabled): the models.runs, or the one models.model
MODEL_RUNS = CONFIG.models.run_names() if CONFIG.models.enabled else []
#: subjects the group stage audits (audit.enabled): audit.participant_label, or the first one
AUDIT_SUBJECTS = (
    [clean_label(s) for s in CONFIG.audit.participant_label] or SUBJECTS[:1]
    if CONFIG.audit.enabled
    else []
)
if set(AUDIT_SUBJECTS) - set(SUBJECTS):
    raise WorkflowError(
        "symprep: audit.participant_label names subjects that are not processed: "
        + ", ".join(sorted(set(AUDIT_SUBJECTS) - set(SUBJECTS)))
    )


def model_targets():
    return expand(
        f"{OUT}/group/models/{{model_run}}/metrics.json", model_run=MODEL_RUNS
    )


def audit_targets():
    return expand(
        f"{OUT}/sub-{{subject}}/audit/sub-{{subject}}_desc-invariance_residuals.tsv",
        subject=AUDIT_SUBJECTS,
    )


def group_targets():
    return [f"{OUT}/group/group_summary.json", *model_targets()]
