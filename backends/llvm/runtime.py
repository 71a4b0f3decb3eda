"""The native runtime linked into every generated module: a parallel-for on POSIX threads.

``graphnn_parallel_for(fn, ctx, n, threads)`` runs ``fn(ctx, lo, hi)`` over ``[0, n)`` split into
``threads`` contiguous chunks: chunk 0 on the calling thread, the others on ``pthread_create``d
threads, joined before returning. It is plain LLVM IR calling libc, so the same code works in the
JIT (no GIL is involved: the Python caller is blocked in one native call) and in ahead-of-time
compiled libraries. ``graphnn_num_threads`` holds the thread count (``GRAPHNN_NUM_THREADS``).
"""

MAX_THREADS = 64

RUNTIME_IR = r"""
%task = type { ptr, ptr, i64, i64 }

@graphnn_num_threads = global i64 1

declare i32 @pthread_create(ptr, ptr, ptr, ptr)
declare i32 @pthread_join(i64, ptr)

define internal ptr @graphnn_trampoline(ptr %t) {
entry:
  %fnp = getelementptr %task, ptr %t, i32 0, i32 0
  %fn = load ptr, ptr %fnp
  %ctxp = getelementptr %task, ptr %t, i32 0, i32 1
  %ctx = load ptr, ptr %ctxp
  %lop = getelementptr %task, ptr %t, i32 0, i32 2
  %lo = load i64, ptr %lop
  %hip = getelementptr %task, ptr %t, i32 0, i32 3
  %hi = load i64, ptr %hip
  call void %fn(ptr %ctx, i64 %lo, i64 %hi)
  ret ptr null
}

define void @graphnn_parallel_for(ptr %fn, ptr %ctx, i64 %n, i64 %threads) {
entry:
  %tasks = alloca %task, i64 64
  %tids = alloca i64, i64 64
  %k = alloca i64
  %t0 = call i64 @llvm.smin.i64(i64 %threads, i64 %n)
  %t1 = call i64 @llvm.smin.i64(i64 %t0, i64 64)
  %t = call i64 @llvm.smax.i64(i64 %t1, i64 1)
  %tm1 = sub i64 %t, 1
  %np = add i64 %n, %tm1
  %chunk = sdiv i64 %np, %t
  store i64 1, ptr %k
  br label %spawn.head
spawn.head:
  %ks = load i64, ptr %k
  %more = icmp slt i64 %ks, %t
  br i1 %more, label %spawn.body, label %spawn.done
spawn.body:
  %lo = mul i64 %ks, %chunk
  %lochunk = add i64 %lo, %chunk
  %hi = call i64 @llvm.smin.i64(i64 %lochunk, i64 %n)
  %slot = getelementptr %task, ptr %tasks, i64 %ks
  %s0 = getelementptr %task, ptr %slot, i32 0, i32 0
  store ptr %fn, ptr %s0
  %s1 = getelementptr %task, ptr %slot, i32 0, i32 1
  store ptr %ctx, ptr %s1
  %s2 = getelementptr %task, ptr %slot, i32 0, i32 2
  store i64 %lo, ptr %s2
  %s3 = getelementptr %task, ptr %slot, i32 0, i32 3
  store i64 %hi, ptr %s3
  %tid = getelementptr i64, ptr %tids, i64 %ks
  %rc = call i32 @pthread_create(ptr %tid, ptr null, ptr @graphnn_trampoline, ptr %slot)
  %next = add i64 %ks, 1
  store i64 %next, ptr %k
  br label %spawn.head
spawn.done:
  %hi0 = call i64 @llvm.smin.i64(i64 %chunk, i64 %n)
  call void %fn(ptr %ctx, i64 0, i64 %hi0)
  store i64 1, ptr %k
  br label %join.head
join.head:
  %kj = load i64, ptr %k
  %jmore = icmp slt i64 %kj, %t
  br i1 %jmore, label %join.body, label %join.done
join.body:
  %tidp = getelementptr i64, ptr %tids, i64 %kj
  %tidv = load i64, ptr %tidp
  %jrc = call i32 @pthread_join(i64 %tidv, ptr null)
  %jnext = add i64 %kj, 1
  store i64 %jnext, ptr %k
  br label %join.head
join.done:
  ret void
}

declare i64 @llvm.smin.i64(i64, i64)
declare i64 @llvm.smax.i64(i64, i64)
"""
