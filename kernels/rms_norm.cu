// rms_norm.cu - Llama's RMSNorm: out = weight * (x / sqrt(mean(x^2) + eps)).
//
// One block per row of D elements. Threads stride over the row summing x^2 in
// float32, a block-wide sum gives mean(x^2), then each thread writes its
// elements. As in transformers, the normalised value is rounded to the
// activation type T before the weight multiply (a no-op for float32).
#include "common.cuh"

template <typename T, typename W>
__global__ void rms_norm(const T* __restrict__ x, const W* __restrict__ weight, T* __restrict__ out,
                         int dim, float eps) {
    __shared__ float scratch[32];
    const T* row = x + (size_t)blockIdx.x * dim;
    T* out_row = out + (size_t)blockIdx.x * dim;

    float sum_sq = 0.0f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
        float v = to_float(row[i]);
        sum_sq += v * v;
    }
    const float inv_rms = rsqrtf(block_sum(sum_sq, scratch) / dim + eps);

    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
        float normed = to_float(from_float<T>(to_float(row[i]) * inv_rms));
        out_row[i] = from_float<T>(to_float(weight[i]) * normed);
    }
}
