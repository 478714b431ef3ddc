import os

os.environ["ORT_DISABLE_TELEMETRY"] = "1"  # some tests import onnxruntime before quanttool (see quanttool/__init__)
