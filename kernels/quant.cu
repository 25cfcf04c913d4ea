// quant.cu - linear layers and embeddings on quantized weights, exact mode: each weight is
// decoded in registers to the float32 value the NumPy reference decodes it to, and multiplied by
// float32 activations (what transformers computes on a GGUF checkpoint).
//
// The weights stay in their stored format (quant.cuh reads each one): decoding costs a few
// integer operations per weight, and decode steps are bound by reading the weights, so a 4-bit
// format reads 5-8x fewer bytes than float32. F is the format's struct in quant.cuh.
//   quant_gemv<F>       decode (up to 8 rows of x): one warp per output row; lane l takes the
//                       row's blocks l, l + 32, ..., decodes each block of 32 weights into
//                       registers once and uses it for every row of x; a warp reduction adds
//                       the lanes' sums.
//   quant_tiled<F>      prefill: matmul.cu's 32x32 shared-memory tiles, the weight tile decoded
//                       while it is loaded (one weight per thread), so each decoded weight is
//                       used 32 times.
//   quant_embedding<F>  token ids -> decoded rows; only the rows asked for are read.
#include "quant.cuh"

template <class F>
__global__ void quant_gemv(const float* __restrict__ x, const unsigned char* __restrict__ codes,
                           const void* __restrict__ scales, const void* __restrict__ extra, int group_blocks,
                           const float* __restrict__ bias, float* __restrict__ out, int rows, int in_features,
                           int out_features, int has_bias) {
    const F weight(QuantArrays{codes, scales, extra, in_features, group_blocks});
    const int lane = threadIdx.x % 32;
    const int o = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (o >= out_features) return;  // the whole warp leaves together; no barrier follows

    float acc[GEMV_MAX_ROWS] = {};   // indexed by unrolled loops only, so it lives in registers
    const int blocks = (in_features + QK - 1) / QK;
    for (int b = lane; b < blocks; b += 32) {
        const int count = min(QK, in_features - b * QK);   // int8 rows may end in a partial block
        // Four weights at a time: decoded once, used for every row of x (fewer live registers
        // than the whole block of 32).
#pragma unroll
        for (int j0 = 0; j0 < QK; j0 += 4) {
            float w[4];
#pragma unroll
            for (int j = 0; j < 4; ++j) w[j] = j0 + j < count ? weight.decode(o, b, j0 + j) : 0.0f;
#pragma unroll
            for (int m = 0; m < GEMV_MAX_ROWS; ++m) {
                if (m < rows) {
                    const float* xb = x + (size_t)m * in_features + b * QK + j0;
#pragma unroll
                    for (int j = 0; j < 4; ++j)
                        if (j0 + j < count) acc[m] += w[j] * xb[j];
                }
            }
        }
    }
    store_gemv_rows(acc, o, bias, out, rows, out_features, has_bias);
}

template <class F>
__global__ void quant_tiled(const float* __restrict__ x, const unsigned char* __restrict__ codes,
                            const void* __restrict__ scales, const void* __restrict__ extra, int group_blocks,
                            const float* __restrict__ bias, float* __restrict__ out, int rows, int in_features,
                            int out_features, int has_bias) {
    // +1 column: threads of a warp read a column of w_tile without bank conflicts
    __shared__ float x_tile[TILE][TILE + 1];   // [m][k]
    __shared__ float w_tile[TILE][TILE + 1];   // [o][k], decoded
    const F weight(QuantArrays{codes, scales, extra, in_features, group_blocks});
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int m0 = blockIdx.y * TILE, o0 = blockIdx.x * TILE;
    float acc[TILE / TILE_ROWS] = {0.0f};

    for (int k0 = 0; k0 < in_features; k0 += TILE) {
        const int k = k0 + tx;  // consecutive threads load consecutive k
        for (int r = ty; r < TILE; r += TILE_ROWS) {
            const int m = m0 + r, o = o0 + r;
            x_tile[r][tx] = (m < rows && k < in_features) ? x[(size_t)m * in_features + k] : 0.0f;
            w_tile[r][tx] = (o < out_features && k < in_features) ? weight.decode(o, k0 / QK, tx) : 0.0f;
        }
        __syncthreads();
        for (int kk = 0; kk < TILE; ++kk) {
            const float w = w_tile[tx][kk];
#pragma unroll
            for (int i = 0; i < TILE / TILE_ROWS; ++i) acc[i] += x_tile[ty + i * TILE_ROWS][kk] * w;
        }
        __syncthreads();  // the next step overwrites the tiles
    }
    store_tile(acc, m0, o0, bias, out, rows, out_features, has_bias);
}

// One block per token; threads decode the row's weights (vocab = OUT, dim = IN of the table).
template <class F>
__global__ void quant_embedding(const long long* __restrict__ ids, const unsigned char* __restrict__ codes,
                                const void* __restrict__ scales, const void* __restrict__ extra, int group_blocks,
                                float* __restrict__ out, int vocab, int dim) {
    const F table(QuantArrays{codes, scales, extra, dim, group_blocks});
    const long long id = ids[blockIdx.x];
    assert(id >= 0 && id < vocab);
    float* out_row = out + (size_t)blockIdx.x * dim;
    for (int k = threadIdx.x; k < dim; k += blockDim.x) out_row[k] = table.decode((int)id, k / QK, k % QK);
}
