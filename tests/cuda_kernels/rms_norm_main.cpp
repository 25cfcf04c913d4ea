// rms_norm_main.cpp - launch kernels/rms_norm.cu through the harness from a plain executable.
//
// tests/test_cuda_portable.py appends this to the harness translation unit of
// rms_norm<float, float> (entry point minilm_launch_0), cross-compiles it for
// AArch64 and runs it under qemu-user. Inputs follow fixed formulas that the
// test recomputes with NumPy; results print as exact decimal floats.

static const int kRows = 3, kDim = 300;

int main() {
    static float input[kRows * kDim], weight[kDim], output[kRows * kDim];
    for (int i = 0; i < kRows * kDim; ++i) input[i] = float((i * 37) % 101 - 50) / 25.0f;
    for (int j = 0; j < kDim; ++j) weight[j] = 1.0f + float((j * 13) % 7 - 3) / 10.0f;
    const float* input_ptr = input;
    const float* weight_ptr = weight;
    float* output_ptr = output;
    int dim = kDim;
    float eps = 1e-6f;
    void* args[] = {&input_ptr, &weight_ptr, &output_ptr, &dim, &eps};
    printf("switch %s\n", minilm_fiber_switch());
    for (int reverse = 0; reverse < 2; ++reverse) {   // both thread orders, on two OS threads
        ::harness::LaunchConfig config = {{kRows, 1, 1}, {128, 1, 1}, 0, 48 * 1024, reverse, 2};
        char error[512] = "";
        int status = minilm_launch_0(&config, args, error, sizeof error);
        if (status != 0) {
            fprintf(stderr, "rms_norm launch failed (status %d): %s\n", status, error);
            return 1;
        }
        printf("%s", reverse ? "reverse" : "forward");
        for (float value : output) printf(" %.9g", value);
        printf("\n");
    }
    return 0;
}
