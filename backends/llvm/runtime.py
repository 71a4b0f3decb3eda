"""The native runtime of generated code: a parallel-for on POSIX threads, in LLVM IR.

``graphnn_parallel_for(fn, ctx, n, threads)`` runs ``fn(ctx, lo, hi)`` over ``[0, n)`` split into
``threads`` contiguous chunks, chunk 0 on the calling thread, and returns when all are done. No
GIL is involved: the Python caller is blocked in one native call. Two implementations:

- ``RUNTIME_IR`` (ahead-of-time libraries): the other chunks run on threads from
  ``pthread_create``, joined before returning, so a library owns no thread between calls and
  can be unloaded; a chunk whose thread cannot be created runs on the caller.
- ``POOL_IR`` (the JIT): one pool per process of parked worker threads, started on first use and
  grown to the largest thread count asked for. A call publishes the task under a mutex and
  bumps a generation counter; workers spin on the counter for a while (about 0.1 ms: the next
  kernel usually follows at once), then sleep on a condition variable. The caller runs chunk 0
  and waits for the count of pending chunks to reach zero (spinning, then sleeping). Spinners
  call ``sched_yield`` every 256 polls: when the scheduler has put the thread they wait for on
  their own CPU, it runs at once instead of after the whole spin (W1 batch 1 ran at 0.3 ms
  instead of 0.04 in most processes on the 2-core machine without it). A call that
  finds the pool busy (another Python thread in a native run) falls back to the spawning
  version (a thread per chunk, created and joined per call).
  ``install_pool()`` compiles it once and exports its symbols to every JIT module;
  after ``fork`` the child resets the pool (its workers did not survive the fork).

``graphnn_num_threads`` (one per module) holds the thread count (``GRAPHNN_NUM_THREADS``).

``graphnn_scratch_alloc(bytes)`` / ``graphnn_scratch_free(p)``: the templates' per-call scratch
buffers (im2col columns, Winograd's transformed tiles, packed panels), from a cache of
``SCRATCH_SLOTS`` buffers kept between calls (each claimed by a compare-and-swap: the smallest
free one big enough, else any free one, grown), so threads running at once get buffers of
their own and a kernel's calls reuse them. Plain malloc and free churned: glibc returns a
freed top of the heap to the system past its trim threshold, and every call then faulted its
pages in again (221 page faults a call, 2.2x the time, for a Winograd convolution whose 1 MiB of
buffers went back to the system after each call, in a process that had also run another
model). The cache keeps, at most, each slot's largest buffer until the process ends, or, in an
AOT library (``AOT_RUNTIME_IR``), until it is unloaded: its destructor frees them.
"""

from __future__ import annotations

import ctypes
import functools
import os
import threading
from typing import Any

# buffers the scratch cache keeps (graphnn_scratch_alloc): a kernel's (at most 4) for each of
# 16 threads; past it, buffers come from malloc and go back to free
SCRATCH_SLOTS = 64

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
  %failed = icmp ne i32 %rc, 0
  br i1 %failed, label %spawn.inline, label %spawn.next
spawn.inline:                       ; no thread: run the chunk here, and join nothing for it
  store i64 0, ptr %tid
  call void %fn(ptr %ctx, i64 %lo, i64 %hi)
  br label %spawn.next
spawn.next:
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
  %spawned = icmp ne i64 %tidv, 0
  br i1 %spawned, label %join.call, label %join.next
join.call:
  %jrc = call i32 @pthread_join(i64 %tidv, ptr null)
  br label %join.next
join.next:
  %jnext = add i64 %kj, 1
  store i64 %jnext, ptr %k
  br label %join.head
join.done:
  ret void
}

declare i64 @llvm.smin.i64(i64, i64)
declare i64 @llvm.smax.i64(i64, i64)
""" + r"""
; -- scratch buffers: a cache of SLOTS malloc'd buffers, claimed by compare-and-swap ---------
@gs_busy = internal global [SLOTS x i64] zeroinitializer, align 64
@gs_ptr = internal global [SLOTS x ptr] zeroinitializer, align 64
@gs_size = internal global [SLOTS x i64] zeroinitializer, align 64
@gs_owner = internal global [SLOTS x i64] zeroinitializer, align 64  ; the last thread's id

declare ptr @aligned_alloc(i64, i64)
declare void @free(ptr)
declare i64 @pthread_self()

define internal i1 @gs_claim(i64 %i) {
entry:
  %bp = getelementptr [SLOTS x i64], ptr @gs_busy, i64 0, i64 %i
  %r = cmpxchg ptr %bp, i64 0, i64 1 acquire monotonic
  %ok = extractvalue { i64, i1 } %r, 1
  ret i1 %ok
}

