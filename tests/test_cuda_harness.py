"""The CPU harness for CUDA C (minilm/cuda/emulator.py + cuda_harness.h).

First its CUDA semantics (shuffles per the PTX rules, votes, atomics, shared
memory, 3-D indices, half/bf16, printf), then every bug detection, each shown
with a deliberately broken kernel from tests/cuda_kernels/harness_kernels.cu. Kernels
that could hang or kill the process if a detection regressed run in a forked
child with a timeout.
"""
import multiprocessing
from pathlib import Path

import numpy as np
import pytest

import cupy  # noqa: F401

from minilm.cuda import emulator  # noqa: E402
from minilm.cuda.emulator import (DeadlockError, DeviceAssertError, DivergenceError, EmulatedModule,  # noqa: E402
                                  LaunchError, RaceError, SharedMemoryError)
from minilm.cuda.registry import load_source  # noqa: E402

SOURCE = Path(__file__).parent / "cuda_kernels" / "harness_kernels.cu"
KERNELS = ["shuffle_modes", "votes", "atomics", "reverse_rows", "coordinates", "half_round_trip", "say_hello",
           "neighbour_sum", "scale", "broken_missing_barrier", "broken_divergent_syncthreads", "broken_two_barriers",
           "broken_shuffle_exited_lane", "broken_uninitialised_shared", "broken_uninitialised_dynamic_shared",
           "broken_device_assert", "broken_deadlock", "broken_too_much_shared", "broken_scratch_reuse"]


@pytest.fixture(scope="module")
def module():
    return EmulatedModule(load_source(SOURCE), KERNELS)


@pytest.fixture(scope="module")
def forward_only():
    # For bugs whose forward-order result we want to look at (no order comparison).
    return EmulatedModule(load_source(SOURCE), KERNELS, thread_order="forward")


def run_in_child(fn, timeout: float = 60.0):
    """Run fn() in a forked child: -> ("ok", "") or (exception class name, message).

    A kernel that hangs or crashes then fails one test instead of the session.
    """
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)

    def target():
        try:
            fn()
            send.send(("ok", ""))
        except Exception as error:  # report any exception to the parent
            send.send((type(error).__name__, str(error)))

    child = context.Process(target=target)
    child.start()
    child.join(timeout)
    if child.is_alive():
        child.kill()
        child.join()
        pytest.fail(f"the kernel hung for {timeout:.0f} s")
    if child.exitcode != 0:
        pytest.fail(f"the child process died (exit code {child.exitcode})")
    return receive.recv()


# --- CUDA semantics ------------------------------------------------------------

def ptx_shuffle(mode: str, lane: int, arg: int, width: int) -> int:
    """The source lane per the PTX shfl.sync rules CUDA's __shfl_*_sync compile to."""
    segment = lane & ~(width - 1)
    last = segment + width - 1
    source = {"idx": segment + arg % width, "up": lane - arg, "down": lane + arg, "xor": lane ^ arg}[mode]
    inside = segment <= source <= last if mode != "xor" else source <= last
    return source if inside else lane


@pytest.mark.parametrize("mode", ["idx", "up", "down", "xor"])
@pytest.mark.parametrize("arg,width", [(0, 32), (1, 32), (3, 32), (5, 8), (17, 16), (1, 4), (2, 2)])
def test_shuffles_follow_ptx_rules(module, mode, arg, width):
    out = np.zeros(32, np.int32)
    module.get_function("shuffle_modes")((1,), (32,), (out, np.int32(["idx", "up", "down", "xor"].index(mode)),
                                                     np.int32(arg), np.int32(width)))
    expected = [100 + ptx_shuffle(mode, lane, arg, width) for lane in range(32)]
    np.testing.assert_array_equal(out, expected)


def test_warp_votes_and_syncthreads_count(module):
    predicate = (np.arange(64) % 3 == 0).astype(np.int32)
    predicate[32:] = 1                              # warp 1: all true
    out = np.zeros(8, np.uint32)
    module.get_function("votes")((1,), (64,), (predicate, out))
    ballot0 = sum(1 << lane for lane in range(32) if predicate[lane])
    np.testing.assert_array_equal(out, [ballot0, 1, 0, predicate.sum(), 0xFFFFFFFF, 1, 1, predicate.sum()])


