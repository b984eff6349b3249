# Scores -> mask: allocation (global/layerwise) x structure (unstructured/n:m), with a report.


rule prune:
    input:
        scores=lambda w: MASK_RUN_BY_PREFIX[w.mask].scores_path,
    output:
        mask="results/masks/{mask}/mask.safetensors",
        report="results/masks/{mask}/report.json",
    params:
        sparsity=lambda w: MASK_RUN_BY_PREFIX[w.mask].sparsity,
        allocation=lambda w: MASK_RUN_BY_PREFIX[w.mask].allocation,
        structure=lambda w: MASK_RUN_BY_PREFIX[w.mask].structure,
    resources:
        mem_mb=4000,
        runtime=10,
    priority: 3
    conda:
        "../../environment.yml"
    log:
        "results/logs/prune/{mask}.log",
    script:
        "../scripts/prune.py"