; the free slot holding at least %bytes with the smallest buffer, this thread's last ones
; first (likely still in its core's caches): the smallest key, size + 2^62 for others' (-1: none)
define internal i64 @gs_best(i64 %bytes, i64 %self) {
entry:
  br label %scan
scan:
  %i = phi i64 [0, %entry], [%i1, %scan]
  %best = phi i64 [-1, %entry], [%best1, %scan]
  %bkey = phi i64 [-1, %entry], [%bkey1, %scan]
  %sp = getelementptr [SLOTS x i64], ptr @gs_size, i64 0, i64 %i
  %size = load atomic i64, ptr %sp monotonic, align 8
  %bp = getelementptr [SLOTS x i64], ptr @gs_busy, i64 0, i64 %i
  %busy = load atomic i64, ptr %bp monotonic, align 8
  %op = getelementptr [SLOTS x i64], ptr @gs_owner, i64 0, i64 %i
  %owner = load atomic i64, ptr %op monotonic, align 8
  %free = icmp eq i64 %busy, 0
  %big = icmp uge i64 %size, %bytes
  %fits = and i1 %free, %big
  %mine = icmp eq i64 %owner, %self
  %penalty = select i1 %mine, i64 0, i64 4611686018427387904
  %key = add i64 %size, %penalty
  %smaller = icmp ult i64 %key, %bkey
  %better = and i1 %fits, %smaller
  %best1 = select i1 %better, i64 %i, i64 %best
  %bkey1 = select i1 %better, i64 %key, i64 %bkey
  %i1 = add i64 %i, 1
  %more = icmp ult i64 %i1, SLOTS
  br i1 %more, label %scan, label %done
done:
  ret i64 %best1
}

define ptr @graphnn_scratch_alloc(i64 %want) {
entry:
  %w63 = add i64 %want, 63                ; whole cache lines, at least one (aligned_alloc's
  %whole = and i64 %w63, -64              ; size is a multiple of its alignment; never 0)
  %bytes = call i64 @llvm.smax.i64(i64 %whole, i64 64)
  %self = call i64 @pthread_self()
  %best = call i64 @gs_best(i64 %bytes, i64 %self)
  %found = icmp sge i64 %best, 0
  br i1 %found, label %claim.best, label %any
claim.best:
  %got = call i1 @gs_claim(i64 %best)
  br i1 %got, label %claimed, label %any
any:                                    ; else any free slot, its buffer grown
  %j = phi i64 [0, %entry], [0, %claim.best], [%j1, %any.next]
  %gotj = call i1 @gs_claim(i64 %j)
  br i1 %gotj, label %claimed, label %any.next
any.next:
  %j1 = add i64 %j, 1
  %jmore = icmp ult i64 %j1, SLOTS
  br i1 %jmore, label %any, label %untracked
untracked:                              ; every slot busy: a buffer of its own
  %p = call ptr @aligned_alloc(i64 64, i64 %bytes)
  ret ptr %p
claimed:                                ; the slot is ours: no one else writes it
  %k = phi i64 [%best, %claim.best], [%j, %any]
  %kop = getelementptr [SLOTS x i64], ptr @gs_owner, i64 0, i64 %k
  store atomic i64 %self, ptr %kop monotonic, align 8
  %ksp = getelementptr [SLOTS x i64], ptr @gs_size, i64 0, i64 %k
  %have = load atomic i64, ptr %ksp monotonic, align 8
  %kpp = getelementptr [SLOTS x ptr], ptr @gs_ptr, i64 0, i64 %k
  %old = load atomic ptr, ptr %kpp monotonic, align 8
  %enough = icmp uge i64 %have, %bytes
  br i1 %enough, label %reuse, label %grow
reuse:
  ret ptr %old
grow:
  store atomic ptr null, ptr %kpp monotonic, align 8  ; before free: malloc may hand the
  call void @free(ptr %old)                           ; address to another slot at once
  %new = call ptr @aligned_alloc(i64 64, i64 %bytes)  ; vectors never straddle two lines
  %null = icmp eq ptr %new, null
  %kept = select i1 %null, i64 0, i64 %bytes
  store atomic ptr %new, ptr %kpp monotonic, align 8
  store atomic i64 %kept, ptr %ksp monotonic, align 8
  br i1 %null, label %failed, label %reuse.new
failed:                                 ; out of memory: give the slot back, return null
  %fbp = getelementptr [SLOTS x i64], ptr @gs_busy, i64 0, i64 %k
  store atomic i64 0, ptr %fbp release, align 8
  ret ptr null
reuse.new:
  ret ptr %new
}

define void @graphnn_scratch_free(ptr %p) {
entry:
  %none = icmp eq ptr %p, null
  br i1 %none, label %done, label %scan
scan:                                   ; the slot holding p is the caller's: give it back
  %i = phi i64 [0, %entry], [%i1, %scan.next]
  %pp = getelementptr [SLOTS x ptr], ptr @gs_ptr, i64 0, i64 %i
  %q = load atomic ptr, ptr %pp monotonic, align 8
  %mine = icmp eq ptr %q, %p
  br i1 %mine, label %release, label %scan.next
release:
  %bp = getelementptr [SLOTS x i64], ptr @gs_busy, i64 0, i64 %i
  store atomic i64 0, ptr %bp release, align 8
  ret void
scan.next:
  %i1 = add i64 %i, 1
  %more = icmp ult i64 %i1, SLOTS
  br i1 %more, label %scan, label %untracked
untracked:
  call void @free(ptr %p)
  br label %done
done:
  ret void
}
""".replace("SLOTS", str(SCRATCH_SLOTS))

# An ahead-of-time library's destructor (run by dlclose, or at exit): its cached scratch
# buffers back to free, so loading and unloading a library leaks nothing. (The JIT's cache lives
# as long as the process: its pool module is never unloaded.)
AOT_RUNTIME_IR = RUNTIME_IR + r"""
define internal void @gs_release_all() {
entry:
  br label %loop
loop:
  %i = phi i64 [0, %entry], [%i1, %loop]
  %pp = getelementptr [SLOTS x ptr], ptr @gs_ptr, i64 0, i64 %i
  %p = load ptr, ptr %pp
  call void @free(ptr %p)
  store ptr null, ptr %pp
  %sp = getelementptr [SLOTS x i64], ptr @gs_size, i64 0, i64 %i
  store i64 0, ptr %sp
  %i1 = add i64 %i, 1
  %more = icmp ult i64 %i1, SLOTS
  br i1 %more, label %loop, label %done
done:
  ret void
}

@llvm.global_dtors = appending global [1 x { i32, ptr, ptr }]
    [{ i32, ptr, ptr } { i32 65535, ptr @gs_release_all, ptr null }]
""".replace("SLOTS", str(SCRATCH_SLOTS))

# The JIT modules' own part of the runtime: the thread count; graphnn_parallel_for resolves to
# the pool's (install_pool).
THREADS_IR = "@graphnn_num_threads = global i64 1\n"

SPIN = 100_000  # polls of the generation / pending counters before sleeping (~0.1 ms)

_SPAWN_IR = RUNTIME_IR.replace("@graphnn_num_threads = global i64 1\n", "").replace(
    "define void @graphnn_parallel_for(", "define internal void @graphnn_parallel_for_spawn(")
POOL_IR = _SPAWN_IR + r"""
@gp_caller = internal global [128 x i8] zeroinitializer, align 64   ; pthread_mutex_t: one caller
@gp_mutex = internal global [128 x i8] zeroinitializer, align 64    ; pthread_mutex_t: the task
@gp_work = internal global [128 x i8] zeroinitializer, align 64     ; pthread_cond_t: new task
@gp_done = internal global [128 x i8] zeroinitializer, align 64     ; pthread_cond_t: all done
@gp_workers = internal global i64 0
@gp_gen = internal global i64 0
@gp_pending = internal global i64 0
@gp_fn = internal global ptr null
@gp_ctx = internal global ptr null
@gp_n = internal global i64 0
@gp_chunk = internal global i64 0
@gp_t = internal global i64 0

declare i32 @pthread_mutex_lock(ptr)
declare i32 @pthread_mutex_trylock(ptr)
declare i32 @pthread_mutex_unlock(ptr)
declare i32 @pthread_cond_wait(ptr, ptr)
declare i32 @pthread_cond_broadcast(ptr)
declare i32 @pthread_cond_signal(ptr)
declare i32 @pthread_detach(i64)
declare i32 @sched_yield()
declare void @llvm.memset.p0.i64(ptr, i8, i64, i1)

define internal void @gp_spin(ptr %cell, i64 %value, i1 %until_equal) {
entry:                        ; poll *cell until (*cell == value) == until_equal, SPIN times at most
  %spins = alloca i64
  store i64 0, ptr %spins
  br label %spin
spin:
  %v = load atomic i64, ptr %cell acquire, align 8
  %eq = icmp eq i64 %v, %value
  %met = icmp eq i1 %eq, %until_equal
  br i1 %met, label %done, label %more
more:
  %c = load i64, ptr %spins
  %c1 = add i64 %c, 1
  store i64 %c1, ptr %spins
  %low = and i64 %c1, 255
  %due = icmp eq i64 %low, 0
  br i1 %due, label %yield, label %again
yield:                        ; let a thread waiting for this CPU run (the one polled for, often)
  %y = call i32 @sched_yield()
  br label %again
again:
  %keep = icmp slt i64 %c1, SPIN
  br i1 %keep, label %spin, label %done
done:
  ret void
}

define internal ptr @graphnn_worker(ptr %arg) {
entry:                        ; arg = generation at creation << 8 | worker index (1 to 63)
  %word = ptrtoint ptr %arg to i64
  %k = and i64 %word, 255
  %born = lshr i64 %word, 8
  %seen = alloca i64
  store i64 %born, ptr %seen  ; earlier tasks are not this worker's
  br label %idle
idle:
  %s = load i64, ptr %seen
  call void @gp_spin(ptr @gp_gen, i64 %s, i1 false)
  %l0 = call i32 @pthread_mutex_lock(ptr @gp_mutex)
  br label %wait
wait:
  %g2 = load atomic i64, ptr @gp_gen acquire, align 8
  %s2 = load i64, ptr %seen
  %same = icmp eq i64 %g2, %s2
  br i1 %same, label %sleep, label %take
sleep:
  %w0 = call i32 @pthread_cond_wait(ptr @gp_work, ptr @gp_mutex)
  br label %wait
take:
  store i64 %g2, ptr %seen
  %t = load i64, ptr @gp_t
  %mine = icmp slt i64 %k, %t
  br i1 %mine, label %work, label %skip
skip:                                      ; a smaller task than the pool: not this worker's
  %u0 = call i32 @pthread_mutex_unlock(ptr @gp_mutex)
  br label %idle
work:
  %fn = load ptr, ptr @gp_fn
  %ctx = load ptr, ptr @gp_ctx
  %n = load i64, ptr @gp_n
  %chunk = load i64, ptr @gp_chunk
  %u1 = call i32 @pthread_mutex_unlock(ptr @gp_mutex)
  %lo0 = mul i64 %k, %chunk
  %lo = call i64 @llvm.smin.i64(i64 %lo0, i64 %n)
  %hi0 = add i64 %lo0, %chunk
  %hi = call i64 @llvm.smin.i64(i64 %hi0, i64 %n)
  call void %fn(ptr %ctx, i64 %lo, i64 %hi)
  %l1 = call i32 @pthread_mutex_lock(ptr @gp_mutex)
  %r = atomicrmw sub ptr @gp_pending, i64 1 acq_rel
  %last = icmp eq i64 %r, 1
  br i1 %last, label %signal, label %unlock
signal:
  %s0 = call i32 @pthread_cond_signal(ptr @gp_done)
  br label %unlock
unlock:
  %u2 = call i32 @pthread_mutex_unlock(ptr @gp_mutex)
  br label %idle
}

define void @graphnn_parallel_for(ptr %fn, ptr %ctx, i64 %n, i64 %threads) {
entry:
  %tid = alloca i64
  %t0 = call i64 @llvm.smin.i64(i64 %threads, i64 %n)
  %t1 = call i64 @llvm.smin.i64(i64 %t0, i64 64)
  %t = call i64 @llvm.smax.i64(i64 %t1, i64 1)
  %one = icmp sle i64 %t, 1
  br i1 %one, label %inline, label %try
inline:
  call void %fn(ptr %ctx, i64 0, i64 %n)
  ret void
try:
  %busy = call i32 @pthread_mutex_trylock(ptr @gp_caller)
  %taken = icmp ne i32 %busy, 0
  br i1 %taken, label %spawn, label %grow
spawn:                                     ; another thread is running the pool
  call void @graphnn_parallel_for_spawn(ptr %fn, ptr %ctx, i64 %n, i64 %t)
  ret void
grow:
  %w = load i64, ptr @gp_workers
  %want = sub i64 %t, 1
  %enough = icmp sge i64 %w, %want
  br i1 %enough, label %publish, label %create
create:
  %k = add i64 %w, 1
  %gnow = load i64, ptr @gp_gen
  %gshift = shl i64 %gnow, 8
  %word = or i64 %gshift, %k
  %karg = inttoptr i64 %word to ptr
  %rc = call i32 @pthread_create(ptr %tid, ptr null, ptr @graphnn_worker, ptr %karg)
  %failed = icmp ne i32 %rc, 0
  br i1 %failed, label %publish, label %created
created:
  %tidv = load i64, ptr %tid
  %d0 = call i32 @pthread_detach(i64 %tidv)
  store i64 %k, ptr @gp_workers
  br label %grow
publish:
  %have = load i64, ptr @gp_workers
  %have1 = add i64 %have, 1
  %tt = call i64 @llvm.smin.i64(i64 %t, i64 %have1)
  %tm1 = sub i64 %tt, 1
  %np = add i64 %n, %tm1
  %chunk = sdiv i64 %np, %tt
  %l0 = call i32 @pthread_mutex_lock(ptr @gp_mutex)
  store ptr %fn, ptr @gp_fn
  store ptr %ctx, ptr @gp_ctx
  store i64 %n, ptr @gp_n
  store i64 %chunk, ptr @gp_chunk
  store i64 %tt, ptr @gp_t
  store atomic i64 %tm1, ptr @gp_pending release, align 8
  %g = load i64, ptr @gp_gen
  %g1 = add i64 %g, 1
  store atomic i64 %g1, ptr @gp_gen release, align 8
  %b0 = call i32 @pthread_cond_broadcast(ptr @gp_work)
  %u0 = call i32 @pthread_mutex_unlock(ptr @gp_mutex)
  %hi0 = call i64 @llvm.smin.i64(i64 %chunk, i64 %n)
  call void %fn(ptr %ctx, i64 0, i64 %hi0)
  call void @gp_spin(ptr @gp_pending, i64 0, i1 true)
  %l1 = call i32 @pthread_mutex_lock(ptr @gp_mutex)
  br label %wait
wait:
  %left2 = load atomic i64, ptr @gp_pending acquire, align 8
  %none2 = icmp eq i64 %left2, 0
  br i1 %none2, label %woken, label %sleep
sleep:
  %w0 = call i32 @pthread_cond_wait(ptr @gp_done, ptr @gp_mutex)
  br label %wait
woken:
  %u1 = call i32 @pthread_mutex_unlock(ptr @gp_mutex)
  %u2 = call i32 @pthread_mutex_unlock(ptr @gp_caller)
  ret void
}

define void @graphnn_pool_after_fork() {
entry:                                     ; the child of a fork has no workers: start afresh
  call void @llvm.memset.p0.i64(ptr @gp_caller, i8 0, i64 128, i1 false)
  call void @llvm.memset.p0.i64(ptr @gp_mutex, i8 0, i64 128, i1 false)
  call void @llvm.memset.p0.i64(ptr @gp_work, i8 0, i64 128, i1 false)
  call void @llvm.memset.p0.i64(ptr @gp_done, i8 0, i64 128, i1 false)
  store i64 0, ptr @gp_workers
  store i64 0, ptr @gp_pending
  ; no thread of the child holds a scratch buffer (the forking one runs no kernel)
  call void @llvm.memset.p0.i64(ptr @gs_busy, i8 0, i64 SLOTS_BYTES, i1 false)
  ret void
}
""".replace("SPIN", str(SPIN)).replace("SLOTS_BYTES", str(8 * SCRATCH_SLOTS))


_INSTALL_LOCK = threading.Lock()


def install_pool() -> Any:
    """Compile the pool once per process and export ``graphnn_parallel_for`` to later JIT
    modules (llvmlite's ``add_symbol``). Returns the engine, which stays alive.

    Thread-safe: sessions compiling in several Python threads at once install one pool. (A
    second, discarded engine had registered a fork hook into code that was then freed: the child
    of a later fork crashed.)"""
    with _INSTALL_LOCK:
        return _install_pool()


@functools.cache
def _install_pool() -> Any:
    import llvmlite.binding as llvm
    from graphnn.backends.llvm.jit import Target

    tm = Target.host().machine()
    module = llvm.parse_assembly(POOL_IR)
    module.verify()
    engine = llvm.create_mcjit_compiler(module, tm)
    engine.finalize_object()
    for name in ("graphnn_parallel_for", "graphnn_scratch_alloc", "graphnn_scratch_free"):
        llvm.add_symbol(name, engine.get_function_address(name))
    reset = ctypes.CFUNCTYPE(None)(engine.get_function_address("graphnn_pool_after_fork"))
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=reset)
    _KEEP_ALIVE.append(reset)  # the ctypes thunk the fork hook calls
    return engine


_KEEP_ALIVE: list[Any] = []
