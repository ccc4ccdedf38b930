"""PyTorch-native int8: torchao's PT2E flow with the x86 inductor quantizer, under
`torch.compile`, and dynamic int8 for Linear layers. torchao is a required dependency, but
`benchmarks/gpu_check.sh` runs dlkit from the source tree where it may be missing: then these
raise DlkitError (a benchmark variant is then skipped with that reason).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from toolkit.errors import DlkitError


def pt2e_int8(model, calibration: np.ndarray, batch_size: int = 16):
    """Static int8 through torchao's PT2E flow with the x86 inductor quantizer.

    Returns the converted module; run it under `torch.compile` (inductor, freezing on) for
    int8 kernels, at a fixed batch size. Needs `torch.export.export(..., strict=True)`: the
    default non-strict export fails in `prepare_pt2e` for ResNets with this torchao.
    """
    try:
        from torchao.quantization.pt2e import (
            allow_exported_model_train_eval,
            move_exported_model_to_eval,
        )
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
            X86InductorQuantizer,
            get_default_x86_inductor_quantization_config,
        )
    except ImportError as exc:
        raise DlkitError(f"PyTorch-native int8 needs torchao ({exc}); pip install torchao") from exc

    example = torch.from_numpy(calibration[:batch_size])
    with torch.no_grad():
        graph = torch.export.export(model.eval(), (example,), strict=True).module()
        quantizer = X86InductorQuantizer().set_global(
            get_default_x86_inductor_quantization_config()
        )
        prepared = prepare_pt2e(graph, quantizer)
        for start in range(0, len(calibration), batch_size):
            prepared(torch.from_numpy(calibration[start : start + batch_size]))
        converted = convert_pt2e(prepared)
    move_exported_model_to_eval(converted)
    allow_exported_model_train_eval(converted)  # so runners may call .eval() like on any model
    return converted


def compile_int8(converted, example):
    """`torch.compile` a `pt2e_int8` module for a fixed input shape (that of `example`), with
    inductor freezing so the int8 weights are pre-packed for oneDNN. Compiles now (about 10 s
    for ResNet-18 on 2 cores): freezing must be on while the graph is compiled, and passing it
    through `torch.compile(options=...)` fails to lower the quantized convolutions here.

    Compiled under `torch.inference_mode()`, the mode runners call it in: compiled under
    `no_grad` instead, the runner's inference tensors fail dynamo's dispatch-key guard, and the
    recompile (without freezing) falls back to fp32 convolutions around quantize/dequantize
    pairs: as slow as eager fp32 (measured: ResNet-18 int8 at 1.0x eager fp32 that way, 4-6x
    compiled in the runner's mode)."""
    import torchao.quantization.pt2e.inductor_passes.x86  # noqa: F401  (int8 fusion patterns)

    compiled = torch.compile(converted, dynamic=False)
    with (
        torch._inductor.config.patch(freezing=True),
        torch.inference_mode(),
        warnings.catch_warnings(),
    ):
        # torch's own int8 lowering copies a tensor the way it warns against; under
        # `-W error` that warning would abort the lowering.
        warnings.filterwarnings("ignore", "To copy construct from a tensor", UserWarning)
        compiled(example)  # a tensor made outside inference mode, as runners make theirs
    return compiled


def dynamic_int8_linear(model):
    """Int8 weights and dynamically quantized activations for every Linear layer (torchao)."""
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    except ImportError as exc:
        raise DlkitError(f"PyTorch-native int8 needs torchao ({exc}); pip install torchao") from exc
    quantize_(model.eval(), Int8DynamicActivationInt8WeightConfig())
    return model