def test_atomics_across_blocks(forward_only):
    # Float atomicAdd and CAS races are order-dependent by design: no order comparison here.
    n = 300
    x = np.random.default_rng(0).random(n).astype(np.float32)
    total, count = np.zeros(1, np.float32), np.zeros(1, np.int32)
    best, claim = np.zeros(1, np.uint64), np.full(1, -1, np.int32)
    forward_only.get_function("atomics")((5,), (64,), (x, np.int32(n), total, count, best, claim))
    assert count[0] == n
    assert total[0] == pytest.approx(x.sum(), rel=1e-5)
    assert int(best[0]) & 0xFFFFFFFF == int(np.argmax(x))
    assert 0 <= claim[0] < n


def test_static_and_dynamic_shared_memory_2d_block(module):
    width, rows = 32, 16
    x = np.arange(rows * width, dtype=np.float32).reshape(rows, width)
    out = np.zeros_like(x)
    module.get_function("reverse_rows")((rows // 8,), (width, 8), (x, out, np.int32(width)),
                                        shared_mem=8 * width * 4)
    np.testing.assert_array_equal(out, 2 * x[:, ::-1])


def test_three_dimensional_indices(module):
    grid, block = (3, 2, 2), (4, 3, 2)
    out = np.zeros(np.prod(grid) * np.prod(block), np.int32)
    module.get_function("coordinates")(grid, block, (out,))
    expected = [bx + 10 * by + 100 * bz + 1000 * (tx + 10 * ty + 100 * tz)
                for bz in range(2) for by in range(2) for bx in range(3)
                for tz in range(2) for ty in range(3) for tx in range(4)]
    np.testing.assert_array_equal(out, expected)


def test_half_and_bfloat16_conversions(module):
    x = np.array([1.0, -2.5, 3.14159, 65504.0, 1e-3, 0.1], np.float32)
    half, bf16, back = np.zeros(6, np.float16), np.zeros(6, np.uint16), np.zeros(6, np.float32)
    module.get_function("half_round_trip")((1,), (32,), (x, half, bf16, back, np.int32(6)))
    np.testing.assert_array_equal(half, x.astype(np.float16))
    from minilm.formats.bfloat16 import bfloat16_to_float32, to_bfloat16
    np.testing.assert_array_equal(bf16, to_bfloat16(x))
    np.testing.assert_allclose(back, half.astype(np.float32) + bfloat16_to_float32(bf16))


def test_kernel_printf_reaches_stdout(module, capfd):
    module.get_function("say_hello")((2,), (32,), (np.int32(42),))
    assert capfd.readouterr().out.count("hello from the kernel: 42") == 2  # once per thread order


def test_correct_kernel_passes_the_order_check(module):
    x = np.arange(64, dtype=np.float32)
    out = np.zeros_like(x)
    module.get_function("neighbour_sum")((1,), (64,), (x, out))
    np.testing.assert_array_equal(out, x + np.roll(x, -1))


def test_build_is_cached_by_hash(module):
    again = emulator.build_library(load_source(SOURCE), KERNELS)
    assert again == module.library_path


# --- bug detection ---------------------------------------------------------------

def test_missing_barrier_is_a_race(module):
    x = np.arange(64, dtype=np.float32)
    with pytest.raises(RaceError, match="missing __syncthreads"):
        module.get_function("broken_missing_barrier")((1,), (64,), (x, np.zeros_like(x)))


def test_missing_barrier_between_two_block_reductions(module):
    # The subtle version: shuffles keep each warp in step, but nothing stops warp 0 from
    # starting the second reduction while warp 3 still reads the first one's partial sums.
    x = np.random.default_rng(0).random(128).astype(np.float32)
    with pytest.raises(RaceError):
        module.get_function("broken_scratch_reuse")((1,), (128,), (x, np.zeros_like(x)))


def test_divergent_syncthreads_after_early_return(module):
    kind, message = run_in_child(
        lambda: module.get_function("broken_divergent_syncthreads")((1,), (32,), (np.zeros(32, np.float32),)))
    assert kind == DivergenceError.__name__
    assert "already returned" in message


def test_threads_at_different_barriers(module):
    kind, message = run_in_child(
        lambda: module.get_function("broken_two_barriers")((1,), (32,), (np.zeros(32, np.float32),)))
    assert kind == DivergenceError.__name__
    assert "divergent __syncthreads" in message and "harness_kernels.cu" in message


def test_shuffle_over_exited_lane(module):
    kind, message = run_in_child(
        lambda: module.get_function("broken_shuffle_exited_lane")((1,), (32,), (np.zeros(32, np.float32),)))
    assert kind == DivergenceError.__name__
    assert "__shfl_down_sync" in message and "exited" in message


def test_uninitialised_shared_memory_reads_nan(forward_only):
    out = np.zeros(64, np.float32)
    forward_only.get_function("broken_uninitialised_shared")((1,), (64,), (out,))
    assert (out[:32] == 1).all() and np.isnan(out[32:]).all()
    forward_only.get_function("broken_uninitialised_dynamic_shared")((1,), (64,), (out,), shared_mem=256)
    assert np.isnan(out).all()


def test_wrong_argument_types_are_rejected(module):
    scale = module.get_function("scale")
    x, out = np.ones(10, np.float32), np.zeros(10, np.float32)
    scale((1,), (32,), (x, out, np.int32(10), np.float32(2)))  # the right call
    np.testing.assert_array_equal(out, 2 * x)
    with pytest.raises(LaunchError, match="Python float"):
        scale((1,), (32,), (x, out, np.int32(10), 2.0))
    with pytest.raises(LaunchError, match="numpy.int64 scalar; the kernel takes int32"):
        scale((1,), (32,), (x, out, np.int64(10), np.float32(2)))
    with pytest.raises(LaunchError, match="float64 array; the kernel reads float32"):
        scale((1,), (32,), (x.astype(np.float64), out, np.int32(10), np.float32(2)))
    with pytest.raises(LaunchError, match="takes 4 arguments, got 3"):
        scale((1,), (32,), (x, out, np.int32(10)))
    with pytest.raises(LaunchError, match="non-contiguous"):
        scale((1,), (32,), (np.ones(20, np.float32)[::2], out, np.int32(10), np.float32(2)))
    out.flags.writeable = False
    with pytest.raises(LaunchError, match="read-only"):
        scale((1,), (32,), (x, out, np.int32(10), np.float32(2)))


def test_bad_launch_configuration(module):
    scale = module.get_function("scale")
    args = (np.ones(1, np.float32), np.zeros(1, np.float32), np.int32(1), np.float32(1))
    with pytest.raises(LaunchError, match="1024 threads"):
        scale((1,), (2048,), args)
    with pytest.raises(LaunchError, match="shared_mem"):
        scale((1,), (32,), args, shared_mem=64 * 1024)


def test_device_assert_becomes_an_exception(module):
    x = np.ones(32, np.float32)
    x[7] = -1
    kind, message = run_in_child(lambda: module.get_function("broken_device_assert")((1,), (32,), (x,)))
    assert kind == DeviceAssertError.__name__
    assert "Assertion `x[threadIdx.x] >= 0.0f` failed" in message and "thread (7,0,0)" in message


def test_deadlock_is_reported(module):
    kind, message = run_in_child(
        lambda: module.get_function("broken_deadlock")((1,), (32,), (np.zeros(32, np.float32),)))
    assert kind == DeadlockError.__name__
    assert "__shfl_sync" in message and "in __syncthreads" in message


def test_shared_memory_over_the_block_limit(module):
    kind, message = run_in_child(
        lambda: module.get_function("broken_too_much_shared")((1,), (32,), (np.zeros(32, np.float32),)))
    assert kind == SharedMemoryError.__name__
    assert "49152" in message


def test_unsupported_shared_declaration_is_refused():
    with pytest.raises(emulator.HarnessBuildError, match="one variable per statement"):
        emulator.rewrite_shared("__global__ void k() { __shared__ float a[4], b[4]; }")
