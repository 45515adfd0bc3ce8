# Group level, after every participant job: status table, harmonization (gauge stage), ...


rule group:
    input:
        participant_targets(),
        models=model_targets(),  # models.enabled: its report shows them
        audits=audit_targets(),  # audit.enabled: summarized into group/audit
    output:
        summary=f"{OUT}/group/group_summary.json",
    log:
        f"{OUT}/logs/group.log",
    container:
        CONTAINER_IMAGE
    threads: 2
    resources:
        mem_mb=8000,
        runtime=120,
    params:
        bids=BIDS_DIR,
        out=lambda w, output: str(Path(output[0]).parents[1]),
        work=WORK,
        config=str(RUN_CONFIG),
        symprep=SYMPREP,
    shell:
        "{params.symprep} {params.bids} {params.out} group --config {params.config} "
        "--work-dir {params.work} --nprocs {threads} --skip-bids-validation > {log} 2>&1"
