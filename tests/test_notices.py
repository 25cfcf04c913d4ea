"""No silent minutes: one line on stderr, what and roughly how long, before each long first-run wait."""
import math
from collections import namedtuple

import numba
import numpy as np

from minilm import notices
from minilm.convert import FLOAT32_WRITE_RATE, announce_conversion

Tensor = namedtuple("Tensor", "shape")


def kernel_in_group(group: str):
    """A jitted function whose module is minilm.ops.numba_<group>, as the real kernels' are (no cache)."""
    namespace = {"__name__": f"minilm.ops.numba_{group}"}
    exec("def twice(x):\n    return 2 * x\n", namespace)
    return numba.njit(cache=False)(namespace["twice"])


def test_numba_compilation_is_announced_once_per_kernel_group(capfd):
    notices.announce_numba_compiles()
    notices.announce_numba_compiles()                                    # installing twice: still one line
    kernel, other = kernel_in_group("noticetest"), kernel_in_group("noticetest_other")
    assert kernel(3) == 6
    err = capfd.readouterr().err
    assert err == f"minilm: compiling the Numba kernels of noticetest for this CPU ({notices.NUMBA_GROUP_TIME})\n"
    assert kernel(4.0) == 8.0 and kernel(5) == 10                         # a new signature, then a cache hit
    assert capfd.readouterr().err == ""
    assert other(1) == 2
    assert "kernels of noticetest_other" in capfd.readouterr().err


def test_code_outside_minilms_kernels_is_not_announced(capfd):
    notices.announce_numba_compiles()
    assert numba.njit(lambda x: x + 1)(1) == 2
    assert capfd.readouterr().err == ""


def test_a_float32_copy_that_takes_seconds_is_announced_with_its_size_and_time(capfd):
    big = [Tensor((49152, 576)), Tensor((30, 576, 1536))]                 # SmolLM2's embedding and MLPs' size
    nbytes = 4 * sum(math.prod(t.shape) for t in big)
    announce_conversion("/x/model.gguf", big, "/cache/model")
    err = capfd.readouterr().err
    assert err.startswith(f"minilm: converting model.gguf into a float32 copy of {nbytes / 2**20:,.0f} MiB "
                          "in /cache/model (once, about ")
    assert f"about {nbytes / FLOAT32_WRITE_RATE:.0f} s)" in err
    announce_conversion("/x/tiny.gguf", [Tensor((64, 64))], "/cache/tiny")      # well under 2 s: quiet
    announce_conversion("/x/model.gguf", big, "/cache/model", enabled=False)    # progress=False: quiet
    assert capfd.readouterr().err == ""


def test_cuda_harness_build_is_announced_and_a_cached_build_is_quiet(tmp_path, monkeypatch, capfd):
    from minilm.cuda.emulator import EmulatedModule
    monkeypatch.setenv("MINILM_CUDA_CACHE", str(tmp_path))
    source = 'extern "C" __global__ void add_one(float* x) { x[threadIdx.x] += 1.0f; }\n'
    x = np.zeros(4, dtype=np.float32)
    EmulatedModule(source, ["add_one"]).get_function("add_one")((1,), (4,), (x,))
    err = capfd.readouterr().err
    assert err.startswith("minilm: building the CUDA emulation harness for 1 kernel(s) with ")
    assert f"cached in {tmp_path})" in err
    EmulatedModule(source, ["add_one"])
    assert capfd.readouterr().err == "" and x.tolist() == [1.0] * 4
