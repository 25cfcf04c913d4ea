// attention.cu - softmax(q k^T * scale + mask) v with GQA, for prefill and decode.
//
// q [B,T,H,HD], k/v [B,S,KV,HD], mask [B,T,S] (true = visible) -> out [B,T,H,HD].
// Causal, sliding-window and padding masks all arrive as that bool mask, built
// on the host, so one kernel serves every layer type; T = 1 is decode.
//
// One block per query row (head h, token t, batch b), grid (H, T, B). Keys are
// processed in tiles of blockDim.x with an online softmax (running max and
// sum, rescaling the accumulator when the max grows), so shared memory does
// not grow with S:
//   1. one warp per key: score = (q . k) * scale, or -inf where masked;
//   2. tile max -> new running max; p = exp(score - max); running sum;
//   3. each thread owns output dims d = tid + i*blockDim.x: acc[d] += p_j v_j[d].
// GQA: query head h reads kv head h / (H / KV) (repeat-interleave). A row with
// no visible key outputs zeros; a row with a NaN or +inf score outputs NaN, as
// torch's softmax does (see visible_score). Masked keys are skipped entirely, so causal
// prefill does about half the work.
#include "common.cuh"

constexpr int MAX_DIMS_PER_THREAD = 4;  // head_dim <= 4 * blockDim.x

// A visible key's score with NaN turned into +inf: fmaxf drops a NaN but keeps +inf, and then
// exp(inf - inf) = NaN makes the row's sum NaN, so the whole row is NaN instead of zeros.
__device__ __forceinline__ float visible_score(float score) { return isnan(score) ? __int_as_float(0x7f800000) : score; }

template <typename T>
__global__ void attention(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                          const bool* __restrict__ mask, T* __restrict__ out,
                          int q_len, int kv_len, int heads, int kv_heads, int head_dim, float scale) {
    extern __shared__ float smem[];
    float* q_row = smem;                 // [head_dim] this query, as float32
    float* probs = smem + head_dim;      // [blockDim.x] scores, then probabilities, of one tile
    __shared__ float scratch[32];

    const int h = blockIdx.x, t = blockIdx.y, b = blockIdx.z;
    const int kv_head = h / (heads / kv_heads);
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    const size_t row = ((size_t)b * q_len + t) * heads + h;
    const bool* visible = mask + ((size_t)b * q_len + t) * kv_len;
    assert(head_dim <= MAX_DIMS_PER_THREAD * (int)blockDim.x);

    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) q_row[d] = to_float(q[row * head_dim + d]);
    __syncthreads();

    float running_max = negative_infinity(), running_sum = 0.0f;
    float acc[MAX_DIMS_PER_THREAD] = {0.0f};
    for (int tile = 0; tile < kv_len; tile += blockDim.x) {
        // 1. scores of this tile, one warp per key
        for (int j = warp; j < blockDim.x; j += warps) {
            const int key = tile + j;
            float score = negative_infinity();
            if (key < kv_len && visible[key]) {  // the same for the whole warp
                const T* k_row = k + (((size_t)b * kv_len + key) * kv_heads + kv_head) * head_dim;
                float dot = 0.0f;
                for (int d = lane; d < head_dim; d += 32) dot += q_row[d] * to_float(k_row[d]);
                score = visible_score(warp_sum(dot) * scale);
            }
            if (lane == 0) probs[j] = score;
        }
        __syncthreads();

        // 2. online softmax: rescale what we have to the new running max
        const float score = probs[threadIdx.x];
        const float new_max = fmaxf(running_max, block_max(score, scratch));
        if (new_max == negative_infinity()) continue;  // nothing visible yet (uniform across the block)
        const float correction = expf(running_max - new_max);  // 0 on the first visible tile
        const float p = expf(score - new_max);                  // 0 for masked keys
        running_sum = running_sum * correction + block_sum(p, scratch);
        running_max = new_max;
        probs[threadIdx.x] = p;
        __syncthreads();

        // 3. accumulate p * v for the dims this thread owns
        const int tile_keys = min((int)blockDim.x, kv_len - tile);
#pragma unroll
        for (int i = 0; i < MAX_DIMS_PER_THREAD; ++i) {
            const int d = threadIdx.x + i * blockDim.x;
            if (d >= head_dim) break;
            float a = acc[i] * correction;
            for (int j = 0; j < tile_keys; ++j) {
                if (probs[j] == 0.0f) continue;  // masked (or negligible) key: skip reading v
                const T* v_row = v + (((size_t)b * kv_len + tile + j) * kv_heads + kv_head) * head_dim;
                a += probs[j] * to_float(v_row[d]);
            }
            acc[i] = a;
        }
        __syncthreads();  // the next tile overwrites probs
    }

    const float inv_sum = running_sum != 0.0f ? 1.0f / running_sum : 0.0f;  // no visible key -> zeros; NaN stays
