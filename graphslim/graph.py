"""Small graph utilities over ``onnx.GraphProto`` shared by the pipeline, analyses and passes.

Lookups (producer, consumers, initializers) are rebuilt on demand rather than cached on the
proto, so a pass can never read a stale index after mutating the graph.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator

import networkx as nx
import numpy as np
import onnx
from onnx import numpy_helper


def node_name(node: onnx.NodeProto) -> str:
    """How a node is named in records and messages: its name, else its first output (many
    exporters leave node names empty)."""
    return node.name or node.output[0]


def producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    """Tensor name -> the node that writes it."""
    return {out: node for node in graph.node for out in node.output if out}


def consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    """Tensor name -> nodes that read it (subgraph reads of outer names count for the node)."""
    users: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in node_reads(node):
            if not users[name] or users[name][-1] is not node:
                users[name].append(node)
    return users


def initializers(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in graph.initializer}


def node_reads(node: onnx.NodeProto) -> Iterator[str]:
    """Names a node reads: its inputs, plus outer-scope names used inside its subgraphs."""
    for name in node.input:
        if name:
            yield name
    for sub in subgraphs(node):
        yield from outer_scope_reads(sub)


def subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs


def outer_scope_reads(graph: onnx.GraphProto) -> set[str]:
    """Names a subgraph reads that it does not define itself (they come from outer scopes)."""
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    defined |= {o for n in graph.node for o in n.output}
    reads: set[str] = set()
    for node in graph.node:
        reads.update(n for n in node_reads(node) if n not in defined)
    reads.update(o.name for o in graph.output if o.name not in defined)
    return reads


def dangling_reads(graph: onnx.GraphProto) -> list[tuple[str, str]]:
    """(node, tensor) for every read of a tensor that no graph input, initializer or node
    of ``graph`` defines (subgraphs' outer reads included), then ('<output>', name) for
    graph outputs nothing writes."""
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    defined |= {o for n in graph.node for o in n.output if o}
    bad = [
        (node_name(node), name)
        for node in graph.node
        for name in node_reads(node)
        if name not in defined
    ]
    return bad + [("<output>", o.name) for o in graph.output if o.name not in defined]


def graph_output_names(graph: onnx.GraphProto) -> set[str]:
    return {o.name for o in graph.output}


def toposort(graph: onnx.GraphProto) -> bool:
    """Order nodes so every tensor is written before it is read; keep the existing order
    where it is already valid (stable). Returns True when the order changed.

    networkx's lexicographical sort with the original index as key gives the stable order.
    """
    nodes = list(graph.node)
    made_by = {out: i for i, node in enumerate(nodes) for out in node.output if out}
    g = nx.DiGraph()
    g.add_nodes_from(range(len(nodes)))
    for i, node in enumerate(nodes):
        for name in node_reads(node):
            j = made_by.get(name)
            if j is not None and j != i:
                g.add_edge(j, i)
    try:
        order = list(nx.lexicographical_topological_sort(g, key=lambda i: i))
    except nx.NetworkXUnfeasible as exc:
        cycle = nx.find_cycle(g)
        names = " -> ".join(nodes[a].name or nodes[a].op_type for a, _ in cycle)
        raise ValueError(f"graph has a cycle: {names}") from exc
    if order == list(range(len(nodes))):
        return False
    del graph.node[:]
    graph.node.extend(nodes[i] for i in order)
    return True


def remove_dead_nodes(graph: onnx.GraphProto) -> int:
    """Remove nodes none of whose outputs reach a graph output. Returns how many went."""
    live = set(graph_output_names(graph))
    keep: list[onnx.NodeProto] = []
    for node in reversed(graph.node):
        if any(o in live for o in node.output if o):
            keep.append(node)
            live.update(node_reads(node))
    removed = len(graph.node) - len(keep)
    if removed:
        keep.reverse()
        del graph.node[:]
        graph.node.extend(keep)
    return removed


def remove_unused_initializers(graph: onnx.GraphProto) -> int:
    """Drop initializers that no node (or subgraph, or graph output) reads."""
    used = {n for node in graph.node for n in node_reads(node)} | graph_output_names(graph)
    keep = [t for t in graph.initializer if t.name in used]
    dropped = {t.name for t in graph.initializer} - {t.name for t in keep}
    if dropped:
        del graph.initializer[:]
        graph.initializer.extend(keep)
        # IR < 4 models also list initializers as graph inputs; a dropped initializer must not
        # stay behind as an input the user would suddenly have to feed.
        ins = [i for i in graph.input if i.name not in dropped]
        if len(ins) != len(graph.input):
            del graph.input[:]
            graph.input.extend(ins)
    return len(dropped)


def list_initializers_as_inputs(g: onnx.GraphProto) -> None:
    """Before IR 4 every initializer must also be a graph input: list the missing ones and
    update the declared shape of those whose tensor changed (folded, pruned)."""
    inputs = {i.name: i for i in g.input}
    for t in g.initializer:
        vi = onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
        if t.name not in inputs:
            g.input.append(vi)
        elif [d.dim_value for d in inputs[t.name].type.tensor_type.shape.dim] != list(t.dims):
            inputs[t.name].type.CopyFrom(vi.type)


def remove_stale_value_info(graph: onnx.GraphProto) -> int:
    """Drop value_info entries for tensors that no longer exist."""
    present = {o for n in graph.node for o in n.output}
    keep = [v for v in graph.value_info if v.name in present]
    removed = len(graph.value_info) - len(keep)
    if removed:
        del graph.value_info[:]
        graph.value_info.extend(keep)
    return removed


def real_inputs(graph: onnx.GraphProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs that are fed at run time (not initializers listed as inputs)."""
    inits = {t.name for t in graph.initializer}
    return [i for i in graph.input if i.name not in inits]


def rename_input(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Make every reader of tensor ``old`` (including subgraphs) read ``new`` instead."""
    for node in graph.node:
        for k, name in enumerate(node.input):
            if name == old:
                node.input[k] = new
        for sub in subgraphs(node):
            if old in outer_scope_reads(sub):
                _rename_in_subgraph(sub, old, new)
    for out in graph.output:
        if out.name == old:
            out.name = new


def _rename_in_subgraph(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        for k, name in enumerate(node.input):
            if name == old:
                node.input[k] = new
        for sub in subgraphs(node):
            _rename_in_subgraph(sub, old, new)
    for out in graph.output:
        if out.name == old:
            out.name = new


def unique_name(taken: set[str], base: str) -> str:
    """``base`` if free, else ``base_1``, ``base_2``...; adds the result to ``taken``."""
    name, k = base, 0
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    taken.add(name)
    return name


def all_names(graph: onnx.GraphProto) -> set[str]:
    names = {i.name for i in graph.input} | {o.name for o in graph.output}
    names |= {t.name for t in graph.initializer}
    for node in graph.node:
        names.update(node.output)
        names.add(node.name)
    return names


def tensor_value(graph: onnx.GraphProto, name: str) -> np.ndarray | None:
    """The constant value of ``name`` if it is an initializer or a Constant node's output."""
    for t in graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    for node in graph.node:
        if node.op_type == "Constant" and node.output and node.output[0] == name:
            return constant_node_value(node)
    return None


def constant_node_value(node: onnx.NodeProto) -> np.ndarray | None:
    """Value of a ``Constant`` node, whichever attribute carries it; None if not constant."""
    for attr in node.attribute:
        if attr.name == "value":
            return numpy_helper.to_array(attr.t)
        if attr.name == "value_float":
            return np.array(attr.f, dtype=np.float32)
        if attr.name == "value_floats":
            return np.array(list(attr.floats), dtype=np.float32)
        if attr.name == "value_int":
            return np.array(attr.i, dtype=np.int64)
        if attr.name == "value_ints":
            return np.array(list(attr.ints), dtype=np.int64)
    return None


def attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def set_attr(node: onnx.NodeProto, name: str, value) -> None:
    for k, a in enumerate(node.attribute):
        if a.name == name:
            del node.attribute[k]
            break
    node.attribute.append(onnx.helper.make_attribute(name, value))


def opset_version(model: onnx.ModelProto, domain: str = "") -> int:
    for op in model.opset_import:
        if op.domain in (domain, "ai.onnx" if domain == "" else domain):
            return op.version
    return 0


def count_by(items: Iterable[str]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for it in items:
        counts[it] += 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _is_noop(
    node: onnx.NodeProto, readers: dict[str, list[onnx.NodeProto]], outputs: set[str]
) -> bool:
    if node.op_type == "Identity":
        return len(node.input) == 1 and bool(node.input[0])
    if node.op_type == "Dropout":
        # Inference: Dropout is the identity when training_mode is absent/false.
        if len(node.input) >= 3 and node.input[2]:
            return False
        mask_used = (
            len(node.output) > 1
            and node.output[1]
            and (readers.get(node.output[1]) or node.output[1] in outputs)
        )
        return not mask_used
    return False


def remove_noop_nodes(g: onnx.GraphProto, skipped: list[tuple[str, str]]) -> int:
    """Remove ``Identity`` and inference-mode ``Dropout`` (mask unused): readers of ``Y`` read
    ``X``; when ``Y`` is a graph output, ``X``'s producer writes ``Y`` so output names never
    change. One that joins a graph input, initializer or output to a graph output is kept and
    listed in ``skipped``. Returns how many were removed."""
    removed = 0
    graph_inputs = {i.name for i in g.input}
    while True:
        outputs = graph_output_names(g)
        readers = consumers(g)
        made_by = producers(g)
        target = None
        for node in g.node:
            if not _is_noop(node, readers, outputs):
                continue
            x, y = node.input[0], node.output[0]
            if y in outputs and (x in graph_inputs or x in outputs or x not in made_by):
                skipped.append(
                    (node.name or y, "joins a graph input/initializer/output to a graph output")
                )
                continue
            target = node
            break
        if target is None:
            return removed
        x, y = target.input[0], target.output[0]
        g.node.remove(target)
        if y in outputs:
            # Producer of x writes y instead; other readers of x follow.
            producer = made_by[x]
            for k, name in enumerate(producer.output):
                if name == x:
                    producer.output[k] = y
            rename_input(g, x, y)
        else:
            rename_input(g, y, x)
        removed += 1
        # Each scan lists the kept Identity nodes afresh; the last scan's list is the answer.
        skipped.clear()


def constants_to_initializers(model: onnx.ModelProto) -> tuple[int, list[tuple[str, str]]]:
    """Each top-level ``Constant`` node with output ``T`` becomes an initializer named ``T``
    (same value, dtype and bytes), so analyses that edit weights see Paddle-style weights.
    Returns (how many were converted, (node, reason) for those left alone: sparse values,
    non-tensor values, Constants inside subgraphs)."""
    g = model.graph
    skipped: list[tuple[str, str]] = []
    keep: list[onnx.NodeProto] = []
    new_inits: list[onnx.TensorProto] = []
    for node in g.node:
        if node.op_type != "Constant" or node.domain not in ("", "ai.onnx"):
            keep.append(node)
            continue
        if any(a.name == "sparse_value" for a in node.attribute):
            skipped.append((node_name(node), "sparse constant: left as a node"))
            keep.append(node)
            continue
        value = constant_node_value(node)
        if value is None:
            kinds = ", ".join(a.name for a in node.attribute) or "no value attribute"
            skipped.append((node_name(node), f"Constant with {kinds}: not converted"))
            keep.append(node)
            continue
        tensor = _tensor(node, value)
        tensor.name = node.output[0]
        new_inits.append(tensor)
    for node in g.node:
        # Named per node that owns the subgraphs, counted at any depth (If in a Loop...).
        nested = sum(_constants_in(sub) for sub in subgraphs(node))
        if nested:
            skipped.append(
                (
                    node_name(node),
                    f"{nested} Constant node(s) inside its {node.op_type} subgraphs left as "
                    "nodes (only top-level Constants become initializers)",
                )
            )
    if not new_inits:
        return 0, skipped
    del g.node[:]
    g.node.extend(keep)
    g.initializer.extend(new_inits)
    if model.ir_version < 4:
        # Before IR 4 every initializer must also be declared as a graph input.
        for t in new_inits:
            g.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    return len(new_inits), skipped


def _constants_in(graph: onnx.GraphProto) -> int:
    return sum(
        (n.op_type == "Constant") + sum(_constants_in(sub) for sub in subgraphs(n))
        for n in graph.node
    )


def _tensor(node: onnx.NodeProto, value) -> onnx.TensorProto:
    for a in node.attribute:
        if a.name == "value":
            # Copy the proto itself: keeps dtype (bfloat16, float8...) and raw bytes exactly.
            t = onnx.TensorProto()
            t.CopyFrom(a.t)
            return t
    return numpy_helper.from_array(value)


def fingerprint(model: onnx.ModelProto) -> str:
    """A cheap content key for caching analyses of ``model``: the nodes, inputs and outputs
    in full, each initializer's name, type, dims and a sample of its bytes (the first and
    last 256 and 16 spread in between). Serializing a large model to hash it costs seconds;
    weights that differ only between sampled bytes are not told apart, which analyses
    keyed by this never need (they are keyed per pass run, and cleared after any edit)."""
    import hashlib

    h = hashlib.sha1()
    g = model.graph
    for part in (*g.node, *g.input, *g.output):
        h.update(part.SerializeToString(deterministic=True))
    for t in g.initializer:
        h.update(f"{t.name}|{t.data_type}|{list(t.dims)}|".encode())
        raw = t.raw_data if t.HasField("raw_data") else t.SerializeToString()
        n = len(raw)
        h.update(raw[:256] + raw[-256:] + bytes(raw[i * n // 17] for i in range(1, 17) if n))
        h.update(str(n).encode())
    return h.hexdigest()
