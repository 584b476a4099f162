"""Inference runtimes other than eager PyTorch: ONNX export (`export`) and ONNX Runtime stand-ins (`onnx`).

The layer sits after the training code and before `lipstep.pipeline` (tests/test_layers.py): it reads and
writes model directories (`lipstep.modeldir`) and calls the networks, codecs and audio front end of the
earlier layers, and the pipeline picks a runtime when it loads a model
(``AvatarPipeline.from_pretrained(..., runtime="onnx")``), so the chunk and stream logic stays one path.
onnx and onnxruntime are imported only when a function here needs them (the ``onnx`` extra).
"""

from lipstep.runtime.export import export_onnx
from lipstep.runtime.onnx import (
    EXPORT_NAME,
    ONNX_DIR,
    RUNTIMES,
    OnnxCodec,
    OnnxLogMel,
    OnnxNet,
    check_runtime,
    load_onnx_model,
    read_export,
)

__all__ = ["EXPORT_NAME", "ONNX_DIR", "RUNTIMES", "OnnxCodec", "OnnxLogMel", "OnnxNet", "check_runtime",
           "export_onnx", "load_onnx_model", "read_export"]
