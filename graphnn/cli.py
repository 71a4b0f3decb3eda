"""The ``graphnn`` command line.

    graphnn dump MODEL [--opt-level 2] [--after PASS] [--batch 32] [--freeze]
                 [--emit kir|llvm|asm|opencl]
    graphnn compile MODEL --out build/NAME [--batch 1] [--triple T] [--cpu C] [--features F]
                    [--weights-file]
    graphnn devices
    graphnn passes

MODEL is a built-in model name (``graphnn.models``: digits-cnn, mlp, cnn-bn) or a saved-model
file. ``dump`` prints the IR after the whole pipeline, or after the first run of ``--after``.
"""

from __future__ import annotations

import argparse
import os
import sys

from graphnn.errors import GraphnnError


def _graph(model: str, batch: int | None):  # type: ignore[no-untyped-def]
    from graphnn import models
    from graphnn.io.saved_model import load_model
    from graphnn.passes.specialize import specialize

    if os.path.exists(model):
        graph = load_model(model).graph
    else:
        graph, _ = models.inference_graph(model)
    if batch is not None:
        graph = specialize(graph, {p.name: (batch, *p.shape[1:]) for p in graph.placeholders
                                   if p.name is not None})
    return graph


def cmd_dump(args: argparse.Namespace) -> int:
    from graphnn.passes import PassManager
    from graphnn.text_ir import print_graph

    graph = _graph(args.model, args.batch)
    pm = PassManager(opt_level=args.opt_level, verify=True, dump_dir=args.dump_dir,
                     variables_as_constants=args.freeze)
    if args.after is not None and args.after not in [p for p, _ in pm.passes]:
        print(f"graphnn: pass {args.after!r} is not in the O{args.opt_level} pipeline "
              f"({', '.join(p for p, _ in pm.passes)})", file=sys.stderr)
        return 2
    pm.run(graph)
    if args.emit:
        return _emit(pm.history[-1].graph, args.emit)
    stage = next((s for s in pm.history if s.name == args.after), pm.history[-1])
    print(f"# {args.model}, O{args.opt_level}, after {stage.name}")
    print(print_graph(stage.graph))
    if args.stats:
        print(pm.report())
    return 0


def _emit(graph, what: str) -> int:  # type: ignore[no-untyped-def]
    """Print the code the LLVM or OpenCL backend generates for ``graph`` (static shapes)."""
    from graphnn.backends.kernel.ir import format_kernel
    from graphnn.backends.llvm import LLVMBackend

    if any(d is None for n in graph.nodes for d in n.shape):
        print("graphnn: --emit needs static shapes: pass --batch N", file=sys.stderr)
        return 2
    if what == "opencl":
        from graphnn.backends.opencl import OpenCLBackend

        ocl = OpenCLBackend().compile(graph, list(graph.outputs))
        print(ocl.source)
        if ocl.fallback_ops:
            print(f"# ops without OpenCL kernels (run by numpy on the host): "
                  f"{', '.join(sorted(ocl.fallback_ops))}", file=sys.stderr)
        return 0
    exe = LLVMBackend(cache=False, native_conv_grads=True).compile(graph, list(graph.outputs))
    if what == "kir":
        print("\n\n".join(format_kernel(k) for k in exe.kernels))
    elif what == "llvm":
        print(exe.llvm_ir)
    else:
        print(exe.compiled.assembly if exe.compiled else "")
    if exe.fallback_ops:
        print(f"# ops without native code (run by numpy): {', '.join(sorted(exe.fallback_ops))}",
              file=sys.stderr)
    return 0


def cmd_compile(args: argparse.Namespace) -> int:
    """Ahead-of-time compile a saved model or built-in model into a library and header."""
    from graphnn.backends.aot import compile as aot_compile

    graph = _graph(args.model, None)
    shapes = {p.name: (args.batch, *p.shape[1:]) for p in graph.placeholders}
    art = aot_compile(graph, shapes, output=args.out, name=args.name, triple=args.triple,
                      cpu=args.cpu, features=args.features,
                      weights="file" if args.weights_file else "embedded")
    for what, path in (("object", art.object), ("header", art.header),
                       ("library", art.library), ("weights", art.weights)):
        if path:
            print(f"{what:8} {path} ({os.path.getsize(path):,} bytes)")
    target = art.metadata["target"]
    print(f"target   {target['triple']}, cpu {target['cpu']}; compiled in {art.seconds:.2f} s")
    return 0


def cmd_devices(args: argparse.Namespace) -> int:
    """List OpenCL platforms and devices with the limits kernels are sized by."""
    from graphnn.backends.opencl import list_devices, select_device

    devices = list_devices()
    for d in devices:
        print(d.line())
    chosen = select_device(None)
    name = f"{chosen.name.strip()} ({chosen.platform.name.strip()})"
    print(f"default for backend='opencl': {name}"
          + (" (GRAPHNN_OPENCL_DEVICE)" if os.environ.get("GRAPHNN_OPENCL_DEVICE") else ""))
    return 0


def cmd_passes(args: argparse.Namespace) -> int:
    from graphnn.passes import PASSES, PIPELINES

    for level, names in PIPELINES.items():
        print(f"O{level}: {', '.join(names) or '(none)'}")
    print("all passes: " + ", ".join(sorted(PASSES)))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="graphnn", description="graphnn tools")
    sub = parser.add_subparsers(dest="command", required=True)
    dump = sub.add_parser("dump", help="print a model's IR after the optimisation passes")
    dump.add_argument("model", help="built-in model name or saved-model file")
    dump.add_argument("--opt-level", type=int, default=2, choices=[0, 1, 2, 3])
    dump.add_argument("--after", help="show the graph after this pass")
    dump.add_argument("--batch", type=int, help="specialise the batch dimension")
    dump.add_argument("--freeze", action="store_true", help="treat weights as constants")
    dump.add_argument("--emit", choices=["kir", "llvm", "asm", "opencl"],
                      help="print generated code: kernel IR, LLVM IR, assembly or OpenCL C")
    dump.add_argument("--dump-dir", help="also write every stage (text and DOT) here")
    dump.add_argument("--stats", action="store_true", help="print per-pass statistics")
    dump.set_defaults(fn=cmd_dump)
    comp = sub.add_parser("compile", help="compile a model ahead of time into a C library")
    comp.add_argument("model", help="built-in model name or saved-model file")
    comp.add_argument("--out", required=True, help="path stem: DIR/NAME writes DIR/libNAME.so, "
                      "DIR/NAME.h, DIR/NAME.o")
    comp.add_argument("--batch", type=int, default=1, help="the compiled batch size")
    comp.add_argument("--name", help="C prefix of the API (default: the stem of --out)")
    comp.add_argument("--triple", help="LLVM target triple (default: this host)")
    comp.add_argument("--cpu", help="target CPU, e.g. x86-64-v3 (default: this host's)")
    comp.add_argument("--features", help="LLVM target features, e.g. +avx2,+fma")
    comp.add_argument("--weights-file", action="store_true",
                      help="write the weights to NAME.weights instead of embedding them")
    comp.set_defaults(fn=cmd_compile)
    devices = sub.add_parser("devices", help="list OpenCL platforms and devices")
    devices.set_defaults(fn=cmd_devices)
    passes = sub.add_parser("passes", help="list passes and optimisation levels")
    passes.set_defaults(fn=cmd_passes)
    args = parser.parse_args(argv)
    try:
        return int(args.fn(args))
    except GraphnnError as e:
        print(f"graphnn: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
