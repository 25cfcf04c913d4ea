"""Which kernels exist: the .cu files in kernels/ and the template instantiations we launch.

The same source text (with local headers inlined) and the same name
expressions feed all three users, so they cannot drift apart:
`cupy.RawModule` on a GPU, the NVRTC compile check, and the CPU harness.
"""
from __future__ import annotations

import re
from pathlib import Path

# The kernels ship inside the package as minilm/kernels: in a checkout that is a
# symbolic link to the top-level kernels/ folder, in a wheel a copy of it.
KERNEL_DIR = Path(__file__).resolve().parents[1] / "kernels"

# Storage dtypes -> C++ type. NumPy and CuPy have no bfloat16, so bfloat16
# tensors travel as their raw 16 bits in uint16 arrays.
C_TYPES = {"float32": "float", "float16": "__half", "bfloat16": "__nv_bfloat16"}

FLOATS = ("float32", "float16", "bfloat16")
# (activation, weight) pairs for ops that mix the two: float32 activations
# with any weight storage, or everything in one half-precision type.
ACTIVATION_WEIGHT = (("float32", "float32"), ("float32", "float16"), ("float32", "bfloat16"),
                     ("float16", "float16"), ("bfloat16", "bfloat16"))


def name_expression(function: str, *dtypes: str) -> str:
    """rms_norm, float32, bfloat16 -> 'rms_norm<float, __nv_bfloat16>' (what CuPy looks up)."""
    return f"{function}<{', '.join(C_TYPES[d] for d in dtypes)}>"


def _all(function: str, combos) -> list[str]:
    return [name_expression(function, *c) for c in combos]


# Quantized weight formats (minilm.formats) -> the struct in kernels/quant.cuh that reads them.
# fp4 and nf4 share one struct: they differ only in the 16-entry table the backend passes.
QUANT_FORMATS = {"q8_0": "Q8_0", "q4_0": "Q4_0", "q4_1": "Q4_1", "int8": "Int8", "int4": "Int4",
                 "fp4": "Bnb4", "nf4": "Bnb4"}
# The formats whose weights are integer codes times a block scale have fast-mode kernels.
FAST_QUANT_FORMATS = ("q8_0", "q4_0", "q4_1", "int8", "int4")


def quant_name(function: str, format: str) -> str:
    """quant_gemv, q4_1 -> 'quant_gemv<Q4_1>'."""
    return f"{function}<{QUANT_FORMATS[format]}>"


def _quant(functions, formats) -> list[str]:
    return list(dict.fromkeys(quant_name(f, fmt) for f in functions for fmt in formats))


# kernels/<file>.cu -> every instantiation the backend may launch
MODULES: dict[str, list[str]] = {
    "rms_norm": _all("rms_norm", ACTIVATION_WEIGHT),
    "layer_norm": _all("layer_norm", ACTIVATION_WEIGHT),
    "rope": _all("rope", [(d,) for d in FLOATS]),
    "attention": _all("attention", [(d,) for d in FLOATS]) + _all("attention_probs", [(d,) for d in FLOATS]),
    "swiglu": _all("swiglu", [(d,) for d in FLOATS]),
    "matmul": _all("linear_gemv", ACTIVATION_WEIGHT) + _all("linear_tiled", ACTIVATION_WEIGHT),
    "embedding": _all("embedding", [(d,) for d in FLOATS]),
    "logit_scale": _all("scale_logits", [(d,) for d in FLOATS]),
    "sampling": _all("argmax", [(d,) for d in FLOATS]) + _all("sample", [(d,) for d in FLOATS]),
    "quant": _quant(("quant_gemv", "quant_tiled", "quant_embedding"), QUANT_FORMATS),
    "quant_fast": ["quantize_activations"] + _quant(("quant_gemv_fast", "quant_tiled_fast"), FAST_QUANT_FORMATS),
}

_LOCAL_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$', re.MULTILINE)


def load_source(path: Path | str, _seen: set | None = None) -> str:
    """A .cu file with its `#include "..."` headers inlined (once each, `#pragma once` style).

    Inlining makes the text self-contained: CuPy's compile cache is keyed by the
    source text, so a change in common.cuh must change the text. `#line`
    directives keep compiler messages pointing at the original files.
    """
    path = Path(path).resolve()
    seen = set() if _seen is None else _seen
    seen.add(path)
    text = path.read_text()

    def inline(match: re.Match) -> str:
        header = (path.parent / match.group(1)).resolve()
        if header in seen:
            return ""
        line = text.count("\n", 0, match.end()) + 2
        body = load_source(header, seen).replace("#pragma once", "")
        return f'#line 1 "{header}"\n{body}\n#line {line} "{path}"'

    return f'#line 1 "{path}"\n' + _LOCAL_INCLUDE.sub(inline, text)


def kernel_dir() -> Path:
    """The package's kernels folder; a clear error when the installation lacks it."""
    if not KERNEL_DIR.is_dir():
        raise FileNotFoundError(f"{KERNEL_DIR} is missing: this minilm has no CUDA kernel sources (in a checkout "
                                "it is a symbolic link to ../kernels; git on Windows may need core.symlinks=true)")
    return KERNEL_DIR


def module_file(module: str) -> Path:
    """kernels/<module>.cu, as installed with the package."""
    path = kernel_dir() / f"{module}.cu"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: kernel module {module!r} has no source file")
    return path


def module_source(module: str) -> str:
    return load_source(module_file(module))


def kernel_files() -> list[Path]:
    return sorted(kernel_dir().glob("*.cu"))
