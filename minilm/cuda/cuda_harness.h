// cuda_harness.h - run unmodified CUDA C kernels on the CPU, loudly.
//
// emulator.py compiles a kernel file with `g++ -include cuda_harness.h` (or
// clang++) into a shared library. The idea:
//   * every CUDA thread of a block is a fiber (its own small stack); one OS
//     thread runs a whole block with a round-robin scheduler that switches
//     fibers only at __syncthreads, warp collectives and exit;
//   * blocks are spread over OS threads, so atomics are real atomics;
//   * shared memory is a per-block arena filled with 0xFF bytes (NaN for
//     float/half/bf16) before every block, so reading it uninitialised shows;
//   * threads run in forward or reverse order (the Python side runs both and
//     compares), divergent __syncthreads, shuffles over exited lanes,
//     deadlocks and device assert() are reported as errors, not hangs/aborts.
// Python rewrites `__shared__` declarations into calls of static_shared /
// dynamic_shared below (see emulator.py); everything else is compiled as is.
#pragma once

// CUDA's headers in host mode give dim3, uint3, float4, __half, __nv_bfloat16
// and their conversions. Qualifiers are defined first so they expand to nothing.
#define __global__
#define __device__
#define __host__
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __shared__ __harness_error_unsupported_shared_declaration__
#define __constant__
#include <cuda_fp16.h>
#include <cuda_bf16.h>

#include <assert.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

// CPUs without a hand-written fiber switch use the portable ucontext one.
#if !defined(MINILM_HARNESS_UCONTEXT) && !defined(__x86_64__) && !defined(__aarch64__)
#define MINILM_HARNESS_UCONTEXT 1
#endif
#if defined(MINILM_HARNESS_UCONTEXT)
#if defined(__APPLE__) && !defined(_XOPEN_SOURCE)
#define _XOPEN_SOURCE 700  // macOS hides its (deprecated) ucontext functions without it
#endif
#include <ucontext.h>
#endif
#ifndef MAP_NORESERVE
#define MAP_NORESERVE 0  // only a hint: do not reserve swap for the fiber stacks
#endif

#include <atomic>
#include <chrono>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace harness {

// ---------------------------------------------------------------------------
// Launch configuration and status codes (mirrored by ctypes in emulator.py).

struct LaunchConfig {
    unsigned grid[3];
    unsigned block[3];
    uint64_t dynamic_shared;  // bytes, the launch's shared_mem argument
    uint64_t shared_limit;    // static + dynamic bytes allowed per block
    int reverse;              // 1: run threads and blocks in reverse order
    int workers;              // OS threads that run blocks
};

enum Status : int {
    ok = 0,
    assert_failed = 1,
    divergent_barrier = 2,
    warp_error = 3,
    deadlock = 4,
    bad_launch = 5,
    shared_overflow = 6,
    trap = 7,
};

// ---------------------------------------------------------------------------
// Fibers. A switch saves the running fiber's callee-saved registers on its own
// stack, records its stack pointer in its Context, and resumes another fiber.
// Hand-written for x86-64 and AArch64: swapcontext also saves the signal mask
// with a system call on every switch (a __syncthreads costs about 15x more),
// so it is only the fallback, for other CPUs or -DMINILM_HARNESS_UCONTEXT.

#if defined(MINILM_HARNESS_UCONTEXT)

#define HARNESS_FIBER_SWITCH "ucontext"

struct Context {
    ucontext_t uc;
};

inline void switch_context(Context& save, Context& load) { swapcontext(&save.uc, &load.uc); }

// A context that runs entry() on [stack, stack + bytes); entry must never return.
inline void init_context(Context& c, char* stack, size_t bytes, void (*entry)()) {
    getcontext(&c.uc);
    c.uc.uc_stack.ss_sp = stack;
    c.uc.uc_stack.ss_size = bytes;
    c.uc.uc_link = nullptr;
    makecontext(&c.uc, entry, 0);
}

#else  // hand-written: harness_switch(&save.sp, load.sp)

struct Context {
    void* sp = nullptr;  // points at the registers saved on top of the fiber's stack
};

extern "C" void harness_switch(void** save_sp, void* load_sp) __attribute__((visibility("hidden")));

// Mach-O (macOS) prefixes C symbols with an underscore and knows no .type/.size (ELF directives).
#if defined(__APPLE__)
#define HARNESS_SWITCH_BEGIN ".text\n.p2align 4\n.private_extern _harness_switch\n_harness_switch:\n"
#define HARNESS_SWITCH_END ""
#else
#define HARNESS_SWITCH_BEGIN \
    ".text\n.p2align 4\n.hidden harness_switch\n.type harness_switch, %function\nharness_switch:\n"
#define HARNESS_SWITCH_END ".size harness_switch, .-harness_switch\n"
#endif

inline void switch_context(Context& save, Context& load) { harness_switch(&save.sp, load.sp); }

inline void** aligned_top(char* stack, size_t bytes) {
    return reinterpret_cast<void**>(reinterpret_cast<uintptr_t>(stack + bytes) & ~uintptr_t(15));
}

#if defined(__x86_64__)

#define HARNESS_FIBER_SWITCH "x86-64"

// System V: rbx, rbp and r12-r15 are callee-saved. save_sp in rdi, load_sp in rsi.
asm(HARNESS_SWITCH_BEGIN R"(
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
)" HARNESS_SWITCH_END);

// Six zeroed registers, then a return address that enters entry() with the
// ABI's alignment (rsp + 8 a multiple of 16, as after a call).
inline void init_context(Context& c, char* stack, size_t bytes, void (*entry)()) {
    void** sp = aligned_top(stack, bytes) - 2;
    *sp = reinterpret_cast<void*>(entry);
    sp -= 6;
    for (int i = 0; i < 6; ++i) sp[i] = nullptr;
    c.sp = sp;
}

