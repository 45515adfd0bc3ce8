# Group level, when `models: enabled: true`: train each configured model (the models.runs, or the
# one models.model) on the template-space T1w into group/models/RUN; when `audit: enabled: true`:
# the invariance audit of the audited subjects. The group rule waits for both, so its report
# shows them.
# GPU resources: `gpu=1` is Snakemake's GPU count; the SLURM executor plugin submits it as
# `sbatch --gpus=1` (the profile adds the GPU partition; gpu_model or gres there pick a type).
# Local runs do not count it unless given `--resources gpu=N`; the rule runs on whatever device
# `models.device` selects (CUDA when present, CPU otherwise). Threads: `nprocs` per job, as the
# participant jobs (`--cores 2` with nprocs 1 trains two models at once).


if MODEL_RUNS:

    wildcard_constraints:
        model_run="|".join(MODEL_RUNS),

    rule train:
        input:
            participant_targets(),
        output:
            metrics=f"{OUT}/group/models/{{model_run}}/metrics.json",
        log:
            f"{OUT}/logs/train_{{model_run}}.log",
        container:
            CONTAINER_IMAGE
        threads: CONFIG.nprocs or 2
        resources:
            gpu=1,
            mem_mb=lambda wildcards, attempt: 16000 * attempt,
            runtime=240,
        params:
            bids=BIDS_DIR,
            out=lambda w, output: str(Path(output[0]).parents[3]),
            config=str(RUN_CONFIG),
            symprep=SYMPREP,
        shell:
            # every models: option (hparams, split, downsample, ...) and the run's own
            # overrides (models.runs.RUN) come from the run's config
            "{params.symprep} train {params.bids} {params.out} --config {params.config} "
            "--run {wildcards.model_run} --no-progress > {log} 2>&1"


if AUDIT_SUBJECTS:
    # participant runs per audited subject: one per transform (+ the untransformed rerun)
    AUDIT_RUNS = CONFIG.audit.n_transforms + (CONFIG.audit.reference == "rerun")

    rule audit:
        input:
            status=f"{OUT}/{STATUS_RECORD}",
        output:
            residuals=f"{OUT}/sub-{{subject}}/audit/sub-{{subject}}_desc-invariance_residuals.tsv",
        log:
            f"{OUT}/logs/sub-{{subject}}_audit.log",
        container:
            CONTAINER_IMAGE
        threads: CONFIG.nprocs or 2
        resources:
            mem_mb=lambda wildcards, attempt: 4000 * attempt,
            runtime=lambda wildcards, attempt: 60 * AUDIT_RUNS * attempt,
        params:
            bids=BIDS_DIR,
            out=lambda w, input: str(output_dir_of(input.status)),
            work=WORK,
            config=str(RUN_CONFIG),
            symprep=SYMPREP,
        shell:
            # audit.n_transforms, seed and reference come from the run's config
            "{params.symprep} audit {params.bids} {params.out} "
            "--participant-label {wildcards.subject} --config {params.config} "
            "--work-dir {params.work} --nprocs {threads} --no-progress > {log} 2>&1"
