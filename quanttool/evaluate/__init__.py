"""evaluate: where did the accuracy go? Per layer (isolated and accumulated SQNR, cosine, clipping, Conv
channels) and per model output (cosine, SQNR, top-1 agreement, accuracy with labels).

`evaluate(...) -> EvalReport`, then `render_text`, `to_json` or `write_html`. See run.py for how the models run.
"""

from __future__ import annotations

from .report import Accuracy, EvalReport, LayerReport, OutputReport, to_json
from .report_html import write_html
from .report_text import render_text
from .run import evaluate, read_labels

__all__ = ["Accuracy", "EvalReport", "LayerReport", "OutputReport", "evaluate", "read_labels", "render_text",
           "to_json", "write_html"]
