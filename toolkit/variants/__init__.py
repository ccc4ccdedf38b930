"""Model variants: what each is, how each is built, and how each is judged.

    registry.py   the variants (format, precision, quantization, how built): one name set
    build.py      a variant's runner from an fp32 model (exports and quantized files made once)
    export.py     export to every exportable format behind the parity gate
    parity.py     the parity gate: logits of a converted model against the original's
    quantize.py   ONNX int8/fp16 (`dlkit quantize`), calibration, the accuracy gate
    pt2e.py       PyTorch-native int8 (torchao, optional)
    gate.py       Gate, and the one comparison of a variant with its fp32 baseline

`registry` is import-light (the CLI lists variants from it); the rest loads torch.
"""
