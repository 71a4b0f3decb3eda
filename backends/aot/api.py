"""The C API of a compiled model, as LLVM IR text linked next to its ``<name>_run``.

    int  <name>_create(<name>_context **ctx, const char *weights_path);
    void <name>_destroy(<name>_context *ctx);
    void <name>_set_num_threads(int threads);
    const char *<name>_metadata(void);            JSON: target, version, inputs, outputs
    const char *<name>_missing_cpu_feature(void); NULL when this CPU runs the code
    const char *<name>_error_string(int status);

A context owns the arena (``aligned_alloc``) and, with a weights file, the weights. Status codes
are ``STATUS`` below. Only libc, libm and pthreads are called. The CPU check reads ``cpuid`` (x86
only; on other architectures it reports nothing missing) for every ``+feature`` of the target that
``CPUID_BITS`` knows, before any generated code runs, so a library built for a newer CPU fails with
a status instead of an illegal-instruction crash.
"""

from __future__ import annotations

import numpy as np

STATUS = {"GRAPHNN_OK": 0, "GRAPHNN_ERR_ARGUMENT": 1, "GRAPHNN_ERR_MEMORY": 2,
          "GRAPHNN_ERR_CPU": 3, "GRAPHNN_ERR_WEIGHTS": 4, "GRAPHNN_ERR_INDEX": 5,
          "GRAPHNN_ERR_NEGATIVE_POWER": 6}
# a kernel's status flag (backends/kernel/ir.py: INDEX_OUT_OF_RANGE = 1, NEGATIVE_POWER = 2)
# becomes the run's status plus this
FLAG_TO_STATUS = 4
MESSAGES = ["ok", "a required pointer argument is NULL",
            "out of memory", "this CPU lacks an instruction-set feature the library was compiled "
            "for (see <name>_missing_cpu_feature)",
            "the weights file is missing, unreadable, truncated or belongs to another model",
            "an index input (take, gather, embedding) is out of range; the outputs are not valid",
            "an integer was raised to a negative power (pow); the outputs are not valid"]
WEIGHTS_MAGIC = 0x31305754484E4E47  # b"GNNWHT01" little-endian: the weights file's first 8 bytes

# feature -> (cpuid leaf, subleaf, register index eax=0 ebx=1 ecx=2 edx=3, bit); Intel SDM vol. 2A
CPUID_BITS: dict[str, tuple[int, int, int, int]] = {
    "sse3": (1, 0, 2, 0), "pclmul": (1, 0, 2, 1), "ssse3": (1, 0, 2, 9), "fma": (1, 0, 2, 12),
    "cx16": (1, 0, 2, 13), "sse4.1": (1, 0, 2, 19), "sse4.2": (1, 0, 2, 20),
    "movbe": (1, 0, 2, 22), "popcnt": (1, 0, 2, 23), "aes": (1, 0, 2, 25), "xsave": (1, 0, 2, 26),
    "avx": (1, 0, 2, 28), "f16c": (1, 0, 2, 29), "rdrnd": (1, 0, 2, 30), "sse": (1, 0, 3, 25),
    "sse2": (1, 0, 3, 26), "bmi": (7, 0, 1, 3), "avx2": (7, 0, 1, 5), "bmi2": (7, 0, 1, 8),
    "avx512f": (7, 0, 1, 16), "avx512dq": (7, 0, 1, 17), "adx": (7, 0, 1, 19),
    "avx512ifma": (7, 0, 1, 21), "avx512cd": (7, 0, 1, 28), "sha": (7, 0, 1, 29),
    "avx512bw": (7, 0, 1, 30), "avx512vl": (7, 0, 1, 31), "avx512vbmi": (7, 0, 2, 1),
    "avx512vbmi2": (7, 0, 2, 6), "gfni": (7, 0, 2, 8), "vaes": (7, 0, 2, 9),
    "vpclmulqdq": (7, 0, 2, 10), "avx512vnni": (7, 0, 2, 11), "avx512bitalg": (7, 0, 2, 12),
    "avx512vpopcntdq": (7, 0, 2, 14), "amx-bf16": (7, 0, 3, 22), "avx512fp16": (7, 0, 3, 23),
    "amx-tile": (7, 0, 3, 24), "amx-int8": (7, 0, 3, 25), "avxvnni": (7, 1, 0, 4),
    "avx512bf16": (7, 1, 0, 5), "lzcnt": (0x80000001, 0, 2, 5), "sse4a": (0x80000001, 0, 2, 6),
    "prfchw": (0x80000001, 0, 2, 8),
}

