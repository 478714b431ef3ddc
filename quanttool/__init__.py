"""quanttool: post-training int8 quantization for ONNX models.

The flow, one module each: inputs -> prepare -> observe -> algorithms -> table -> rewrite -> evaluate.
"""

__version__ = "0.1.0"
