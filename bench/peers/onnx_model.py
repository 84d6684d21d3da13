"""Builds the one-operator ONNX models timed by ort_bench.js (needs Debian's python3-onnx, python3-numpy).

A model has `nodes` MatMulNBits nodes (domain com.microsoft) reading the same input A f32 [M, K]
(M symbolic, so one file serves every M) and each writing its own output. Every node has its own
random weights (B uint8 [N, K/block, block/2] and f32 scales [N * K/block], no zero points, so the
zero point is the format's default 8): with enough nodes that is the cold model. (Sharing one
initializer would not make a hot model: ORT prepacks each node's B into its own buffer.)
"""
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def build(paths_by_accuracy_level, k, n, block, nodes, seed=1):
    """Writes one model per accuracy level (dict level -> path): same weights, same graph."""
    if k % block:
        raise ValueError(f"K={k} is not a multiple of block_size={block}")
    rng = np.random.default_rng(seed)
    a = helper.make_tensor_value_info("A", TensorProto.FLOAT, ["M", k])
    outputs, initializers, graph_nodes = [], [], []
    for i in range(nodes):
        codes = np.frombuffer(rng.bytes(n * k // 2), dtype=np.uint8).reshape(n, k // block, block // 2)
        scales = rng.uniform(0.005, 0.02, size=n * (k // block)).astype(np.float32)
        initializers += [numpy_helper.from_array(codes, f"B{i}"), numpy_helper.from_array(scales, f"S{i}")]
        outputs.append(helper.make_tensor_value_info(f"Y{i}", TensorProto.FLOAT, ["M", n]))
        graph_nodes.append(helper.make_node(
            "MatMulNBits", ["A", f"B{i}", f"S{i}"], [f"Y{i}"], domain="com.microsoft", name=f"matmul{i}",
            K=k, N=n, bits=4, block_size=block, accuracy_level=0))
    graph = helper.make_graph(graph_nodes, "matmulnbits", [a], outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    for level, path in paths_by_accuracy_level.items():
        for node in model.graph.node:
            next(a for a in node.attribute if a.name == "accuracy_level").i = level
        onnx.save(model, str(path))