#elif defined(__aarch64__)

#define HARNESS_FIBER_SWITCH "aarch64"

// AAPCS64: x19-x28, the frame pointer x29, the link register x30 and d8-d15
// are callee-saved (sp too: it is the value we store). save_sp in x0, load_sp in x1.
asm(HARNESS_SWITCH_BEGIN R"(
    sub sp, sp, #160
    stp x19, x20, [sp, #0]
    stp x21, x22, [sp, #16]
    stp x23, x24, [sp, #32]
    stp x25, x26, [sp, #48]
    stp x27, x28, [sp, #64]
    stp x29, x30, [sp, #80]
    stp d8, d9, [sp, #96]
    stp d10, d11, [sp, #112]
    stp d12, d13, [sp, #128]
    stp d14, d15, [sp, #144]
    mov x9, sp
    str x9, [x0]
    mov sp, x1
    ldp x19, x20, [sp, #0]
    ldp x21, x22, [sp, #16]
    ldp x23, x24, [sp, #32]
    ldp x25, x26, [sp, #48]
    ldp x27, x28, [sp, #64]
    ldp x29, x30, [sp, #80]
    ldp d8, d9, [sp, #96]
    ldp d10, d11, [sp, #112]
    ldp d12, d13, [sp, #128]
    ldp d14, d15, [sp, #144]
    add sp, sp, #160
    ret
)" HARNESS_SWITCH_END);

// A zeroed 160-byte frame whose saved x30 is entry: `ret` jumps there with sp
// back at the 16-byte aligned top and x29 = 0 ending the frame chain.
inline void init_context(Context& c, char* stack, size_t bytes, void (*entry)()) {
    void** frame = aligned_top(stack, bytes) - 20;
    for (int i = 0; i < 20; ++i) frame[i] = nullptr;
    frame[11] = reinterpret_cast<void*>(entry);  // the x30 slot (x29 is slot 10)
    c.sp = frame;
}

#endif  // __x86_64__ / __aarch64__
#endif  // MINILM_HARNESS_UCONTEXT

constexpr size_t kStackBytes = 256 * 1024;   // per CUDA thread; printf needs a few KB
constexpr size_t kGuardBytes = 4096;         // a stack overflow faults instead of corrupting
constexpr size_t kSharedArenaBytes = 228 * 1024;
constexpr unsigned kFullMask = 0xffffffffu;

enum class FiberState { ready, at_barrier, at_warp_op, done };

enum class WarpOpKind { shfl_idx, shfl_up, shfl_down, shfl_xor, ballot, any, all, sync, reduce_add, reduce_min, reduce_max };

inline const char* warp_op_name(WarpOpKind kind) {
    static const char* names[] = {"__shfl_sync", "__shfl_up_sync", "__shfl_down_sync", "__shfl_xor_sync",
                                  "__ballot_sync", "__any_sync", "__all_sync", "__syncwarp",
                                  "__reduce_add_sync", "__reduce_min_sync", "__reduce_max_sync"};
    return names[static_cast<int>(kind)];
}

struct WarpOp {
    WarpOpKind kind;
    unsigned mask;
    uint64_t value;    // this lane's operand, as raw bits
    int lane_arg;      // srcLane / delta / laneMask
    int width;
    uint64_t result;
};

enum class BarrierKind { plain, count, all, any };

struct Fiber {
    Context context;
    char* stack_top = nullptr;
    FiberState state = FiberState::done;
    uint3 thread_idx;
    unsigned lane = 0, warp = 0;
    const char* file = "";   // where the fiber waits
    int line = 0;
    BarrierKind barrier_kind = BarrierKind::plain;
    int barrier_value = 0;   // predicate in, result out (__syncthreads_count & co.)
    WarpOp op{};
};

// Shared by all OS threads of one launch: the first error wins.
struct LaunchState {
    std::atomic<bool> failed{false};
    std::mutex mutex;
    int status = ok;
    std::string message;
};

// One per OS thread that runs blocks; reused across launches (stacks are costly).
struct Worker {
    Context scheduler;                // where run_block waits while a fiber runs
    Fiber* current = nullptr;
    std::vector<Fiber> fibers;
    char* stacks = nullptr;
    size_t stack_count = 0;
    char* shared = nullptr;
    size_t shared_static = 0;         // bytes of static __shared__ arrays in this block
    uint64_t generation = 0;          // unique per block run: keys static_shared slots
    uint3 block_idx;
    dim3 block_dim, grid_dim;
    unsigned live = 0, exited = 0, at_barrier = 0;
    unsigned rewind = 0;              // earliest run position a warp collective made ready again
    bool aborted = false;
    const LaunchConfig* config = nullptr;
    LaunchState* launch = nullptr;
    void (*body)(void*) = nullptr;    // runs the kernel with its arguments
    void* body_context = nullptr;

    ~Worker() {
        if (stacks) munmap(stacks, stack_count * (kStackBytes + kGuardBytes));
        if (shared) munmap(shared, kSharedArenaBytes);
    }
};

inline thread_local Worker* tls_worker = nullptr;
inline std::atomic<uint64_t> block_generations{0};

inline Worker& worker() { return *tls_worker; }
inline Fiber& current_fiber() { return *tls_worker->current; }

// ---------------------------------------------------------------------------
// Errors: recorded with the block and thread that found them; the fiber that
// fails never runs again and the launch stops after the current block.

inline std::string where(const Worker& w, const Fiber& f) {
    char buf[160];
    snprintf(buf, sizeof buf, "block (%u,%u,%u) thread (%u,%u,%u)", w.block_idx.x, w.block_idx.y, w.block_idx.z,
             f.thread_idx.x, f.thread_idx.y, f.thread_idx.z);
    return buf;
}

inline std::string format(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
inline std::string format(const char* fmt, ...) {
    va_list args, again;
    va_start(args, fmt);
    va_copy(again, args);
    std::string out(vsnprintf(nullptr, 0, fmt, args), '\0');
    vsnprintf(out.data(), out.size() + 1, fmt, again);
    va_end(again);
    va_end(args);
    return out;
}

inline void record_error(Worker& w, int status, const std::string& message) {
    std::lock_guard<std::mutex> lock(w.launch->mutex);
    if (!w.launch->failed.load()) {
        w.launch->status = status;
        w.launch->message = message;
        w.launch->failed.store(true);
    }
    w.aborted = true;
}

inline void yield_to_scheduler() {
    Worker& w = worker();
    switch_context(w.current->context, w.scheduler);
}

// Called from inside a CUDA thread: report and leave that thread for good.
[[noreturn]] inline void fail(int status, const std::string& message) {
    Worker& w = worker();
    record_error(w, status, message);
    yield_to_scheduler();
    __builtin_unreachable();
}

[[noreturn]] inline void device_assert_fail(const char* expr, const char* file, int line) {
    Worker& w = worker();
    fail(assert_failed, format("%s:%d: %s: Assertion `%s` failed.", file, line, where(w, *w.current).c_str(), expr));
}

// ---------------------------------------------------------------------------
// Shared memory: static __shared__ arrays and the dynamic extern __shared__
// buffer live in one per-block arena; every thread of the block gets the same
// address because the slot is keyed by the block's generation number.

inline void* shared_alloc(size_t bytes, size_t align) {
    Worker& w = worker();
    size_t dynamic = (w.config->dynamic_shared + 15) & ~size_t(15);
    size_t offset = (dynamic + w.shared_static + align - 1) & ~(align - 1);
    if (offset + bytes > w.config->shared_limit) {
        fail(shared_overflow, format("%s: __shared__ memory of the block grows to %zu bytes (%zu dynamic + static "
                                     "arrays), over the %llu bytes a block may use",
                                     where(w, *w.current).c_str(), offset + bytes, size_t(w.config->dynamic_shared),
                                     (unsigned long long)w.config->shared_limit));
    }
    w.shared_static = offset + bytes - dynamic;
    memset(w.shared + offset, 0xFF, bytes);  // poison: uninitialised reads give NaN
    return w.shared + offset;
}

template <class T, int Id>
T& static_shared() {
    static thread_local uint64_t generation = 0;
    static thread_local T* slot = nullptr;
    Worker& w = worker();
    if (generation != w.generation) {
        slot = static_cast<T*>(shared_alloc(sizeof(T), alignof(T) > 16 ? alignof(T) : 16));
        generation = w.generation;
    }
    return *slot;
}

template <class T>
T* dynamic_shared() {
    return reinterpret_cast<T*>(worker().shared);
}

// ---------------------------------------------------------------------------
// __syncthreads and friends: a fiber parks at the barrier; the scheduler
// releases the block when every live thread is parked at the same call site.

inline int barrier(BarrierKind kind, int predicate, const char* file, int line) {
    Worker& w = worker();
    Fiber& me = *w.current;
    me.state = FiberState::at_barrier;
    me.barrier_kind = kind;
    me.barrier_value = predicate != 0;
    me.file = file;
    me.line = line;
    w.at_barrier++;
    yield_to_scheduler();
    return me.barrier_value;
}

inline void syncthreads(const char* file, int line) { barrier(BarrierKind::plain, 0, file, line); }

// Runs on the scheduler when all live threads are parked. Returns false on a
// divergent barrier (threads exited before it, or waiting at different sites).
inline bool release_barrier(Worker& w) {
    const Fiber* first = nullptr;
    int count = 0;
    for (Fiber& f : w.fibers) {
        if (f.state != FiberState::at_barrier) continue;
        if (!first) first = &f;
        count += f.barrier_value;
        if (f.line != first->line || strcmp(f.file, first->file) != 0) {
            record_error(w, divergent_barrier,
                         format("divergent __syncthreads(): %s waits at %s:%d but %s waits at %s:%d; every thread "
                                "of a block must reach the same barrier",
                                where(w, *first).c_str(), first->file, first->line, where(w, f).c_str(), f.file,
                                f.line));
            return false;
        }
    }
    if (w.exited > 0) {
        record_error(w, divergent_barrier,
                     format("divergent __syncthreads() at %s:%d in block (%u,%u,%u): %u threads wait there but %u "
                            "threads of the block already returned (an early `return` before a barrier?)",
                            first->file, first->line, w.block_idx.x, w.block_idx.y, w.block_idx.z, w.at_barrier,
                            w.exited));
        return false;
    }
    int live = static_cast<int>(w.live);
    for (Fiber& f : w.fibers) {
        if (f.state != FiberState::at_barrier) continue;
        switch (f.barrier_kind) {
            case BarrierKind::plain: f.barrier_value = 0; break;
            case BarrierKind::count: f.barrier_value = count; break;
            case BarrierKind::all: f.barrier_value = count == live; break;
            case BarrierKind::any: f.barrier_value = count > 0; break;
        }
        f.state = FiberState::ready;
    }
    w.at_barrier = 0;
    return true;
}

// ---------------------------------------------------------------------------
// Warp collectives: each lane parks its operand; the last lane named in the
// mask to arrive computes every lane's result (PTX shfl.sync rules).

// "lane 0 in __shfl_sync (k.cu:12); lanes 1-31 in __syncthreads (k.cu:13)"
inline std::string lane_states(Worker& w, unsigned warp, unsigned mask) {
    auto describe = [&](const Fiber& f) {
        switch (f.state) {
            case FiberState::done: return std::string("exited");
            case FiberState::at_barrier: return format("in __syncthreads (%s:%d)", f.file, f.line);
            case FiberState::at_warp_op: return format("in %s (%s:%d)", warp_op_name(f.op.kind), f.file, f.line);
            default: return std::string("running");
        }
    };
    std::string out;
    for (unsigned lane = 0; lane < 32;) {
        unsigned idx = warp * 32 + lane;
        if (!(mask >> lane & 1) || idx >= w.fibers.size()) {
            ++lane;
            continue;
        }
        std::string state = describe(w.fibers[idx]);
        unsigned last = lane;  // extend over following lanes in the same state
        while (last + 1 < 32 && (mask >> (last + 1) & 1) && idx + (last + 1 - lane) < w.fibers.size() &&
               describe(w.fibers[idx + last + 1 - lane]) == state)
            ++last;
        out += last == lane ? format(" lane %u %s;", lane, state.c_str())
                            : format(" lanes %u-%u %s;", lane, last, state.c_str());
        lane = last + 1;
    }
    return out;
}

// Index of the lane whose value `lane` receives, or -1 if it keeps its own.
inline int shuffle_source(WarpOpKind kind, int lane, int arg, int width) {
    int seg_mask = (32 - width) & 0x1f;
    int clamp = kind == WarpOpKind::shfl_up ? 0 : 0x1f;
    int min_lane = lane & seg_mask;
    int max_lane = min_lane | (clamp & ~seg_mask);
    int j;
    bool in_range;
    switch (kind) {
        case WarpOpKind::shfl_up: j = lane - arg; in_range = j >= max_lane; break;
        case WarpOpKind::shfl_down: j = lane + arg; in_range = j <= max_lane; break;
        case WarpOpKind::shfl_xor: j = lane ^ arg; in_range = j <= max_lane; break;
        default: j = min_lane | (arg & 0x1f & ~seg_mask); in_range = j <= max_lane; break;
    }
    return in_range ? j : lane;
}

template <class Int>
Int as_int(uint64_t bits) {
    Int v;
    memcpy(&v, &bits, sizeof v);
    return v;
}

inline void complete_warp_op(Worker& w, unsigned warp, WarpOpKind kind, unsigned mask, bool is_signed) {
    Fiber* lanes = &w.fibers[warp * 32];
    uint64_t ballot = 0, sum = 0;
    int64_t smin = INT64_MAX, smax = INT64_MIN;
    uint64_t umin = UINT64_MAX, umax = 0;
    for (unsigned lane = 0; lane < 32; ++lane) {
        if (!(mask >> lane & 1)) continue;
        uint64_t v = lanes[lane].op.value;
        if (v) ballot |= 1ull << lane;
        sum += v;
        int64_t s = as_int<int32_t>(v);
        uint32_t u = as_int<uint32_t>(v);
        smin = s < smin ? s : smin, smax = s > smax ? s : smax;
        umin = u < umin ? u : umin, umax = u > umax ? u : umax;
    }
    for (unsigned lane = 0; lane < 32; ++lane) {
        if (!(mask >> lane & 1)) continue;
        Fiber& f = lanes[lane];
        switch (kind) {
            case WarpOpKind::shfl_idx:
            case WarpOpKind::shfl_up:
            case WarpOpKind::shfl_down:
            case WarpOpKind::shfl_xor: {
                int src = shuffle_source(kind, lane, f.op.lane_arg, f.op.width);
                if (!(mask >> src & 1)) {
                    fail(warp_error, format("%s at %s:%d: %s reads lane %d, which is not in the mask 0x%08x "
                                            "(the result would be undefined on a GPU)",
                                            warp_op_name(kind), f.file, f.line, where(w, f).c_str(), src, mask));
                }
                f.op.result = lanes[src].op.value;
                break;
            }
            case WarpOpKind::ballot: f.op.result = ballot; break;
            case WarpOpKind::any: f.op.result = ballot != 0; break;
            case WarpOpKind::all: f.op.result = ballot == mask; break;
            case WarpOpKind::sync: f.op.result = 0; break;
            case WarpOpKind::reduce_add: f.op.result = static_cast<uint32_t>(sum); break;
            case WarpOpKind::reduce_min: f.op.result = is_signed ? uint64_t(uint32_t(smin)) : umin; break;
            case WarpOpKind::reduce_max: f.op.result = is_signed ? uint64_t(uint32_t(smax)) : umax; break;
        }
        f.state = FiberState::ready;
    }
    // The scheduler goes back to these lanes at once: a warp runs ahead as far
    // as it can, which exposes races with other warps (see run_block).
    unsigned n = static_cast<unsigned>(w.fibers.size());
    unsigned first_lane = w.config->reverse ? warp * 32 + 31 : warp * 32;
    if (first_lane >= n) first_lane = n - 1;
    unsigned position = w.config->reverse ? n - 1 - first_lane : first_lane;
    if (position < w.rewind) w.rewind = position;
}

inline uint64_t warp_collective(WarpOpKind kind, unsigned mask, uint64_t value, int lane_arg, int width,
                                const char* file, int line, bool is_signed = false) {
    Worker& w = worker();
    Fiber& me = *w.current;
    if (!(mask >> me.lane & 1)) {
        fail(warp_error, format("%s at %s:%d: %s (lane %u) calls it with mask 0x%08x, which does not include itself",
                                warp_op_name(kind), file, line, where(w, me).c_str(), me.lane, mask));
    }
    if (width < 1 || width > 32 || (width & (width - 1))) {
        fail(warp_error, format("%s at %s:%d: width %d is not a power of two in [1, 32]", warp_op_name(kind), file,
                                line, width));
    }
    me.op = WarpOp{kind, mask, value, lane_arg, width, 0};
    me.state = FiberState::at_warp_op;
    me.file = file;
    me.line = line;
    bool everyone_here = true;
    for (unsigned lane = 0; lane < 32; ++lane) {
        if (!(mask >> lane & 1)) continue;
        unsigned idx = me.warp * 32 + lane;
        if (idx >= w.fibers.size()) {
            fail(warp_error, format("%s at %s:%d: mask 0x%08x names lane %u, but the block has only %zu threads",
                                    warp_op_name(kind), file, line, mask, lane, w.fibers.size()));
        }
        const Fiber& f = w.fibers[idx];
        if (f.state == FiberState::done) {
            fail(warp_error, format("%s at %s:%d: %s uses mask 0x%08x, but lane %u has already exited "
                                    "(a shuffle over an exited lane is undefined on a GPU)",
                                    warp_op_name(kind), file, line, where(w, me).c_str(), mask, lane));
        }
        if (f.state != FiberState::at_warp_op || f.op.kind != kind || f.op.mask != mask) everyone_here = false;
    }
    if (everyone_here) complete_warp_op(w, me.warp, kind, mask, is_signed);
    else yield_to_scheduler();
    return me.op.result;
}

// A lane that exits while others wait for it in a collective is a bug too.
inline void check_exit_against_waiting_lanes(Worker& w, Fiber& me) {
    for (unsigned lane = 0; lane < 32; ++lane) {
        unsigned idx = me.warp * 32 + lane;
        if (idx >= w.fibers.size()) break;
        const Fiber& f = w.fibers[idx];
        if (f.state == FiberState::at_warp_op && (f.op.mask >> me.lane & 1)) {
            fail(warp_error, format("%s at %s:%d: %s waits with mask 0x%08x, but lane %u exited without joining "
                                    "(a shuffle over an exited lane is undefined on a GPU)",
                                    warp_op_name(f.op.kind), f.file, f.line, where(w, f).c_str(), f.op.mask,
                                    me.lane));
        }
    }
}

template <class T>
uint64_t to_bits(T v) {
    static_assert(sizeof(T) <= 8, "warp collectives move at most 8 bytes per lane");
    uint64_t bits = 0;
    memcpy(&bits, &v, sizeof v);
    return bits;
}

template <class T>
T from_bits(uint64_t bits) {
    T v;
    memcpy(&v, &bits, sizeof v);
    return v;
}

template <class T>
T shfl(WarpOpKind kind, const char* file, int line, unsigned mask, T var, int arg, int width = 32) {
    return from_bits<T>(warp_collective(kind, mask, to_bits(var), arg, width, file, line));
}

inline unsigned active_mask() {
    Worker& w = worker();
    unsigned mask = 0, warp = w.current->warp;
    for (unsigned lane = 0; lane < 32; ++lane) {
        unsigned idx = warp * 32 + lane;
        if (idx < w.fibers.size() && w.fibers[idx].state != FiberState::done) mask |= 1u << lane;
    }
    return mask;
}

// ---------------------------------------------------------------------------
// The block scheduler.

[[noreturn]] inline void fiber_main() {
    Worker& w = worker();
    w.body(w.body_context);
    Fiber& me = *w.current;
    me.state = FiberState::done;
    w.live--;
    w.exited++;
    check_exit_against_waiting_lanes(w, me);
    yield_to_scheduler();
    __builtin_unreachable();
}

inline void prepare_fiber(Fiber& f) {
    init_context(f.context, f.stack_top - kStackBytes, kStackBytes, &fiber_main);
    f.state = FiberState::ready;
}

inline std::string deadlock_report(Worker& w) {
    std::string out = format("deadlock in block (%u,%u,%u): no thread can proceed;", w.block_idx.x, w.block_idx.y,
                             w.block_idx.z);
    int shown = 0;
    for (Fiber& f : w.fibers) {
        if (f.state == FiberState::at_warp_op && shown < 4) {
            out += format(" %s waits in %s (%s:%d) with mask 0x%08x, whose lanes are:%s", where(w, f).c_str(),
                          warp_op_name(f.op.kind), f.file, f.line, f.op.mask,
                          lane_states(w, f.warp, f.op.mask).c_str());
            shown++;
        }
    }
    if (w.at_barrier) out += format(" %u threads wait in __syncthreads();", w.at_barrier);
    return out;
}

inline void run_block(Worker& w, uint3 block_idx) {
    const unsigned n = static_cast<unsigned>(w.fibers.size());
    w.block_idx = block_idx;
    w.generation = ++block_generations;
    w.shared_static = 0;
    memset(w.shared, 0xFF, w.config->dynamic_shared);  // poison: uninitialised reads give NaN
    for (Fiber& f : w.fibers) prepare_fiber(f);
    w.live = n, w.exited = 0, w.at_barrier = 0;
    // Each pass runs every ready thread, in order, until it blocks or exits.
    // Threads a warp collective releases run again before later threads, so
    // early warps race ahead to the next __syncthreads: a missing barrier
    // between warps then shows up as a difference between the two orders.
    while (w.live > 0) {
        bool ran = false;
        w.rewind = n;
        for (unsigned k = 0; k < n; ++k) {
            Fiber& f = w.fibers[w.config->reverse ? n - 1 - k : k];
            if (f.state != FiberState::ready) continue;
            w.current = &f;
            switch_context(w.scheduler, f.context);
            if (w.aborted) return;
            ran = true;
            if (w.rewind <= k) {
                k = w.rewind - 1;  // the loop's ++k lands on the rewind position
                w.rewind = n;
            }
        }
        if (w.live > 0 && w.at_barrier == w.live) {
            if (!release_barrier(w)) return;
        } else if (!ran && w.live > 0) {
            record_error(w, deadlock, deadlock_report(w));
            return;
        }
    }
}

inline void setup_worker(Worker& w, const LaunchConfig& cfg) {
    const unsigned n = cfg.block[0] * cfg.block[1] * cfg.block[2];
    if (w.stack_count < n) {
        if (w.stacks) munmap(w.stacks, w.stack_count * (kStackBytes + kGuardBytes));
        size_t bytes = n * (kStackBytes + kGuardBytes);
        w.stacks = static_cast<char*>(
            mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0));
        for (unsigned i = 0; i < n; ++i) mprotect(w.stacks + i * (kStackBytes + kGuardBytes), kGuardBytes, PROT_NONE);
        w.stack_count = n;
    }
    if (!w.shared) {
        w.shared = static_cast<char*>(
            mmap(nullptr, kSharedArenaBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    }
    w.fibers.assign(n, Fiber{});
    for (unsigned i = 0; i < n; ++i) {
        Fiber& f = w.fibers[i];
        f.thread_idx = uint3{i % cfg.block[0], i / cfg.block[0] % cfg.block[1], i / (cfg.block[0] * cfg.block[1])};
        f.lane = i % 32, f.warp = i / 32;
        f.stack_top = w.stacks + (i + 1) * (kStackBytes + kGuardBytes);
    }
    w.block_dim = dim3(cfg.block[0], cfg.block[1], cfg.block[2]);
    w.grid_dim = dim3(cfg.grid[0], cfg.grid[1], cfg.grid[2]);
    w.config = &cfg;
    w.aborted = false;
}

inline std::mutex worker_pool_mutex;
inline std::vector<Worker*> worker_pool;

inline Worker* acquire_worker() {
    std::lock_guard<std::mutex> lock(worker_pool_mutex);
    if (worker_pool.empty()) return new Worker();
    Worker* w = worker_pool.back();
    worker_pool.pop_back();
    return w;
}

inline void release_worker(Worker* w) {
    std::lock_guard<std::mutex> lock(worker_pool_mutex);
    worker_pool.push_back(w);
}

inline int run_grid(const LaunchConfig& cfg, void (*body)(void*), void* context, char* err, size_t err_len) {
    const uint64_t blocks = uint64_t(cfg.grid[0]) * cfg.grid[1] * cfg.grid[2];
    LaunchState launch;
    std::atomic<uint64_t> next_block{0};
    auto work = [&]() {
        Worker* w = acquire_worker();
        setup_worker(*w, cfg);
        w->launch = &launch, w->body = body, w->body_context = context;
        Worker* saved = tls_worker;
        tls_worker = w;
        while (!launch.failed.load()) {
            uint64_t b = next_block++;
            if (b >= blocks) break;
            if (cfg.reverse) b = blocks - 1 - b;
            run_block(*w, uint3{unsigned(b % cfg.grid[0]), unsigned(b / cfg.grid[0] % cfg.grid[1]),
                                unsigned(b / (uint64_t(cfg.grid[0]) * cfg.grid[1]))});
        }
        tls_worker = saved;
        release_worker(w);
    };
    uint64_t workers = cfg.workers < 1 ? 1 : uint64_t(cfg.workers);
    if (workers > blocks) workers = blocks;
    if (workers <= 1) {
        work();  // on the caller's thread: simplest to step through in a debugger
    } else {
        std::vector<std::thread> threads;
        for (uint64_t i = 0; i < workers; ++i) threads.emplace_back(work);
        for (auto& t : threads) t.join();
    }
    fflush(stdout);  // kernel printf output appears before Python continues
    if (launch.failed.load()) snprintf(err, err_len, "%s", launch.message.c_str());
    return launch.status;
}

// ---------------------------------------------------------------------------
// The typed entry points emulator.py generates for each kernel name.

template <class... P, size_t... I>
int launch_impl(void (*kernel)(P...), const LaunchConfig& cfg, void** args, char* err, size_t err_len,
                std::index_sequence<I...>) {
    struct Call {
        void (*kernel)(P...);
        std::tuple<std::decay_t<P>...> params;
    };
    Call call{kernel, std::tuple<std::decay_t<P>...>(*static_cast<std::decay_t<P>*>(args[I])...)};
    (void)args;
    return run_grid(
        cfg, [](void* c) { std::apply(static_cast<Call*>(c)->kernel, static_cast<Call*>(c)->params); }, &call, err,
        err_len);
}

template <class... P>
int launch(void (*kernel)(P...), const LaunchConfig& cfg, void** args, char* err, size_t err_len) {
    return launch_impl(kernel, cfg, args, err, err_len, std::index_sequence_for<P...>{});
}

// Parameter types as text, e.g. "ptr:const:float32;val:int32", so Python can
// check every launch argument against what the kernel really takes.
template <class T>
std::string type_name() {
    using U = std::remove_cv_t<T>;
    if constexpr (std::is_same_v<U, float>) return "float32";
    else if constexpr (std::is_same_v<U, double>) return "float64";
    else if constexpr (std::is_same_v<U, __half>) return "float16";
    else if constexpr (std::is_same_v<U, __nv_bfloat16>) return "bfloat16";
    else if constexpr (std::is_same_v<U, bool>) return "bool";
    else if constexpr (std::is_void_v<U>) return "void";
    else if constexpr (std::is_same_v<U, char>) return "char";
    else if constexpr (std::is_integral_v<U>) return (std::is_signed_v<U> ? "int" : "uint") + std::to_string(8 * sizeof(U));
    else if constexpr (std::is_pointer_v<U>) return "pointer";
    else return "struct" + std::to_string(sizeof(U));
}

template <class P>
std::string describe_param() {
    if constexpr (std::is_pointer_v<P>) {
        using E = std::remove_pointer_t<P>;
        return std::string("ptr:") + (std::is_const_v<E> ? "const:" : "mut:") + type_name<E>();
    } else {
        return "val:" + type_name<P>();
    }
}

template <class... P>
const char* describe_params(void (*)(P...)) {
    static const std::string text = [] {
        std::string s;
        ((s += describe_param<P>() + ";"), ...);
        return s;
    }();
    return text.c_str();
}

}  // namespace harness

// The library's only exported symbols. It is built with -fvisibility=hidden so
// that every library keeps its own worker pool: otherwise g++ makes inline
// variables process-wide (STB_GNU_UNIQUE), and two libraries built with
// different Context layouts would hand each other their workers.
#define HARNESS_EXPORT extern "C" __attribute__((visibility("default")))

// Which fiber switch this build uses (the tests check that the one they asked for runs).
HARNESS_EXPORT const char* minilm_fiber_switch() { return HARNESS_FIBER_SWITCH; }

// ---------------------------------------------------------------------------
// The CUDA device API on top of the scheduler.

#define threadIdx (::harness::current_fiber().thread_idx)
#define blockIdx (::harness::worker().block_idx)
#define blockDim (::harness::worker().block_dim)
#define gridDim (::harness::worker().grid_dim)
#define warpSize 32

#define __syncthreads() ::harness::syncthreads(__FILE__, __LINE__)
#define __syncthreads_count(p) ::harness::barrier(::harness::BarrierKind::count, (p), __FILE__, __LINE__)
#define __syncthreads_and(p) ::harness::barrier(::harness::BarrierKind::all, (p), __FILE__, __LINE__)
#define __syncthreads_or(p) ::harness::barrier(::harness::BarrierKind::any, (p), __FILE__, __LINE__)

#define __shfl_sync(...) ::harness::shfl(::harness::WarpOpKind::shfl_idx, __FILE__, __LINE__, __VA_ARGS__)
#define __shfl_up_sync(...) ::harness::shfl(::harness::WarpOpKind::shfl_up, __FILE__, __LINE__, __VA_ARGS__)
#define __shfl_down_sync(...) ::harness::shfl(::harness::WarpOpKind::shfl_down, __FILE__, __LINE__, __VA_ARGS__)
#define __shfl_xor_sync(...) ::harness::shfl(::harness::WarpOpKind::shfl_xor, __FILE__, __LINE__, __VA_ARGS__)
#define __ballot_sync(mask, p) \
    (static_cast<unsigned>(::harness::warp_collective(::harness::WarpOpKind::ballot, (mask), (p) != 0, 0, 32, __FILE__, __LINE__)))
#define __any_sync(mask, p) \
    (static_cast<int>(::harness::warp_collective(::harness::WarpOpKind::any, (mask), (p) != 0, 0, 32, __FILE__, __LINE__)))
#define __all_sync(mask, p) \
    (static_cast<int>(::harness::warp_collective(::harness::WarpOpKind::all, (mask), (p) != 0, 0, 32, __FILE__, __LINE__)))
#define __syncwarp(...) ::harness::syncwarp(__FILE__, __LINE__, ##__VA_ARGS__)
#define __activemask() ::harness::active_mask()

namespace harness {
inline void syncwarp(const char* file, int line, unsigned mask = kFullMask) {
    warp_collective(WarpOpKind::sync, mask, 0, 0, 32, file, line);
}
template <class T>
T warp_reduce(WarpOpKind kind, unsigned mask, T value) {
    static_assert(sizeof(T) == 4 && std::is_integral_v<T>, "__reduce_*_sync takes int or unsigned");
    return static_cast<T>(warp_collective(kind, mask, uint32_t(value), 0, 32, "", 0, std::is_signed_v<T>));
}
}  // namespace harness
#define __reduce_add_sync(mask, v) ::harness::warp_reduce(::harness::WarpOpKind::reduce_add, (mask), (v))
#define __reduce_min_sync(mask, v) ::harness::warp_reduce(::harness::WarpOpKind::reduce_min, (mask), (v))
#define __reduce_max_sync(mask, v) ::harness::warp_reduce(::harness::WarpOpKind::reduce_max, (mask), (v))

// assert() in a kernel becomes a Python exception instead of abort().
#undef assert
#define assert(e) ((e) ? (void)0 : ::harness::device_assert_fail(#e, __FILE__, __LINE__))
inline void __trap() { ::harness::fail(::harness::trap, "__trap() called"); }
inline void __brkpt() { __builtin_trap(); }

// Spin-waits with __nanosleep let other threads of the block run.
inline void __nanosleep(unsigned) {
    ::harness::Fiber& me = ::harness::current_fiber();
    me.state = ::harness::FiberState::ready;
    ::harness::yield_to_scheduler();
}
inline long long clock64() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_system() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

template <class T>
T __ldg(const T* p) { return *p; }

// ---------------------------------------------------------------------------
// Atomics: real atomics, since blocks run on several OS threads.

namespace harness {
template <class T>
struct same_type { using type = T; };
template <class T>
using same_t = typename same_type<T>::type;  // stops deduction from the value argument

template <class T, class F>
T atomic_update(T* address, F update) {
    using Bits = std::conditional_t<sizeof(T) == 2, uint16_t, std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>>;
    static_assert(sizeof(T) == sizeof(Bits), "atomics act on 2, 4 or 8 bytes");
    Bits* p = reinterpret_cast<Bits*>(address);
    Bits old_bits = __atomic_load_n(p, __ATOMIC_SEQ_CST), new_bits;
    T old_value;
    do {
        memcpy(&old_value, &old_bits, sizeof(T));
        T new_value = update(old_value);
        memcpy(&new_bits, &new_value, sizeof(T));
    } while (!__atomic_compare_exchange_n(p, &old_bits, new_bits, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST));
    return old_value;
}
}  // namespace harness

template <class T>
T atomicAdd(T* p, harness::same_t<T> v) {
    if constexpr (std::is_integral_v<T>) return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);
    else return harness::atomic_update(p, [v](T old) { return T(float(old) + float(v)); });
}
inline double atomicAdd(double* p, double v) { return harness::atomic_update(p, [v](double old) { return old + v; }); }
template <class T>
T atomicSub(T* p, harness::same_t<T> v) { return __atomic_fetch_sub(p, v, __ATOMIC_SEQ_CST); }
template <class T>
T atomicExch(T* p, harness::same_t<T> v) { return harness::atomic_update(p, [v](T) { return v; }); }
template <class T>
T atomicMax(T* p, harness::same_t<T> v) { return harness::atomic_update(p, [v](T old) { return old > v ? old : v; }); }
template <class T>
T atomicMin(T* p, harness::same_t<T> v) { return harness::atomic_update(p, [v](T old) { return old < v ? old : v; }); }
template <class T>
T atomicAnd(T* p, harness::same_t<T> v) { return __atomic_fetch_and(p, v, __ATOMIC_SEQ_CST); }
template <class T>
T atomicOr(T* p, harness::same_t<T> v) { return __atomic_fetch_or(p, v, __ATOMIC_SEQ_CST); }
template <class T>
T atomicXor(T* p, harness::same_t<T> v) { return __atomic_fetch_xor(p, v, __ATOMIC_SEQ_CST); }
template <class T>
T atomicCAS(T* p, harness::same_t<T> compare, harness::same_t<T> v) {
    __atomic_compare_exchange_n(p, &compare, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    return compare;  // holds the old value either way
}
inline unsigned atomicInc(unsigned* p, unsigned limit) {
    return harness::atomic_update(p, [limit](unsigned old) { return old >= limit ? 0u : old + 1; });
}
inline unsigned atomicDec(unsigned* p, unsigned limit) {
    return harness::atomic_update(p, [limit](unsigned old) { return (old == 0 || old > limit) ? limit : old - 1; });
}

// ---------------------------------------------------------------------------
// Device math that has no host counterpart. The GPU's fast intrinsics are
// approximations; here they are exact, so compare with tolerances.

inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __log2f(float x) { return log2f(x); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __tanf(float x) { return tanf(x); }
#if !defined(__APPLE__)  // macOS's math.h has its own __exp10f and __sincosf (and no exp10f, sincosf)
inline float __exp10f(float x) { return exp10f(x); }
inline void __sincosf(float x, float* s, float* c) { sincosf(x, s, c); }
#endif
inline float __powf(float x, float y) { return powf(x, y); }
inline float __fdividef(float x, float y) { return x / y; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return sqrtf(x); }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
inline int __float2int_rn(float x) { return static_cast<int>(nearbyintf(x)); }
inline int __float2int_rz(float x) { return static_cast<int>(x); }
inline float __int2float_rn(int x) { return static_cast<float>(x); }
inline int __float_as_int(float x) { int i; memcpy(&i, &x, 4); return i; }
inline unsigned __float_as_uint(float x) { unsigned i; memcpy(&i, &x, 4); return i; }
inline float __int_as_float(int i) { float x; memcpy(&x, &i, 4); return x; }
inline float __uint_as_float(unsigned i) { float x; memcpy(&x, &i, 4); return x; }
inline long long __double_as_longlong(double x) { long long i; memcpy(&i, &x, 8); return i; }
inline double __longlong_as_double(long long i) { double x; memcpy(&x, &i, 8); return x; }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll(static_cast<unsigned long long>(x)); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
// __dp4a (sm_61 and later): the four byte products of a and b, summed into c
// (signed bytes for int, unsigned for unsigned), one instruction on a GPU.
inline int __dp4a(int a, int b, int c) {
    for (int i = 0; i < 4; ++i) c += int(int8_t(a >> (8 * i))) * int(int8_t(b >> (8 * i)));
    return c;
}
inline unsigned __dp4a(unsigned a, unsigned b, unsigned c) {
    for (int i = 0; i < 4; ++i) c += unsigned(uint8_t(a >> (8 * i))) * unsigned(uint8_t(b >> (8 * i)));
    return c;
}
inline unsigned __brev(unsigned x) {
    unsigned r = 0;
    for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i);
    return r;
}

// CUDA's global min/max overloads.
#define HARNESS_MIN_MAX(T)                                \
    inline T min(T a, T b) { return a < b ? a : b; }     \
    inline T max(T a, T b) { return a > b ? a : b; }
HARNESS_MIN_MAX(int)
HARNESS_MIN_MAX(unsigned)
HARNESS_MIN_MAX(long)
HARNESS_MIN_MAX(unsigned long)
HARNESS_MIN_MAX(long long)
HARNESS_MIN_MAX(unsigned long long)
HARNESS_MIN_MAX(float)
HARNESS_MIN_MAX(double)
#undef HARNESS_MIN_MAX
inline unsigned min(int a, unsigned b) { return min(static_cast<unsigned>(a), b); }
inline unsigned min(unsigned a, int b) { return min(a, static_cast<unsigned>(b)); }
inline unsigned max(int a, unsigned b) { return max(static_cast<unsigned>(a), b); }
inline unsigned max(unsigned a, int b) { return max(a, static_cast<unsigned>(b)); }
