"""Does the planner's cost model rank merge alternatives the way ONNX Runtime measures them?

For a handful of block shapes, builds each alternative (kept separate / merged) as its own ONNX
model, times them with ONNX Runtime (CPU, 2 intra-op threads, ORT_ENABLE_ALL, interleaved rounds,
median), and prints the model's estimate next to the measurement and whether the choice agrees.
Not a test: latencies depend on the machine. Usage:

    python benchmarks/cost_model_check.py [--rounds 15]
"""

from __future__ import annotations

import argparse

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from updp.latency import LatencySetup, benchmark
from updp.onnx_passes.cost import DEFAULT_COST_MODEL, estimate_model_cost

rng = np.random.default_rng(0)


def _model(x_shape, build):
    nodes, inits = [], []

    def const(arr):
        name = f"w{len(inits)}"
        inits.append(numpy_helper.from_array(arr.astype(np.float32), name))
        return name

    def conv(x, cin, cout, k, stride=1, groups=1):
        y = f"t{len(nodes)}"
        W = rng.standard_normal((cout, cin // groups, k, k)) * 0.1
        nodes.append(
            helper.make_node(
                "Conv",
                [x, const(W), const(rng.standard_normal(cout))],
                [y],
                kernel_shape=[k, k],
                pads=[k // 2] * 4,
                strides=[stride] * 2,
                group=groups,
            )
        )
        return y

    def matmul(x, k, n):
        y = f"t{len(nodes)}"
        nodes.append(helper.make_node("MatMul", [x, const(rng.standard_normal((k, n)) * 0.1)], [y + "m"]))
        nodes.append(helper.make_node("Add", [y + "m", const(rng.standard_normal(n))], [y]))
        return y

    out = build(conv, matmul)
    nodes[-1].output[0] = "y"
    del out
    g = helper.make_graph(
        nodes,
        "alt",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 9
    return onnx.shape_inference.infer_shapes(m)


def cases():
    out = []
    for c, hw in ((96, 56), (384, 14)):
        out.append(
            (
                f"ConvNeXt C={c} {hw}x{hw}",
                (1, c, hw, hw),
                {
                    "DW7x7 + PW CxC": lambda conv, mm, c=c: conv(conv("x", c, c, 7, groups=c), c, c, 1),
                    "dense 7x7": lambda conv, mm, c=c: conv("x", c, c, 7),
                },
            )
        )
    for c, hw, s in ((24, 56, 1), (32, 28, 1), (64, 14, 1), (96, 14, 1), (160, 7, 1), (24, 56, 2)):
        h = 6 * c
        out.append(
            (
                f"MBV2 t=6 C={c} {hw}x{hw} s{s}",
                (1, c, hw, hw),
                {
                    "PW-DW-PW": lambda conv, mm, c=c, h=h, s=s: conv(
                        conv(conv("x", c, h, 1), h, h, 3, s, groups=h), h, c, 1
                    ),
                    "dense 3x3": lambda conv, mm, c=c, s=s: conv("x", c, c, 3, s),
                },
            )
        )
    out.append(
        (
            "MBV2 t=1 C=32->16 112x112",
            (1, 32, 112, 112),
            {
                "DW-PW": lambda conv, mm: conv(conv("x", 32, 32, 3, groups=32), 32, 16, 1),
                "dense 3x3": lambda conv, mm: conv("x", 32, 16, 3),
            },
        )
    )
    out.append(
        (
            "ResNet bottleneck 256-64-64-256 56x56",
            (1, 256, 56, 56),
            {
                "separate": lambda conv, mm: conv(conv(conv("x", 256, 64, 1), 64, 64, 3), 64, 256, 1),
                "dense 3x3": lambda conv, mm: conv("x", 256, 256, 3),
            },
        )
    )
    out.append(
        (
            "ViT MLP D=192 N=197",
            (1, 197, 192),
            {
                "fc1 + fc2": lambda conv, mm: mm(mm("x", 192, 768), 768, 192),
                "merged DxD": lambda conv, mm: mm("x", 192, 192),
            },
        )
    )
    return out


def measure(models: dict[str, onnx.ModelProto], rounds: int) -> dict[str, float]:
    """Median ms per alternative from the project's one latency runner (interleaved rounds)."""
    setup = LatencySetup(threads=2, opt_level="all", warmup=3, repeats=rounds)
    report = benchmark(list(models.items()), setup)
    return {k: report.get(k, "all").median_ms for k in models}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    print(f"cost model: {DEFAULT_COST_MODEL}")
    print("ORT CPU, 2 threads, ORT_ENABLE_ALL, interleaved, median of", args.rounds)
    agree = 0
    all_cases = cases()
    for title, x_shape, alts in all_cases:
        models = {k: _model(x_shape, f) for k, f in alts.items()}
        est = {k: estimate_model_cost(m, DEFAULT_COST_MODEL) / 1e6 for k, m in models.items()}
        meas = measure(models, args.rounds)
        pick_est, pick_meas = min(est, key=est.get), min(meas, key=meas.get)
        ok = pick_est == pick_meas
        agree += ok
        print(f"\n{title}")
        for k in alts:
            print(f"  {k:16s} est {est[k]:8.3f} ms   measured {meas[k]:8.3f} ms")
        print(f"  model picks {pick_est!r}, measurement picks {pick_meas!r}: {'AGREE' if ok else 'DISAGREE'}")
    print(f"\n{agree}/{len(all_cases)} choices agree")


if __name__ == "__main__":
    main()
