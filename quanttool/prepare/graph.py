"""Graph bookkeeping shared by the preparation passes: who reads what, renaming, dead-code removal,
topological order and node names. Everything is aware of subgraphs (If/Loop/Scan bodies read outer names)."""

from __future__ import annotations

import heapq
from collections import defaultdict

import onnx
from onnx import helper

DEFAULT_DOMAINS = ("", "ai.onnx")


def subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    graphs: list[onnx.GraphProto] = []
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            graphs.append(attr.g)
        elif attr.type == onnx.AttributeProto.GRAPHS:
            graphs.extend(attr.graphs)
    return graphs


def outer_names(graph: onnx.GraphProto) -> set[str]:
    """Names a subgraph reads from its enclosing scope (not defined inside it)."""
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    used = {o.name for o in graph.output}
    for node in graph.node:
        defined.update(node.output)
        used.update(node.input)
        for sub in subgraphs(node):
            used |= outer_names(sub)
    return used - defined - {""}


def node_reads(node: onnx.NodeProto) -> list[str]:
    """Every tensor a node reads: its inputs plus what its subgraphs take from the outer scope."""
    names = [name for name in node.input if name]
    for sub in subgraphs(node):
        names.extend(sorted(outer_names(sub)))
    return names


def readers(graph: onnx.GraphProto) -> dict[str, list[int]]:
    """tensor name -> indices of the nodes reading it (each node once)."""
    result: dict[str, list[int]] = defaultdict(list)
    for index, node in enumerate(graph.node):
        for name in dict.fromkeys(node_reads(node)):
            result[name].append(index)
    return result


def producers(graph: onnx.GraphProto) -> dict[str, int]:
    return {name: index for index, node in enumerate(graph.node) for name in node.output if name}


def attribute(node: onnx.NodeProto, name: str, default=None):
    """The value of a node attribute, or `default` when the node does not set it."""
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def initializers(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in graph.initializer}


def graph_output_names(graph: onnx.GraphProto) -> set[str]:
    return {o.name for o in graph.output}


def tensor_shapes(graph: onnx.GraphProto) -> dict[str, tuple[int | None, ...]]:
    """Known shapes (None for a dynamic dim) from inputs, value_info, outputs and initializers."""
    shapes: dict[str, tuple[int | None, ...]] = {}
    for info in list(graph.input) + list(graph.value_info) + list(graph.output):
        tensor_type = info.type.tensor_type
        if info.type.HasField("tensor_type") and tensor_type.HasField("shape"):
            shapes[info.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim)
    for tensor in graph.initializer:
        shapes[tensor.name] = tuple(tensor.dims)
    return shapes


def is_static(shape: tuple[int | None, ...] | None) -> bool:
    return shape is not None and all(isinstance(d, int) and d >= 0 for d in shape)


def unique_name(base: str, taken: set[str]) -> str:
    name, k = base, 1
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    taken.add(name)
    return name


def all_names(graph: onnx.GraphProto) -> set[str]:
    """Every tensor name in the graph, so new initializers never collide with an existing one."""
    names = {i.name for i in graph.input} | {o.name for o in graph.output} | {t.name for t in graph.initializer}
    for node in graph.node:
        names.update(node.output)
        names.update(node_reads(node))
    return names


def rename_reads(graph: onnx.GraphProto, old: str, new: str, *, nested: bool = False) -> None:
    """Make every reader of `old` read `new` instead (in subgraphs too)."""
    for node in graph.node:
        for k, name in enumerate(node.input):
            if name == old:
                node.input[k] = new
        for sub in subgraphs(node):
            rename_reads(sub, old, new, nested=True)
    if nested:  # a subgraph output may name an outer tensor directly
        for out in graph.output:
            if out.name == old:
                out.name = new


def rename_tensor(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Rename a node-produced tensor everywhere: its producer, its readers and its value_info."""
    for node in graph.node:
        for k, name in enumerate(node.output):
            if name == old:
                node.output[k] = new
    rename_reads(graph, old, new)
    for info in graph.value_info:
        if info.name == old:
            info.name = new


def replace_nodes(graph: onnx.GraphProto, replacements: dict[int, list[onnx.NodeProto]]) -> None:
    """Rebuild the node list, putting replacements[i] (possibly empty: delete) in place of node i."""
    if not replacements:
        return
    nodes: list[onnx.NodeProto] = []
    for index, node in enumerate(graph.node):
        for item in replacements.get(index, [node]):
            copy = onnx.NodeProto()
            copy.CopyFrom(item)
            nodes.append(copy)
    graph.ClearField("node")
    graph.node.extend(nodes)


def remove_dead(graph: onnx.GraphProto) -> None:
    """Drop nodes no graph output depends on, unused initializers and value_info of vanished tensors."""
    produced = producers(graph)
    live = set(graph_output_names(graph))
    stack = list(live)
    live_nodes: set[int] = set()
    while stack:
        index = produced.get(stack.pop())
        if index is None or index in live_nodes:
            continue
        live_nodes.add(index)
        for name in node_reads(graph.node[index]):
            if name not in live:
                live.add(name)
                stack.append(name)
    replace_nodes(graph, {i: [] for i in range(len(graph.node)) if i not in live_nodes})
    kept = [t for t in graph.initializer if t.name in live]
    if len(kept) != len(graph.initializer):
        graph.ClearField("initializer")
        graph.initializer.extend(kept)
    produced = set(producers(graph)) - graph_output_names(graph)
    infos = [info for info in graph.value_info if info.name in produced]
    graph.ClearField("value_info")
    graph.value_info.extend(infos)


def topo_sort(graph: onnx.GraphProto) -> None:
    """Stable topological order: among ready nodes, the earliest in the current order goes first.
    A cycle (invalid model) leaves the remaining nodes in their current order rather than failing here."""
    produced = producers(graph)
    waiting: dict[int, set[int]] = {}
    dependents: dict[int, list[int]] = defaultdict(list)
    for index, node in enumerate(graph.node):
        deps = {produced[name] for name in node_reads(node) if name in produced} - {index}
        waiting[index] = deps
        for dep in deps:
            dependents[dep].append(index)
    ready = [i for i, deps in waiting.items() if not deps]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        index = heapq.heappop(ready)
        order.append(index)
        for child in dependents[index]:
            waiting[child].discard(index)
            if not waiting[child]:
                heapq.heappush(ready, child)
    placed = set(order)
    order += [i for i in range(len(graph.node)) if i not in placed]
    if order != list(range(len(graph.node))):
        nodes = [graph.node[i] for i in order]
        replace_nodes(graph, {0: nodes, **{i: [] for i in range(1, len(graph.node))}})


def name_nodes(graph: onnx.GraphProto) -> None:
    """Give unnamed (or duplicate-named) nodes the name f"{op_type}_{index}", unique in the graph."""
    taken = {node.name for node in graph.node if node.name}
    seen: set[str] = set()
    for index, node in enumerate(graph.node):
        if not node.name or node.name in seen:
            node.name = unique_name(f"{node.op_type}_{index}", taken)
        seen.add(node.name)
