# ONNX and CoreML artifacts with measured parity: the workflow's models, nnU-Net plans/folders
# (e.g. a TotalSegmentator-style network) and all-MiniLM-L6-v2.


rule export_model:
    input:
        checkpoint="results/models/{model}/checkpoint.pt",
    output:
        onnx="results/export/{model}/{model}.onnx",
        fp32=directory("results/export/{model}/{model}_fp32.mlpackage"),
        fp16=directory("results/export/{model}/{model}_fp16.mlpackage"),
        parity=report(
            "results/export/{model}/parity.json",
            caption="../report/parity.rst",
            category="Export",
        ),
    log:
        "results/logs/export/{model}.log",
    benchmark:
        "results/benchmarks/export/{model}.tsv"
    wildcard_constraints:
        model="|".join(TRAINED) if TRAINED else "^$",
    conda:
        "../envs/export.yaml"
    threads: 1
    resources:
        mem_mb=per_attempt(8000),
        runtime=per_attempt(60),
    params:
        code=script_code("export_model"),
        onnx_atol=EXPORT["onnx_atol"],
        onnx_rtol=EXPORT["onnx_rtol"],
    script:
        "../scripts/export_model.py"


rule export_nnunet:
    input:
        plans=lambda wc: EXPORT["nnunet"][wc.net]["plans"],
    output:
        onnx="results/export/{net}/{net}.onnx",
        fp32=directory("results/export/{net}/{net}_fp32.mlpackage"),
        fp16=directory("results/export/{net}/{net}_fp16.mlpackage"),
        parity="results/export/{net}/parity.json",
    log:
        "results/logs/export/{net}.log",
    benchmark:
        "results/benchmarks/export/{net}.tsv"
    wildcard_constraints:
        net="|".join(EXPORT["nnunet"]) or "^$",
    conda:
        "../envs/export.yaml"
    threads: 1
    resources:
        mem_mb=per_attempt(16000),
        runtime=per_attempt(60),
    params:
        code=script_code("export_nnunet"),
        net=lambda wc: EXPORT["nnunet"][wc.net],
        onnx_atol=EXPORT["onnx_atol"],
        onnx_rtol=EXPORT["onnx_rtol"],
    script:
        "../scripts/export_nnunet.py"


rule export_minilm:
    output:
        onnx="results/export/minilm/minilm.onnx",
        fp32=directory("results/export/minilm/minilm_fp32.mlpackage"),
        fp16=directory("results/export/minilm/minilm_fp16.mlpackage"),
        tokenizer="results/export/minilm/tokenizer.json",
        parity="results/export/minilm/parity.json",
    log:
        "results/logs/export/minilm.log",
    benchmark:
        "results/benchmarks/export/minilm.tsv"
    conda:
        "../envs/export.yaml"
    threads: 1
    resources:
        mem_mb=per_attempt(6000),
        runtime=per_attempt(30),
    params:
        code=script_code("export_minilm"),
        atol=EXPORT["minilm_atol"],
    script:
        "../scripts/export_minilm.py"
