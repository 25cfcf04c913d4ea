// sampling.cu - choosing the next token from scores [B, V], one block per row.
//
// argmax: each thread scans a strided part of the row keeping the first best
//   index, then (value, index) pairs are reduced across the warp with shuffles
//   and across warps in shared memory. Ties go to the lower index, and NaN
//   counts as the largest value, as in NumPy and torch.
// sample: inverse CDF of softmax(scores) at a host-drawn uniform u. Each
//   thread owns a contiguous chunk of the row and sums exp(s - max) over it;
//   thread 0 walks the chunk sums to the chunk where the cumulative sum passes
//   u * total, then walks that chunk to the token. Filters (top-k, top-p,
//   min-p) run on the host beforehand and arrive as -inf scores.
#include "common.cuh"

__device__ __forceinline__ bool is_better(float a, int ia, float b, int ib) {
    if (isnan(a) || isnan(b)) return isnan(a) && (!isnan(b) || ia < ib);
    return a > b || (a == b && ia < ib);
}

template <typename T>
__global__ void argmax(const T* __restrict__ scores, long long* __restrict__ out, int vocab) {
    __shared__ float best_values[32];
    __shared__ int best_indices[32];
    const T* row = scores + (size_t)blockIdx.x * vocab;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;

    float best = negative_infinity();
    int best_index = vocab;  // "none yet": loses every tie
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        const float s = to_float(row[i]);
        if (best_index == vocab || is_better(s, i, best, best_index)) best = s, best_index = i;
    }
    for (int offset = 16; offset > 0; offset /= 2) {
        const float other = __shfl_xor_sync(0xffffffffu, best, offset);
        const int other_index = __shfl_xor_sync(0xffffffffu, best_index, offset);
        if (other_index != vocab && (best_index == vocab || is_better(other, other_index, best, best_index)))
            best = other, best_index = other_index;
    }
    if (lane == 0) best_values[warp] = best, best_indices[warp] = best_index;
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < warps; ++w) {
            if (best_indices[w] != vocab && is_better(best_values[w], best_indices[w], best, best_index))
                best = best_values[w], best_index = best_indices[w];
        }
        out[blockIdx.x] = best_index;
    }
}

constexpr int SAMPLE_THREADS = 256;  // the launcher must use this block size

template <typename T>
__global__ void sample(const T* __restrict__ scores, const float* __restrict__ uniforms, long long* __restrict__ out,
                       int vocab) {
    __shared__ float scratch[32];
    __shared__ float chunk_sums[SAMPLE_THREADS];
    assert(blockDim.x == SAMPLE_THREADS);
    const T* row = scores + (size_t)blockIdx.x * vocab;

    float local_max = negative_infinity();
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) local_max = fmaxf(local_max, to_float(row[i]));
    const float row_max = block_max(local_max, scratch);

    const int chunk = (vocab + blockDim.x - 1) / blockDim.x;
    const int begin = threadIdx.x * chunk, end = min(begin + chunk, vocab);
    float sum = 0.0f;
    for (int i = begin; i < end; ++i) sum += expf(to_float(row[i]) - row_max);
    chunk_sums[threadIdx.x] = sum;
    __syncthreads();

    if (threadIdx.x == 0) {
        float total = 0.0f;
        for (int c = 0; c < blockDim.x; ++c) total += chunk_sums[c];
        const float target = uniforms[blockIdx.x] * total;
        float cumulative = 0.0f;
        int choice = -1;
        for (int c = 0; c < blockDim.x && choice < 0; ++c) {
            if (cumulative + chunk_sums[c] <= target) {  // the token is in a later chunk
                cumulative += chunk_sums[c];
                continue;
            }
            for (int i = c * chunk; i < min((c + 1) * chunk, vocab) && choice < 0; ++i) {
                cumulative += expf(to_float(row[i]) - row_max);
                if (cumulative > target) choice = i;
            }
        }
        // Rounding can leave u * total past the last step of the CDF: take the last possible token.
        for (int i = vocab - 1; choice < 0 && i >= 0; --i) {
            if (to_float(row[i]) > negative_infinity()) choice = i;
        }
        out[blockIdx.x] = choice;
    }
}
