// quant_fast.cu - linear layers on quantized weights, fast mode: llama.cpp's arithmetic.
//
// The activations are quantized once per call to int8 blocks of 32, and every (weight block,
// activation block) pair becomes an exact integer dot product, scaled once per block:
//
//     y[m, o] = sum_b d_w[o, b] * d_x[m, b] * (sum_j c[o, b, j] * q[m, b, j])  (+ sum_b m_w[o, b] * s_x[m, b])
//
// c the weight codes, d_w and m_w the block's scale and minimum (quant.cuh). The activation
// blocks are rounded bit for bit as minilm/formats/ggml.py's quantize_activations does
// (llama.cpp's AVX2 quantize_row_q8_1):
//
//     a = max |x| over the block;  q = round_half_even(x * (127 / a));  d = a / 127   (a = 0: q = 0)
//     d_x = fp16(d);  s_x = fp16(d * sum q)      (rounded to half precision, kept as float32)
//
// __dp4a multiplies four byte pairs and adds them to an int in one instruction (sm_61 and later).
//   quantize_activations  one warp per block of 32 activations, a lane per value
//   quant_gemv_fast<F>    decode (up to 8 rows of x): one warp per output row, lanes over its blocks
//   quant_tiled_fast<F>   prefill: a 32x32 tile of out per thread block; for each block of 32
//                         weights the codes of 32 weight rows and 32 activation rows are staged in
//                         shared memory (one 4-byte word of each per thread), then every thread
//                         does 4 rows x 8 __dp4a
#include "quant.cuh"

__global__ void quantize_activations(const float* __restrict__ x, signed char* __restrict__ xq,
                                     float* __restrict__ xd, float* __restrict__ xs, int blocks) {
    // x [rows, IN] is `blocks` consecutive blocks of 32 (IN % 32 == 0); xq is laid out like x.
    const int lane = threadIdx.x % 32;
    const int g = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (g >= blocks) return;  // the whole warp leaves together
    const float v = x[(size_t)g * QK + lane];
    const float amax = warp_max(fabsf(v));
    const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    const int q = __float2int_rn(v * inv);   // halves to even, like np.rint and llama.cpp's AVX2 path
    xq[(size_t)g * QK + lane] = (signed char)q;
    const int total = __reduce_add_sync(0xffffffffu, q);
    if (lane == 0) {
        const float d = amax / 127.0f;
        xd[g] = __half2float(__float2half_rn(d));
        xs[g] = __half2float(__float2half_rn(d * (float)total));   // with the float32 d, as the reference
    }
}

// sum_j c_j * q_j over one block: 8 words of 4 codes. A format storing c + OFFSET (q4_0) gets
// the same exact integer from sum (c + OFFSET) q - OFFSET * sum q.
template <class F>
__device__ __forceinline__ int block_dot(const int* c, const int* q) {
    int dot = 0, sum = 0;
#pragma unroll
    for (int w = 0; w < QK / 4; ++w) {
        dot = __dp4a(c[w], q[w], dot);
        if (F::OFFSET != 0) sum = __dp4a(0x01010101, q[w], sum);
    }
    return dot - F::OFFSET * sum;
}

template <class F>
__global__ void quant_gemv_fast(const signed char* __restrict__ xq, const float* __restrict__ xd,
                                const float* __restrict__ xs, const unsigned char* __restrict__ codes,
                                const void* __restrict__ scales, const void* __restrict__ extra, int group_blocks,
                                const float* __restrict__ bias, float* __restrict__ out, int rows, int in_features,
                                int out_features, int has_bias) {
    const F weight(QuantArrays{codes, scales, extra, in_features, group_blocks});
    const int o = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (o >= out_features) return;  // the whole warp leaves together; no barrier follows

    float acc[GEMV_MAX_ROWS] = {};   // indexed by unrolled loops only, so it lives in registers
    const int blocks = in_features / QK;
    for (int b = threadIdx.x % 32; b < blocks; b += 32) {
        int c[QK / 4];
#pragma unroll
        for (int w = 0; w < QK / 4; ++w) c[w] = weight.codes4(o, b, w);
        const float d = weight.scale(o, b), minimum = weight.minimum(o, b);
#pragma unroll
        for (int m = 0; m < GEMV_MAX_ROWS; ++m) {
            if (m < rows) {
                const size_t mb = (size_t)m * blocks + b;   // block b of activation row m
                const int dot = block_dot<F>(c, reinterpret_cast<const int*>(xq + mb * QK));
                acc[m] += d * xd[mb] * (float)dot;
                if (F::HAS_MIN) acc[m] += minimum * xs[mb];
            }
        }
    }
    store_gemv_rows(acc, o, bias, out, rows, out_features, has_bias);
}

template <class F>
__global__ void quant_tiled_fast(const signed char* __restrict__ xq, const float* __restrict__ xd,
                                 const float* __restrict__ xs, const unsigned char* __restrict__ codes,
                                 const void* __restrict__ scales, const void* __restrict__ extra, int group_blocks,
                                 const float* __restrict__ bias, float* __restrict__ out, int rows, int in_features,
                                 int out_features, int has_bias) {
    static_assert(TILE * TILE_ROWS == TILE * (QK / 4), "each thread stages one word of weights and of activations");
    // One block of 32 of TILE weight rows and TILE activation rows; +1 column: no bank conflicts
    // when the threads of a warp read word w of 32 different weight rows.
    __shared__ int w_codes[TILE][QK / 4 + 1];
    __shared__ int x_codes[TILE][QK / 4 + 1];
    __shared__ float w_scale[TILE];
    __shared__ float w_min[TILE];
    __shared__ float x_scale[TILE];
    __shared__ float x_sum[TILE];
    const F weight(QuantArrays{codes, scales, extra, in_features, group_blocks});
    const int tx = threadIdx.x, ty = threadIdx.y, t = ty * TILE + tx;
    const int m0 = blockIdx.y * TILE, o0 = blockIdx.x * TILE;
    const int r = t / (QK / 4), w = t % (QK / 4);   // the word this thread stages: row r, word w
    const int blocks = in_features / QK;
    float acc[TILE / TILE_ROWS] = {0.0f};

    for (int b = 0; b < blocks; ++b) {
        // Rows past the matrix get zeros: they add nothing, and their outputs are not stored.
        const int o = o0 + r, m = m0 + r;
        w_codes[r][w] = o < out_features ? weight.codes4(o, b, w) : 0;
        x_codes[r][w] = m < rows ? reinterpret_cast<const int*>(xq + ((size_t)m * blocks + b) * QK)[w] : 0;
        if (t < TILE) {
            const bool inside = o0 + t < out_features;
            w_scale[t] = inside ? weight.scale(o0 + t, b) : 0.0f;
            w_min[t] = inside ? weight.minimum(o0 + t, b) : 0.0f;
        } else if (t < 2 * TILE) {
            const int mb = m0 + t - TILE;
            const bool inside = mb < rows;
            x_scale[t - TILE] = inside ? xd[(size_t)mb * blocks + b] : 0.0f;
            x_sum[t - TILE] = inside ? xs[(size_t)mb * blocks + b] : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int i = 0; i < TILE / TILE_ROWS; ++i) {
            const int mi = ty + i * TILE_ROWS;
            const int dot = block_dot<F>(w_codes[tx], x_codes[mi]);
            acc[i] += w_scale[tx] * x_scale[mi] * (float)dot;
            if (F::HAS_MIN) acc[i] += w_min[tx] * x_sum[mi];
        }
        __syncthreads();  // the next block overwrites the staged codes
    }
    store_tile(acc, m0, o0, bias, out, rows, out_features, has_bias);
}
