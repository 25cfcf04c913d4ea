// matmul.cu - linear layers: out[m, o] = sum_k x[m, k] * weight[o, k] + bias[o]
// (PyTorch's layout, weight [OUT, IN]), float32 accumulation for any storage type.
//
// Two kernels, picked by the number of rows M (tokens):
//   linear_gemv   decode (M small): one warp per output feature; lanes stride
//                 over IN, so each weight row is read once, coalesced, for all
//                 M rows. Decode is bound by reading the weights, not by math.
//   linear_tiled  prefill (M large): each block computes a 32x32 tile of out,
//                 staging 32x32 slices of x and weight in shared memory so
//                 every loaded value is reused 32 times.
// A production engine would hand big prefill products to cuBLAS (cupy.matmul);
// we keep our own kernel so the CPU harness runs exactly what the GPU runs.
#include "common.cuh"

template <typename X, typename W>
__global__ void linear_gemv(const X* __restrict__ x, const W* __restrict__ weight, const float* __restrict__ bias,
                            X* __restrict__ out, int rows, int in_features, int out_features, int has_bias) {
    const int lane = threadIdx.x % 32;
    const int o = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (o >= out_features) return;  // the whole warp leaves together; no barrier follows

    const W* w_row = weight + (size_t)o * in_features;
    const float b = has_bias ? bias[o] : 0.0f;
    for (int m = 0; m < rows; ++m) {
        const X* x_row = x + (size_t)m * in_features;
        float dot = 0.0f;
        for (int k = lane; k < in_features; k += 32) dot += to_float(x_row[k]) * to_float(w_row[k]);
        dot = warp_sum(dot);
        if (lane == 0) out[(size_t)m * out_features + o] = from_float<X>(dot + b);
    }
}

constexpr int TILE = 32;       // the block computes a TILE x TILE tile of out
constexpr int TILE_ROWS = 8;   // block is TILE x TILE_ROWS threads; each owns TILE / TILE_ROWS rows

template <typename X, typename W>
__global__ void linear_tiled(const X* __restrict__ x, const W* __restrict__ weight, const float* __restrict__ bias,
                             X* __restrict__ out, int rows, int in_features, int out_features, int has_bias) {
    // +1 column: threads of a warp read a column of w_tile without bank conflicts
    __shared__ float x_tile[TILE][TILE + 1];   // [m][k]
    __shared__ float w_tile[TILE][TILE + 1];   // [o][k]
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int m0 = blockIdx.y * TILE, o0 = blockIdx.x * TILE;
    float acc[TILE / TILE_ROWS] = {0.0f};

    for (int k0 = 0; k0 < in_features; k0 += TILE) {
        const int k = k0 + tx;  // consecutive threads load consecutive k: coalesced
        for (int r = ty; r < TILE; r += TILE_ROWS) {
            const int m = m0 + r, o = o0 + r;
            x_tile[r][tx] = (m < rows && k < in_features) ? to_float(x[(size_t)m * in_features + k]) : 0.0f;
            w_tile[r][tx] = (o < out_features && k < in_features) ? to_float(weight[(size_t)o * in_features + k]) : 0.0f;
        }
        __syncthreads();
        for (int kk = 0; kk < TILE; ++kk) {
            const float w = w_tile[tx][kk];
#pragma unroll
            for (int i = 0; i < TILE / TILE_ROWS; ++i) acc[i] += x_tile[ty + i * TILE_ROWS][kk] * w;
        }
        __syncthreads();  // the next slice overwrites the tiles
    }

    const int o = o0 + tx;
    if (o >= out_features) return;
    const float b = has_bias ? bias[o] : 0.0f;
#pragma unroll
    for (int i = 0; i < TILE / TILE_ROWS; ++i) {
        const int m = m0 + ty + i * TILE_ROWS;
        if (m < rows) out[(size_t)m * out_features + o] = from_float<X>(acc[i] + b);
    }
}
