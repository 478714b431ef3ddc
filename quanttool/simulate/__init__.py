"""simulate: a numpy integer-only reference of the int8 model, driven by the --params file and the int8 ONNX
model alone, compared with onnxruntime layer by layer (what a hardware design is checked against).

graph.py walks the model; linear.py (Conv/Gemm/MatMul), elementwise.py (Add/Mul/lookup tables/Relu/Clip),
pool.py (average/max pooling) and movement.py (data movement, Concat) hold one small kernel per op family;
integer.py the rounding and requantization; compare.py the comparison with onnxruntime.
"""

from .compare import LayerDiff, SimReport, compare, render
from .graph import Simulation

__all__ = ["LayerDiff", "SimReport", "Simulation", "compare", "render"]
