# Group level, when `models: enabled: true`: train the configured model on the template-space T1w.
# GPU resources: `gpu=1` is Snakemake's GPU count; the SLURM executor plugin submits it as
# `sbatch --gpus=1` (the profile adds the GPU partition; gpu_model or gres there pick a type).
# Local runs do not count it unless given `--resources gpu=N`; the rule runs on whatever device
# `models.device` selects (CUDA when present, CPU otherwise).


if CONFIG.models.enabled:

    rule train:
        input:
            participant_targets(),
        output:
            metrics=f"{OUT}/group/models/{CONFIG.models.model}/metrics.json",
        log:
            f"{OUT}/logs/train_{CONFIG.models.model}.log",
        container:
            CONTAINER_IMAGE
        threads: 2
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
            # every models: option (hparams, split, downsample, ...) comes from the run's config
            "{params.symprep} train {params.bids} {params.out} --config {params.config} "
            "--no-progress > {log} 2>&1"
