"""`python -m minilm.gpu_check ...` is `minilm gpu-check ...`: the same program, run as the `minilm`
command (its parser, one-line errors and exit status), not imported by this package."""
import runpy
import sys

sys.argv = ["minilm", "gpu-check", *sys.argv[1:]]
runpy.run_module("minilm.cli", run_name="__main__", alter_sys=True)
