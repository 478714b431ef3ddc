"""Observe activations in onnxruntime's blocked (NCHWc) layout, skipping the reorder each exposed tensor costs.

On x86 onnxruntime runs Conv chains in a blocked channel layout ([N, C/b, H, W, b], b = 8 or 16). A tensor
exposed as a graph output must leave that layout: onnxruntime inserts a ReorderOutput, a full copy of the
tensor per image. On MobileNetV2 with its 65 observed tensors those copies were most of the exposed run's extra
cost: 15.2 ms per image, 10.4 ms without them, plain inference 9.9 (scripts/bench_observe_run.py). The statistics (stats.py) do not depend on the order of the values, so the blocked tensor serves as well
when it is a permutation of the plain one, i.e. when no channel padding was added: C a multiple of the block.

How: onnxruntime optimizes the exposed model once and writes its optimized graph; every ReorderOutput that only
feeds an observed output is dropped and its blocked input exposed instead; the result runs without further
optimization. The block is 8 or 16 (MLAS), so C % 16 == 0 guarantees no padding for either; the shapes are
checked again on the first image (`Blocked.agrees`). Histograms, counts, min and max are those of the plain
tensor exactly; the float64 sums differ in the last bits (another summation order), as between the C kernel
and the numpy fallback.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field

import numpy as np
import onnx

from .errors import QuantError
from .runtime import session, with_outputs

PADDING_FREE = 16  # the largest NCHWc block MLAS uses (AVX-512); C % 16 == 0 means no padding for any block


@dataclass
class Blocked:
    """An observing session: `outputs` are the names to fetch, `names[i]` the observed tensor `outputs[i]`
    holds; `channels[output]` the channel count of each blocked output (for the first-image check)."""

    sess: object
    outputs: list[str]
    names: list[str]
    channels: dict[str, int] = field(default_factory=dict)

    def agrees(self, values: list[np.ndarray]) -> bool:
        """True if every blocked output has exactly its plain tensor's channels (no padding)."""
        return all(value.ndim >= 2 and value.shape[1] == self.channels[name]
                   for name, value in zip(self.outputs, values) if name in self.channels)


def _attribute(node: onnx.NodeProto, key: str, default: int) -> int:
    return next((a.i for a in node.attribute if a.name == key), default)


def observing_session(model: onnx.ModelProto, names: list[str], threads: int, what: str,
                      blocked: bool = True) -> Blocked:
    """A session computing `model`'s tensors `names`, fetching blocked tensors where that skips a reorder."""
    exposed = with_outputs(model, names)
    if not blocked or os.environ.get("QUANTTOOL_NO_BLOCKED", "") not in ("", "0"):
        return Blocked(session(exposed, threads, what), list(names), list(names))
    with tempfile.TemporaryDirectory(prefix="quanttool-observe-") as folder:
        path = os.path.join(folder, "optimized.onnx")
        # big initializers go to a side file: the graph is all this needs to rewrite
        config = {"session.optimized_model_external_initializers_file_name": "weights.bin",
                  "session.optimized_model_external_initializers_min_size_in_bytes": "1024"}
        try:
            plain = session(exposed, threads, what, config=config, save_optimized=path)
        except QuantError:  # maybe only the saving failed: the plain session says what is wrong, if anything
            return Blocked(session(exposed, threads, what), list(names), list(names))
        try:
            return _swapped(path, model, names, threads, what) or Blocked(plain, list(names), list(names))
        except Exception:  # noqa: BLE001 - only a speed-up: an optimized graph we cannot rewrite runs as it is
            return Blocked(plain, list(names), list(names))


def _swapped(path: str, model: onnx.ModelProto, names: list[str], threads: int, what: str) -> Blocked | None:
    """The optimized graph at `path` fetching blocked tensors instead of their reorders; None if none can be."""
    optimized = onnx.load(path, load_external_data=False)
    graph = optimized.graph
    wanted = set(names) - {out.name for out in model.graph.output}
    consumed = {name for node in graph.node for name in node.input}
    swap, channels, keep = {}, {}, []
    for node in graph.node:
        out = node.output[0] if node.output else ""
        c = _attribute(node, "channels", 0)
        if (node.op_type == "ReorderOutput" and node.domain == "com.microsoft.nchwc" and out in wanted
                and out not in consumed and c > 0 and c % PADDING_FREE == 0):
            swap[out] = node.input[0]
            channels[node.input[0]] = c
        else:
            keep.append(node)
    if not swap:  # no blocked layout here (another CPU, no Conv): the plain session is the one
        return None
    del graph.node[:]
    graph.node.extend(keep)
    for out in graph.output:
        if out.name in swap:
            out.CopyFrom(onnx.ValueInfoProto(name=swap[out.name]))
    onnx.save(optimized, path)  # the weights stay in weights.bin, referenced relative to the folder
    sess = session(path, threads, what, optimize=False)
    return Blocked(sess, [swap.get(name, name) for name in names], list(names), channels)
