// harness_kernels.cu - small kernels that exercise the CPU harness in
// tests/test_cuda_harness.py: correct ones that check its CUDA semantics, and
// deliberately broken ones (names start with "broken_") that it must catch.
#include <cuda_fp16.h>
#include <cuda_bf16.h>

// --- correct kernels -----------------------------------------------------------

// out[lane] = __shfl_*_sync(full mask, 100 + lane, arg, width) for mode 0..3 (idx, up, down, xor).
extern "C" __global__ void shuffle_modes(int* out, int mode, int arg, int width) {
    const int value = 100 + threadIdx.x;
    int r;
    if (mode == 0) r = __shfl_sync(0xffffffffu, value, arg, width);
    else if (mode == 1) r = __shfl_up_sync(0xffffffffu, value, arg, width);
    else if (mode == 2) r = __shfl_down_sync(0xffffffffu, value, arg, width);
    else r = __shfl_xor_sync(0xffffffffu, value, arg, width);
    out[threadIdx.x] = r;
}

// Warp votes and __syncthreads_count on the predicate in[tid] != 0.
extern "C" __global__ void votes(const int* in, unsigned* out) {
    const int p = in[threadIdx.x];
    const unsigned ballot = __ballot_sync(0xffffffffu, p);
    const int any = __any_sync(0xffffffffu, p), all = __all_sync(0xffffffffu, p);
    const int count = __syncthreads_count(p);
    if (threadIdx.x % 32 == 0) {
        const int warp = threadIdx.x / 32;
        out[4 * warp + 0] = ballot;
        out[4 * warp + 1] = any;
        out[4 * warp + 2] = all;
        out[4 * warp + 3] = count;
    }
}

// Atomics from every thread of every block: a float sum, an int counter, a
// 64-bit max of (value bits, index) keys, and a CAS-claimed slot.
extern "C" __global__ void atomics(const float* x, int n, float* sum, int* count, unsigned long long* best,
                                   int* first_claim) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    atomicAdd(sum, x[i]);
    atomicAdd(count, 1);
    atomicMax(best, ((unsigned long long)__float_as_uint(x[i]) << 32) | (unsigned)i);  // x >= 0 here
    atomicCAS(first_claim, -1, i);
}

// Reverse a row through static and dynamic shared memory, with 2-D threads.
extern "C" __global__ void reverse_rows(const float* in, float* out, int width) {
    __shared__ float tile[8][33];
    extern __shared__ float dynamic_row[];
    const int row = blockIdx.x * blockDim.y + threadIdx.y, col = threadIdx.x;
    tile[threadIdx.y][col] = in[row * width + col];
    dynamic_row[threadIdx.y * width + col] = tile[threadIdx.y][col] * 2.0f;
    __syncthreads();
    out[row * width + col] = dynamic_row[threadIdx.y * width + (width - 1 - col)];
}

// Block and grid coordinates in 3-D: out[linear thread id] = packed (block, thread) indices.
extern "C" __global__ void coordinates(int* out) {
    const int block = (blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
    const int thread = (threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
    const int threads = blockDim.x * blockDim.y * blockDim.z;
    out[block * threads + thread] = blockIdx.x + 10 * blockIdx.y + 100 * blockIdx.z
                                    + 1000 * (threadIdx.x + 10 * threadIdx.y + 100 * threadIdx.z);
}

// Storage conversions the kernels rely on.
extern "C" __global__ void half_round_trip(const float* in, __half* h, __nv_bfloat16* b, float* back, int n) {
    const int i = threadIdx.x;
    if (i >= n) return;
    h[i] = __float2half_rn(in[i]);
    b[i] = __float2bfloat16_rn(in[i]);
    back[i] = __half2float(h[i]) + __bfloat162float(b[i]);
}

extern "C" __global__ void say_hello(int value) {
    if (threadIdx.x == 0 && blockIdx.x == 0) printf("hello from the kernel: %d\n", value);
}

// Sum of a 64-element row with the barrier in place (the fixed twin of broken_missing_barrier).
extern "C" __global__ void neighbour_sum(const float* in, float* out) {
    __shared__ float s[64];
    s[threadIdx.x] = in[threadIdx.x];
    __syncthreads();
    out[threadIdx.x] = s[threadIdx.x] + s[(threadIdx.x + 1) % 64];
}

extern "C" __global__ void scale(const float* x, float* out, int n, float factor) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = x[i] * factor;
}

// --- broken kernels ------------------------------------------------------------

// Reads a neighbour's shared slot without waiting for it to be written.
extern "C" __global__ void broken_missing_barrier(const float* in, float* out) {
    __shared__ float s[64];
    s[threadIdx.x] = in[threadIdx.x];
    out[threadIdx.x] = s[threadIdx.x] + s[(threadIdx.x + 1) % 64];
}

// Half of the block returns early, the other half waits at a barrier.
extern "C" __global__ void broken_divergent_syncthreads(float* out) {
    if (threadIdx.x >= 16) return;
    __syncthreads();
    out[threadIdx.x] = 1.0f;
}

// Odd and even threads wait at two different barriers.
extern "C" __global__ void broken_two_barriers(float* out) {
    if (threadIdx.x % 2) {
        __syncthreads();
    } else {
        __syncthreads();
    }
    out[threadIdx.x] = 1.0f;
}

// A full-mask shuffle after the upper half of the warp has returned.
extern "C" __global__ void broken_shuffle_exited_lane(float* out) {
    if (threadIdx.x >= 16) return;
    out[threadIdx.x] = __shfl_down_sync(0xffffffffu, (float)threadIdx.x, 1);
}

// Reads shared memory that only half the threads wrote.
extern "C" __global__ void broken_uninitialised_shared(float* out) {
    __shared__ float s[64];
    if (threadIdx.x < 32) s[threadIdx.x] = 1.0f;
    __syncthreads();
    out[threadIdx.x] = s[threadIdx.x];
}

// Reads a dynamic shared buffer nobody wrote.
extern "C" __global__ void broken_uninitialised_dynamic_shared(float* out) {
    extern __shared__ float buffer[];
    out[threadIdx.x] = buffer[threadIdx.x];
}

extern "C" __global__ void broken_device_assert(const float* x) {
    assert(x[threadIdx.x] >= 0.0f);
}

// Lane 0 waits in a shuffle for lanes that wait at a barrier: nobody can move.
extern "C" __global__ void broken_deadlock(float* out) {
    float v = threadIdx.x;
    if (threadIdx.x == 0) v = __shfl_sync(0xffffffffu, v, 1);
    __syncthreads();
    out[threadIdx.x] = v;
}

// 64 KB of static shared memory: more than a block may use without opting in.
extern "C" __global__ void broken_too_much_shared(float* out) {
    __shared__ float big[16384];
    big[threadIdx.x] = 1.0f;
    out[threadIdx.x] = big[threadIdx.x];
}

// A block sum without its closing barrier: called twice in a row, a warp that
// runs ahead overwrites `scratch` while slower warps still read the first sum.
__device__ float block_sum_missing_final_barrier(float v, float* scratch) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : 0.0f;
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

extern "C" __global__ void broken_scratch_reuse(const float* in, float* out) {
    __shared__ float scratch[32];
    const float sum = block_sum_missing_final_barrier(in[threadIdx.x], scratch);
    const float sum_sq = block_sum_missing_final_barrier(in[threadIdx.x] * in[threadIdx.x], scratch);
    out[threadIdx.x] = sum + sum_sq;
}
