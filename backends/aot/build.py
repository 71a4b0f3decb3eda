"""``graphnn.compile``: a trained model -> object file, shared library, C header (and weights).

Pipeline: take the inference graph (a compiled/fitted ``Module``, a never-called ``Module``, a
saved-model file or ``LoadedModel``, or a ``Graph`` / output nodes plus the ``Session`` holding the
weights) -> specialise the inputs to the example shapes -> freeze the weights into constants ->
the O3 pipeline (constant folding, batch-norm folding, fusion, memory planning) -> one LLVM
module (``program.build_program`` + the C API) -> LLVM O3 -> an object file for the target ->
``cc -shared`` for the host. The library needs only libc, libm and pthreads at run time.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import keyword
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import llvmlite
import llvmlite.binding as llvm
import numpy as np
from graphnn.backends.aot.api import WEIGHTS_MAGIC, api_functions, render_api
from graphnn.backends.aot.header import render_header
from graphnn.backends.aot.program import Program, TensorSpec, build_program
from graphnn.backends.llvm.gemm import vector_bits
from graphnn.backends.llvm.jit import host_features
from graphnn.backends.llvm.runtime import AOT_RUNTIME_IR

from graphnn.dtypes import as_dtype
from graphnn.errors import GraphError, GraphnnError, ShapeError
from graphnn.ir import Graph, Node

log = logging.getLogger("graphnn.aot")

C_KEYWORDS = frozenset(
    "auto break case char const continue default do double else enum extern float for goto if "
    "inline int long register restrict return short signed sizeof static struct switch typedef "
    "union unsigned void volatile while bool ctx".split())


@dataclass
class Artifact:
    """The files ``compile`` wrote (``library`` is None for a cross-compiled target) and the
    metadata the library also carries (``<name>_metadata()``)."""

    name: str
    object: str
    header: str
    library: str | None
    weights: str | None
    metadata: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0  # compile time, wall clock


def c_identifier(name: str, fallback: str) -> str:
    """``name`` made a C identifier (``conv.1/x`` -> ``conv_1_x``), or ``fallback``."""
    ident = re.sub(r"\W", "_", name or "").strip("_") or fallback
    if ident[0].isdigit():
        ident = "_" + ident
    return ident + "_" if ident in C_KEYWORDS or keyword.iskeyword(ident) else ident


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        k = seen.get(n, 0)
        seen[n] = k + 1
        out.append(n if k == 0 else f"{n}_{k}")
    return out


def inference_graph(model: Any, session: Any = None, inputs: Any = None) -> Graph:
    """The inference graph of ``model`` with variables holding their current values (see
    ``compile`` for what ``model`` may be; ``inputs`` builds the graph of a module never called).
    """
    from graphnn.io.saved_model import LoadedModel, load_model
    from graphnn.nn.module import Module, graph_of
    from graphnn.subgraph import extract

    if isinstance(model, (str, os.PathLike)):
        model = load_model(model)
    if isinstance(model, LoadedModel):
        return model.graph
    if isinstance(model, Module):
        trainer = getattr(model, "trainer", None)
        if trainer is not None and trainer.session is not None:
            outputs, session = [trainer.eval_output], trainer.session
            graph = trainer.graph
        elif graph_of(model) is None:
            return _module_graph(model, inputs)
        else:  # built before (e.g. by an earlier compile): its outputs, weights as initialised
            graph = graph_of(model)
            assert graph is not None
            outputs = list(graph.outputs)
    elif isinstance(model, Graph):
        graph, outputs = model, list(model.outputs)
    else:
        outputs = [model] if isinstance(model, Node) else list(model)
        graph = outputs[0].graph
    if not outputs:
        raise GraphError("the graph has no outputs: set graph.outputs or pass output nodes")
    values: dict[Node, np.ndarray] = {}
    variables = [n for n in graph.subgraph_order(outputs) if n.op == "variable"]
    if variables and session is not None:
        values = dict(zip(variables, session.run(variables)))
    new, _ = extract(graph, outputs, values, name=graph.name)
    return new


def _module_graph(module: Any, inputs: Any) -> Graph:
    """Call a never-called module on one placeholder ``x`` shaped like ``inputs`` but with an
    unknown batch dimension (eval mode; weights: the module's current parameter values)."""
    from graphnn.ops.source import placeholder

    example = inputs[0] if isinstance(inputs, (list, tuple)) and inputs and \
        not isinstance(inputs[0], int) else inputs
    if example is None:
        raise ShapeError("compiling a module needs an example input or its shape")
    dtype = as_dtype(example.dtype) if isinstance(example, np.ndarray) else as_dtype("float32")
    shape = tuple(np.shape(example)) if isinstance(example, np.ndarray) else tuple(example)
    with Graph(type(module).__name__.lower()) as g:
        x = placeholder((None, *shape[1:]) if shape else shape, dtype, name="x")
        module.eval()
        g.outputs = (module(x),)
    return g


def _input_shapes(graph: Graph, inputs: Any) -> dict[str, tuple[int, ...]]:
    """Placeholder name -> static shape, from arrays, shapes, or a mapping of either."""
    placeholders = graph.placeholders
    if inputs is None:
        inputs = [p.shape for p in placeholders]
    if isinstance(inputs, np.ndarray) or (isinstance(inputs, tuple) and inputs
                                          and all(isinstance(d, int) for d in inputs)):
        inputs = [inputs]
    if not isinstance(inputs, Mapping):
        if len(inputs) != len(placeholders):
            raise ShapeError(f"the model has {len(placeholders)} inputs "
                             f"({', '.join(str(p.name) for p in placeholders)}), "
                             f"{len(inputs)} example inputs were given")
        inputs = {p.name: x for p, x in zip(placeholders, inputs)}
    shapes = {}
    for p in placeholders:
        if p.name not in inputs:
            raise ShapeError(f"no example input or shape for input {p.name!r} ({p.type_str})")
        x = inputs[p.name]
        shape = tuple(np.shape(x)) if isinstance(x, np.ndarray) else tuple(x)
        if any(d is None for d in shape):
            raise ShapeError(f"input {p.name!r}: a compiled model needs every dimension, got "
                             f"{list(shape)}")
        if isinstance(x, np.ndarray) and as_dtype(x.dtype) is not p.dtype:
            raise ShapeError(f"input {p.name!r} is {p.dtype.name}, the example is {x.dtype}")
        shapes[str(p.name)] = tuple(int(d) for d in shape)
    return shapes


def prepare(model: Any, inputs: Any, session: Any = None, opt_level: int = 3) -> Graph:
    """Inference graph -> specialised, frozen, optimised and memory-planned graph."""
    from graphnn.passes import PassManager
    from graphnn.passes.specialize import freeze_variables, specialize

    graph = inference_graph(model, session, inputs)
    graph = freeze_variables(specialize(graph, _input_shapes(graph, inputs)))
    passes = [p for p in PassManager(opt_level=min(opt_level, 2)).passes] + [("plan_memory", {})]
    return PassManager(passes, verify=True).run(graph)


_V2 = ["cx16", "sahf", "popcnt", "sse3", "sse4.1", "sse4.2", "ssse3"]
_V3 = _V2 + ["avx", "avx2", "bmi", "bmi2", "f16c", "fma", "lzcnt", "movbe", "xsave"]
# The x86-64 psABI micro-architecture levels: named so the library's CPU check knows them
# (for other named CPUs only the features given explicitly are checked).
PSABI_LEVELS = {"x86-64-v2": _V2, "x86-64-v3": _V3,
                "x86-64-v4": _V3 + ["avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"]}


def target_machine(triple: str | None, cpu: str | None, features: str | None,
                   ) -> tuple[llvm.TargetMachine, str, str, str]:
    """An object-file target machine: the host by default, else any LLVM-known triple."""
    llvm.initialize_all_targets()
    llvm.initialize_all_asmprinters()
    llvm.initialize_native_asmparser()  # the CPU check's cpuid is inline assembly
    host = llvm.get_default_triple()
    triple = triple or host
    native = triple == host
    cpu = cpu or (llvm.get_host_cpu_name() if native else "generic")
    if features is None and cpu in PSABI_LEVELS:
        features = ",".join("+" + f for f in PSABI_LEVELS[cpu])
    elif features is None:
        features = host_features() if native and cpu == llvm.get_host_cpu_name() else ""
    try:
        target = llvm.Target.from_triple(triple)
    except RuntimeError as e:
        raise GraphnnError(f"unknown target triple {triple!r}: {e}") from None
    tm = target.create_target_machine(cpu=cpu, features=features, opt=3, reloc="pic",
                                      codemodel="default")
    return tm, triple, cpu, features


def _weights_id(weights: bytes) -> int:
    return int.from_bytes(hashlib.sha256(weights).digest()[:8], "little") >> 1  # fits an i64


def object_code(program: Program, tm: llvm.TargetMachine, triple: str, cpu: str, features: str,
                embedded: bool, metadata: dict[str, Any]) -> tuple[bytes, str]:
    """Link the program, its C API and the runtime; internalise; O3; emit an object file.
    Returns the object bytes and the optimised IR."""
    api = render_api(program.name, program.arena_bytes, program.weights, embedded,
                     _weights_id(program.weights), json.dumps(metadata), triple, features)
    module = llvm.parse_assembly(program.llvm_ir)
    for text in (api, AOT_RUNTIME_IR):
        module.link_in(llvm.parse_assembly(text))
    module.triple, module.data_layout = triple, str(tm.target_data)
    exported = set(api_functions(program.name))
    for fn in module.functions:
        if not fn.is_declaration and fn.name not in exported:
            fn.linkage = "internal"
    for gv in module.global_variables:
        if not gv.is_declaration and not gv.name.startswith("llvm."):  # (llvm.global_dtors)
            gv.linkage = "internal"
    module.verify()
    pto = llvm.create_pipeline_tuning_options(speed_level=3)
    pto.loop_vectorization = True
    pto.slp_vectorization = True
    pb = llvm.create_pass_builder(tm, pto)
    pb.getModulePassManager().run(module, pb)
    return tm.emit_object(module), str(module)


def find_c_compiler() -> list[str] | None:
    """The command that links shared libraries: ``$CC``, else the first of cc, gcc, clang on
    PATH, else zig's bundled clang when the ``ziglang`` package is installed (a C toolchain from
    pip, for machines with Python and nothing else); None when there is none."""
    env = os.environ.get("CC")
    if env and shutil.which(env):
        return [str(shutil.which(env))]
    found = next((p for p in map(shutil.which, ("cc", "gcc", "clang")) if p), None)
    if found:
        return [found]
    if importlib.util.find_spec("ziglang") is not None:
        return [sys.executable, "-m", "ziglang", "cc"]
    return None


def link_shared(obj: str, library: str) -> None:
    """``cc -shared -o library obj -lm -lpthread``.

    Raises:  GraphnnError when no C compiler is installed (naming what to install) or linking
             fails (with the linker's message).
    """
    cc = find_c_compiler()
    if cc is None:
        raise GraphnnError(f"linking {library} needs a C compiler (cc, gcc or clang) and none is "
                           "on PATH: install one (Debian/Ubuntu: apt install gcc; Fedora: dnf "
                           "install gcc; macOS: xcode-select --install) or, with pip only, "
                           f"pip install ziglang. The object file {obj} is written; link it "
                           "with: cc -shared -o LIB OBJ -lm -lpthread")
    cmd = [*cc, "-shared", "-o", library, obj, "-lm", "-lpthread"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise GraphnnError(f"linking failed: {' '.join(cmd)}\n{proc.stderr.strip()}")


def compile(model: Any, inputs: Any = None, output: str = "build/model", target: str = "llvm",
            *, session: Any = None, name: str | None = None, triple: str | None = None,
            cpu: str | None = None, features: str | None = None, weights: str = "embedded",
            input_names: Sequence[str] | None = None, output_names: Sequence[str] | None = None,
            opt_level: int = 3, dump_dir: str | None = None) -> Artifact:
    """Compile a model ahead of time into a standalone library with a C header.

    Args:
        model: a ``Module`` compiled and fitted (``model.compile(...); model.fit(...)``), a
            saved-model path or ``LoadedModel``, a ``Graph`` with outputs set, or output node(s);
            with a graph or nodes, ``session`` holds the weights (else the initial values).
        inputs: per model input (placeholder order, or a dict by placeholder name) an example
            array or a shape; dimensions unknown in the graph (the batch) become these.
        output: path stem: ``build/digits`` writes ``build/digits.o``, ``build/digits.h``,
            ``build/libdigits.so`` (host targets) and, with ``weights="file"``,
            ``build/digits.weights``.
        target: "llvm" (CPU code through LLVM; the only code generator for libraries so far).
        name: the C prefix of the API (default: the stem of ``output``).
        triple, cpu, features: LLVM target (default: this host). For another triple only the
            object file, header and weights are written (no shared library).
        weights: "embedded" (read-only data of the library) or "file" (loaded by
            ``<name>_create(&ctx, path)``; checked by a magic number and a model id).
        input_names, output_names: C names of the arguments (default: the placeholders' names;
            ``output`` or ``output0``, ``output1``, ...).
        opt_level: graph optimisation level before code generation (memory planning always).
        dump_dir: also write the kernel IR and the optimised LLVM IR there.

    Returns:  an ``Artifact`` naming the files and the metadata.

    Raises:  GraphError for ops without a native kernel, state-changing or random ops, or a graph
             without outputs; ShapeError for missing or mismatched example inputs; GraphnnError
             for an unknown triple, or when no C compiler is present to link the library.
    """
    from graphnn.backends.kernel.ir import format_kernel

    import graphnn

    start = time.perf_counter()
    if target != "llvm":
        raise GraphnnError(f"graphnn.compile: target {target!r} is not supported; use 'llvm'")
    if weights not in ("embedded", "file"):
        raise GraphnnError(f"weights must be 'embedded' or 'file', got {weights!r}")
    folder, stem = os.path.split(os.fspath(output))
    name = c_identifier(name or stem, "model")
    graph = prepare(model, inputs, session, opt_level)
    in_names = _unique([c_identifier(n, f"input{k}") for k, n in enumerate(
        input_names or [p.name or "" for p in graph.placeholders])])
    default_out = ["output"] if len(graph.outputs) == 1 else \
        [f"output{k}" for k in range(len(graph.outputs))]
    out_names = _unique([c_identifier(n, f"output{k}") for k, n in enumerate(
        output_names or default_out)])
    if len(in_names) != len(graph.placeholders) or len(out_names) != len(graph.outputs):
        raise GraphnnError(f"the model has {len(graph.placeholders)} inputs and "
                           f"{len(graph.outputs)} outputs; names given: {in_names}, {out_names}")
    tm, triple, cpu, features = target_machine(triple, cpu, features)
    program = build_program(graph, name, in_names, out_names, vector_bits(features))
    metadata = {
        "name": name, "graphnn_version": graphnn.__version__,
        "llvmlite_version": llvmlite.__version__,
        "target": {"triple": triple, "cpu": cpu, "features": features},
        "inputs": [_spec_json(s) for s in program.inputs],
        "outputs": [_spec_json(s) for s in program.outputs],
        "weights": {"storage": weights, "bytes": len(program.weights),
                    "id": _weights_id(program.weights)},
        "arena_bytes": program.arena_bytes, "kernels": len(program.kernels),
    }
    obj, optimised = object_code(program, tm, triple, cpu, features, weights == "embedded",
                                 metadata)
    if folder:
        os.makedirs(folder, exist_ok=True)
    base = os.path.join(folder, name if stem == name else stem)
    art = Artifact(name, base + ".o", base + ".h", None, None, metadata)
    _write(art.object, obj)
    _write(art.header, render_header(name, metadata).encode())
    if weights == "file":
        art.weights = base + ".weights"
        header = np.array([WEIGHTS_MAGIC, _weights_id(program.weights)], "<u8").tobytes()
        _write(art.weights, header + program.weights)
    if triple == llvm.get_default_triple():
        art.library = os.path.join(folder, f"lib{name}.so")
        link_shared(art.object, art.library)
    if dump_dir:
        os.makedirs(dump_dir, exist_ok=True)
        _write(os.path.join(dump_dir, f"aot_{name}.kir"),
               "\n\n".join(format_kernel(k) for k in program.kernels).encode())
        _write(os.path.join(dump_dir, f"aot_{name}.opt.ll"), optimised.encode())
    art.seconds = time.perf_counter() - start
    log.debug("compiled %s for %s (%s) in %.2f s", name, triple, cpu, art.seconds)
    return art


def _spec_json(s: TensorSpec) -> dict[str, Any]:
    return {"name": s.name, "dtype": s.dtype.name, "shape": list(s.shape), "bytes": s.nbytes}


def _write(path: str, data: bytes) -> None:
    """Atomically, so a crash never leaves half a library next to a good header."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
