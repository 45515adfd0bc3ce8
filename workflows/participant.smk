# One job per subject: the participant-level Nipype workflows (anatomical stage, ...).


rule participant:
    input:
        t1w=t1w_input,
    output:
        status=f"{OUT}/{STATUS_RECORD}",
    log:
        f"{OUT}/logs/sub-{{subject}}_participant.log",
    container:
        CONTAINER_IMAGE
    threads: CONFIG.nprocs or 2
    resources:
        mem_mb=lambda wildcards, attempt: 4000 * attempt,
        runtime=lambda wildcards, attempt: 60 * attempt,
    params:
        bids=BIDS_DIR,
        out=lambda w, output: str(output_dir_of(output[0])),
        work=WORK,
        config=str(RUN_CONFIG),
        symprep=SYMPREP,
    shell:
        "{params.symprep} {params.bids} {params.out} participant "
        "--participant-label {wildcards.subject} --config {params.config} "
        "--work-dir {params.work} --nthreads {threads} --mem {resources.mem_mb} "
        "--skip-bids-validation > {log} 2>&1"