_LIBC = """
declare ptr @calloc(i64, i64)
declare ptr @aligned_alloc(i64, i64)
declare void @free(ptr)
declare ptr @fopen(ptr, ptr)
declare i64 @fread(ptr, i64, i64, ptr)
declare i32 @fclose(ptr)
declare ptr @getenv(ptr)
declare i32 @atoi(ptr)
declare i64 @sysconf(i32)
@graphnn_num_threads = external global i64
"""


def c_string(name: str, data: bytes, linkage: str = "internal") -> str:
    """A constant byte array global, NUL-terminated: ``@name = ... c"..."``."""
    body = escape(data + bytes(1))
    return f'@{name} = {linkage} constant [{len(data) + 1} x i8] c"{body}"'


def escape(data: bytes) -> str:
    r"""Bytes as an LLVM string literal body: every byte ``\XX`` (fast for megabytes)."""
    if not data:
        return ""
    pairs = np.frombuffer(data.hex().upper().encode(), dtype="S2")
    return "\\" + b"\\".join(pairs.tolist()).decode()


def _weights_ir(name: str, weights: bytes, embedded: bool, weights_id: int) -> str:
    size = max(len(weights), 1)
    if embedded:
        body = escape(weights.ljust(size, bytes(1)))
        blob = f'@{name}_weights = internal constant [{size} x i8] c"{body}", align 64'
        return blob + f"""
define internal i32 @{name}_load_weights(ptr %ctx, ptr %path) {{
  %slot = getelementptr ptr, ptr %ctx, i64 1
  store ptr @{name}_weights, ptr %slot
  ret i32 0
}}
"""
    alloc = -(-size // 64) * 64
    return f"""
@{name}_rb = internal constant [3 x i8] c"rb\\00"
define internal i32 @{name}_load_weights(ptr %ctx, ptr %path) {{
entry:
  %nopath = icmp eq ptr %path, null
  br i1 %nopath, label %argument, label %open
argument:
  ret i32 1
open:
  %f = call ptr @fopen(ptr %path, ptr @{name}_rb)
  %nofile = icmp eq ptr %f, null
  br i1 %nofile, label %bad, label %header
bad:
  ret i32 4
header:
  %hdr = alloca [2 x i64]
  %n = call i64 @fread(ptr %hdr, i64 8, i64 2, ptr %f)
  %magic = load i64, ptr %hdr
  %idp = getelementptr i64, ptr %hdr, i64 1
  %id = load i64, ptr %idp
  %ok1 = icmp eq i64 %n, 2
  %ok2 = icmp eq i64 %magic, {WEIGHTS_MAGIC}
  %ok3 = icmp eq i64 %id, {weights_id}
  %ok12 = and i1 %ok1, %ok2
  %ok = and i1 %ok12, %ok3
  br i1 %ok, label %alloc, label %close_bad
close_bad:
  call i32 @fclose(ptr %f)
  ret i32 4
alloc:
  %buf = call ptr @aligned_alloc(i64 64, i64 {alloc})
  %nobuf = icmp eq ptr %buf, null
  br i1 %nobuf, label %oom, label %read
oom:
  call i32 @fclose(ptr %f)
  ret i32 2
read:
  %slot = getelementptr ptr, ptr %ctx, i64 1
  store ptr %buf, ptr %slot
  %own = getelementptr ptr, ptr %ctx, i64 2
  store ptr %buf, ptr %own
  %got = call i64 @fread(ptr %buf, i64 1, i64 {len(weights)}, ptr %f)
  %extra = alloca i8
  %more = call i64 @fread(ptr %extra, i64 1, i64 1, ptr %f)
  call i32 @fclose(ptr %f)
  %whole = icmp eq i64 %got, {len(weights)}
  %end = icmp eq i64 %more, 0
  %fine = and i1 %whole, %end
  %status = select i1 %fine, i32 0, i32 4
  ret i32 %status
}}
"""


def _cpu_check_ir(name: str, triple: str, features: str) -> str:
    """``<name>_missing_cpu_feature``: the first required feature cpuid does not report."""
    required = [f[1:] for f in features.split(",") if f.startswith("+") and f[1:] in CPUID_BITS]
    x86 = triple.startswith(("x86_64", "i386", "i486", "i586", "i686"))
    if not x86 or not required:
        return f"define ptr @{name}_missing_cpu_feature() {{\n  ret ptr null\n}}\n"
    lines = [c_string(f"{name}_feat{k}", f.encode()) for k, f in enumerate(required)]
    lines += ["%cpuid = type { i32, i32, i32, i32 }",
              f"define ptr @{name}_missing_cpu_feature() noinline {{", "entry:"]
    asm = 'asm sideeffect "cpuid", "={ax},={bx},={cx},={dx},{ax},{cx}"'
    lines += [f"  %max0 = call %cpuid {asm}(i32 0, i32 0)",
              "  %maxb = extractvalue %cpuid %max0, 0",
              f"  %maxe0 = call %cpuid {asm}(i32 {0x80000000}, i32 0)",
              "  %maxe = extractvalue %cpuid %maxe0, 0",
              "  br label %f0"]
    for k, feat in enumerate(required):
        leaf, sub, reg, bit = CPUID_BITS[feat]
        top = "%maxe" if leaf >= 0x80000000 else "%maxb"
        signed_leaf = leaf - (1 << 32) if leaf >= 1 << 31 else leaf
        lines += [f"f{k}:",
                  f"  %has{k} = icmp uge i32 {top}, {signed_leaf}",
                  f"  br i1 %has{k}, label %q{k}, label %missing{k}",
                  f"q{k}:",
                  f"  %r{k} = call %cpuid {asm}(i32 {signed_leaf}, i32 {sub})",
                  f"  %v{k} = extractvalue %cpuid %r{k}, {reg}",
                  f"  %b{k} = and i32 %v{k}, {1 << bit if bit < 31 else -(1 << 31)}",
                  f"  %set{k} = icmp ne i32 %b{k}, 0",
                  f"  br i1 %set{k}, label %f{k + 1}, label %missing{k}",
                  f"missing{k}:",
                  f"  ret ptr @{name}_feat{k}"]
    lines += [f"f{len(required)}:", "  ret ptr null", "}"]
    return "\n".join(lines) + "\n"


def render_api(name: str, arena_bytes: int, weights: bytes, embedded: bool, weights_id: int,
               metadata: str, triple: str, features: str) -> str:
    """The LLVM IR text of the C API (see the module docstring)."""
    sc_nprocessors_onln = 58 if "apple" in triple or "darwin" in triple else 84
    arena = max(-(-arena_bytes // 64) * 64, 64)
    errors = "\n".join(c_string(f"{name}_err{k}", m.replace("<name>", name).encode())
                       for k, m in enumerate(MESSAGES))
    table = ", ".join(f"ptr @{name}_err{k}" for k in range(len(MESSAGES)))
    return _LIBC + errors + f"""
{c_string(f"{name}_meta", metadata.encode())}
@{name}_errors = internal constant [{len(MESSAGES)} x ptr] [{table}]
@{name}_unknown = internal constant [15 x i8] c"unknown status\\00"
@{name}_env = internal constant [20 x i8] c"GRAPHNN_NUM_THREADS\\00"
@{name}_threads_set = internal global i1 false

{_weights_ir(name, weights, embedded, weights_id)}
{_cpu_check_ir(name, triple, features)}
define ptr @{name}_metadata() {{
  ret ptr @{name}_meta
}}

define ptr @{name}_error_string(i32 %status) {{
entry:
  %known = icmp ult i32 %status, {len(MESSAGES)}
  br i1 %known, label %table, label %unknown
table:
  %i = zext i32 %status to i64
  %p = getelementptr ptr, ptr @{name}_errors, i64 %i
  %s = load ptr, ptr %p
  ret ptr %s
unknown:
  ret ptr @{name}_unknown
}}

define void @{name}_set_num_threads(i32 %n) {{
  %pos = icmp sgt i32 %n, 0
  %m = select i1 %pos, i32 %n, i32 1
  %w = sext i32 %m to i64
  store i64 %w, ptr @graphnn_num_threads
  store i1 true, ptr @{name}_threads_set
  ret void
}}

define internal void @{name}_init_threads() {{
entry:
  %set = load i1, ptr @{name}_threads_set
  br i1 %set, label %done, label %env
env:
  %e = call ptr @getenv(ptr @{name}_env)
  %none = icmp eq ptr %e, null
  br i1 %none, label %cores, label %parse
parse:
  %n = call i32 @atoi(ptr %e)
  %pos = icmp sgt i32 %n, 0
  br i1 %pos, label %use_env, label %cores
use_env:
  %w = sext i32 %n to i64
  store i64 %w, ptr @graphnn_num_threads
  br label %done
cores:
  %c = call i64 @sysconf(i32 {sc_nprocessors_onln})
  %cpos = icmp sgt i64 %c, 0
  %cc = select i1 %cpos, i64 %c, i64 1
  store i64 %cc, ptr @graphnn_num_threads
  br label %done
done:
  ret void
}}

define i32 @{name}_create(ptr %out, ptr %path) {{
entry:
  %noout = icmp eq ptr %out, null
  br i1 %noout, label %argument, label %cpu
argument:
  ret i32 1
cpu:
  store ptr null, ptr %out
  %missing = call ptr @{name}_missing_cpu_feature()
  %cpu_ok = icmp eq ptr %missing, null
  br i1 %cpu_ok, label %alloc, label %nocpu
nocpu:
  ret i32 3
alloc:
  call void @{name}_init_threads()
  %ctx = call ptr @calloc(i64 3, i64 8)
  %noctx = icmp eq ptr %ctx, null
  br i1 %noctx, label %oom, label %arena
oom:
  ret i32 2
arena:
  %a = call ptr @aligned_alloc(i64 64, i64 {arena})
  store ptr %a, ptr %ctx
  %noarena = icmp eq ptr %a, null
  br i1 %noarena, label %fail_oom, label %weights
fail_oom:
  call void @{name}_destroy(ptr %ctx)
  ret i32 2
weights:
  %rc = call i32 @{name}_load_weights(ptr %ctx, ptr %path)
  %loaded = icmp eq i32 %rc, 0
  br i1 %loaded, label %done, label %fail
fail:
  call void @{name}_destroy(ptr %ctx)
  ret i32 %rc
done:
  store ptr %ctx, ptr %out
  ret i32 0
}}

define void @{name}_destroy(ptr %ctx) {{
entry:
  %none = icmp eq ptr %ctx, null
  br i1 %none, label %done, label %free
free:
  %a = load ptr, ptr %ctx
  call void @free(ptr %a)
  %own = getelementptr ptr, ptr %ctx, i64 2
  %w = load ptr, ptr %own
  call void @free(ptr %w)
  call void @free(ptr %ctx)
  br label %done
done:
  ret void
}}
"""


def api_functions(name: str) -> list[str]:
    """The exported symbols (everything else in the library is internal)."""
    return [f"{name}_{f}" for f in ("create", "run", "destroy", "set_num_threads", "metadata",
                                    "missing_cpu_feature", "error_string")]