#pragma unroll
    for (int i = 0; i < MAX_DIMS_PER_THREAD; ++i) {
        const int d = threadIdx.x + i * blockDim.x;
        if (d < head_dim) out[row * head_dim + d] = from_float<T>(acc[i] * inv_sum);
    }
}

// attention_probs - the softmax weights themselves, [B,H,T,S] float32, for
// output_attentions and the tape: the kernel above never materialises them.
//
// q [B,T,H,HD], k [B,S,KV,HD], mask [B,T,S] -> out [B,H,T,S]. One block per
// query row, grid (H, T, B), like attention. The row lives in `out` itself
// (global memory), so nothing grows with S in shared memory:
//   1. one warp per key: out[s] = (q . k_s) * scale, or -inf where masked;
//   2. block max; each thread: out[s] = exp(out[s] - max) for its keys; block sum;
//   3. out[s] /= sum. A row with no visible key is all zeros; one with a NaN score all NaN.
template <typename T>
__global__ void attention_probs(const T* __restrict__ q, const T* __restrict__ k, const bool* __restrict__ mask,
                                float* __restrict__ out, int q_len, int kv_len, int heads, int kv_heads,
                                int head_dim, float scale) {
    extern __shared__ float q_row[];     // [head_dim] this query, as float32
    __shared__ float scratch[32];

    const int h = blockIdx.x, t = blockIdx.y, b = blockIdx.z;
    const int kv_head = h / (heads / kv_heads);
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    const size_t row = ((size_t)b * q_len + t) * heads + h;
    const bool* visible = mask + ((size_t)b * q_len + t) * kv_len;
    float* probs = out + (((size_t)b * heads + h) * q_len + t) * kv_len;  // [kv_len] of this row

    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) q_row[d] = to_float(q[row * head_dim + d]);
    __syncthreads();

    // 1. scores, one warp per key
    for (int key = warp; key < kv_len; key += warps) {
        float score = negative_infinity();
        if (visible[key]) {  // the same for the whole warp
            const T* k_row = k + (((size_t)b * kv_len + key) * kv_heads + kv_head) * head_dim;
            float dot = 0.0f;
            for (int d = lane; d < head_dim; d += 32) dot += q_row[d] * to_float(k_row[d]);
            score = visible_score(warp_sum(dot) * scale);
        }
        if (lane == 0) probs[key] = score;
    }
    __syncthreads();  // every warp's scores are written before threads read keys they did not score

    // 2. numerators exp(score - max), each thread over its own keys from here on
    float local_max = negative_infinity();
    for (int key = threadIdx.x; key < kv_len; key += blockDim.x) local_max = fmaxf(local_max, probs[key]);
    const float row_max = block_max(local_max, scratch);
    float local_sum = 0.0f;
    for (int key = threadIdx.x; key < kv_len; key += blockDim.x) {
        const float p = row_max == negative_infinity() ? 0.0f : expf(probs[key] - row_max);  // masked: 0
        probs[key] = p;
        local_sum += p;
    }
    const float sum = block_sum(local_sum, scratch);

    // 3. normalise (no visible key: sum = 0, the zeros stay; a NaN sum makes the row NaN)
    for (int key = threadIdx.x; key < kv_len; key += blockDim.x) probs[key] = sum != 0.0f ? probs[key] / sum : 0.0f;
}
