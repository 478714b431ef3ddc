"""quanttool: post-training int8 quantization for ONNX models.

The flow, one module each: inputs -> prepare -> observe -> algorithms -> table -> rewrite -> evaluate.
"""

import os

__version__ = "0.1.0"

# onnxruntime's Linux wheels (1.32 here) queue telemetry events (process path, OS, a device id kept under
# ~/.cache/Microsoft/DeveloperTools) for upload to Microsoft unless this is set before the library loads.
# quanttool sends nothing anywhere: every command, and anything that imports quanttool first, runs with it off.
os.environ["ORT_DISABLE_TELEMETRY"] = "1"
