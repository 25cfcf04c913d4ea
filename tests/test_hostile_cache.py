"""The conversion cache and the GGUF converter under damage and attack (issue 14, classes 6-8,
`minilm convert --overwrite`, identity-keyed reuse, and a fuzz test of the GGUF metadata path).

Tiny synthetic GGUFs (tests/test_convert.py's writer) convert in well under a second, so every
case converts for real; the default model's folder logic is the same `convert_once`.
"""
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import minilm
from minilm import convert, default_model
from minilm.convert import MARKER_FILE, ConversionError, UnsupportedGGUFError, convert_gguf, read_gguf
from minilm.default_model import DefaultModelError, converted_gguf_dir, default_model_dir
from test_convert import hf_llama_weights, write_tiny_gguf
from hostile_helpers import ROOT, assert_cli_error, assert_one_line_error, run_cli, time_limit  # noqa: F401


@pytest.fixture
def tiny_gguf(tmp_path):
    return write_tiny_gguf(tmp_path / "tiny.gguf", hf_llama_weights())


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MINILM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def count_conversions(monkeypatch):
    calls = []
    real = default_model.convert_gguf

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)
    monkeypatch.setattr(default_model, "convert_gguf", counting)
    return calls


def loads(folder):
    return minilm.load(folder, backend="numpy", progress=False).config.num_hidden_layers == 2


# ---------------------------------------------------------------------- class 6: a damaged cache is repaired


def test_intact_cache_is_reused(tiny_gguf, cache, monkeypatch):
    """Negative control for class 6: an intact conversion is not converted again."""
    folder = converted_gguf_dir(tiny_gguf, progress=False)
    calls = count_conversions(monkeypatch)
    assert converted_gguf_dir(tiny_gguf) == folder and calls == []


@pytest.mark.parametrize("damage", ["truncate model", "truncate tokenizer", "edit model head", "edit model tail",
                                    "remove config", "marker not JSON", "marker nested", "marker is a folder"])
def test_damaged_cache_is_converted_again(tiny_gguf, cache, monkeypatch, damage):
    """The issue's example (a truncated model.safetensors failed on every run, for ever) and variants."""
    folder = converted_gguf_dir(tiny_gguf, progress=False)
    model, marker = os.path.join(folder, "model.safetensors"), os.path.join(folder, MARKER_FILE)
    if damage.startswith("truncate"):
        path = model if "model" in damage else os.path.join(folder, "tokenizer.json")
        os.truncate(path, os.path.getsize(path) // 2)
    elif damage.startswith("edit"):
        with open(model, "r+b") as f:
            f.seek(100 if "head" in damage else os.path.getsize(model) - 4)
            f.write(b"\x7f\x7f\x7f\x7f")
    elif damage == "remove config":
        os.remove(os.path.join(folder, "config.json"))
    elif damage == "marker not JSON":
        open(marker, "w").write('{"converter_version": ')
    elif damage == "marker nested":
        open(marker, "w").write("[" * 100000)
    else:
        os.remove(marker)
        os.mkdir(marker)
    calls = count_conversions(monkeypatch)
    assert converted_gguf_dir(tiny_gguf, progress=False) == folder
    assert len(calls) == 1 and loads(folder)
    assert converted_gguf_dir(tiny_gguf) == folder and len(calls) == 1      # and reused afterwards


# ---------------------------------------------------------------------- class 7: never delete the user's files


def users_folder(path):
    os.makedirs(path)
    (path / "model.safetensors").write_bytes(b"the user's own download")
    (path / "notes.txt").write_text("mine")
    return path


def assert_untouched(path):
    assert (path / "notes.txt").read_text() == "mine"
    assert (path / "model.safetensors").read_bytes() == b"the user's own download"


def test_default_model_never_deletes_a_users_folder(cache, monkeypatch):
    """The issue's example: MINILM_CACHE holding the user's own SmolLM2 download (no marker)."""
    folder = users_folder(cache / "SmolLM2-135M-Instruct")
    monkeypatch.setattr(default_model, "convert_gguf", lambda *a, **k: pytest.fail("must not convert over it"))
    with pytest.raises(DefaultModelError) as info:
        default_model_dir(progress=False)
    assert_one_line_error(str(info.value), str(folder), "not made by minilm", "MINILM_CACHE")
    assert_untouched(folder)


def test_convert_overwrite_refuses_a_users_folder(tiny_gguf, tmp_path):
    folder = users_folder(tmp_path / "out")
    with pytest.raises(ConversionError) as info:
        convert_gguf(tiny_gguf, str(folder), progress=False, overwrite=True)
    assert_one_line_error(str(info.value), str(folder), "not a minilm conversion")
    assert_untouched(folder)
    assert sorted(os.listdir(tmp_path)) == ["out", "tiny.gguf"]      # no staging folder left either


def test_symlink_to_a_users_folder_is_refused(tiny_gguf, tmp_path):
    target = users_folder(tmp_path / "real")
    os.symlink(target, tmp_path / "out")
    with pytest.raises(ConversionError):
        convert_gguf(tiny_gguf, str(tmp_path / "out"), progress=False, overwrite=True)
    assert_untouched(target)
    assert os.path.islink(tmp_path / "out")


def test_a_file_where_the_cache_folder_belongs(tiny_gguf, cache):
    os.makedirs(cache / "gguf")
    first = converted_gguf_dir(tiny_gguf, progress=False)
    shutil.rmtree(first)
    open(first, "w").write("a file of the user")
    with pytest.raises(DefaultModelError):
        converted_gguf_dir(tiny_gguf, progress=False)
    assert open(first).read() == "a file of the user"


# ---------------------------------------------------------------------- class 8: leftovers


HANG_DURING_CONVERSION = """
import sys, time
from minilm import convert
real = convert.write_safetensors
def slow(path, tensors, on_tensor=None):
    open(path, "wb").write(b"partial")
    print("staging", flush=True)
    time.sleep(600)
convert.write_safetensors = slow
convert.convert_gguf(sys.argv[1], sys.argv[2], progress=False)
"""


def start_hanging_conversion(gguf, out):
    env = {**os.environ, "PYTHONPATH": ROOT}
    child = subprocess.Popen([sys.executable, "-c", HANG_DURING_CONVERSION, gguf, out], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
    assert child.stdout.readline().strip() == "staging", child.stderr.read()
    return child


def staging_folders(parent):
    return [n for n in os.listdir(parent) if ".partial-" in n or ".old-" in n]


def backdate(path, seconds):
    past = time.time() - seconds
    for root, _, files in os.walk(path):
        for name in files + [""]:
            os.utime(os.path.join(root, name), (past, past))


@pytest.mark.time_limit(100)
def test_sigkill_leftovers_are_removed_by_the_next_conversion(tiny_gguf, tmp_path):
    """The issue's example: SIGKILL during a conversion left a hidden .OUT.partial-PID-* folder."""
    out = str(tmp_path / "out")
    child = start_hanging_conversion(tiny_gguf, out)
    child.kill()
    child.wait(30)
    [leftover] = staging_folders(tmp_path)
    convert_gguf(tiny_gguf, out, progress=False)             # fresh: the quiet period protects it
    assert staging_folders(tmp_path) == [leftover]
    backdate(tmp_path / leftover, convert.STALE_AFTER_S + 5)
    convert_gguf(tiny_gguf, out, progress=False, overwrite=True)
    assert staging_folders(tmp_path) == [] and loads(out)


def test_staging_folders_of_live_processes_are_kept(tmp_path):
    """A conversion still running (its PID alive: our parent here) is never touched, however old."""
    live = tmp_path / f".out.partial-{os.getppid()}-0123abcd"
    os.makedirs(live)
    (live / "model.safetensors").write_bytes(b"x")
    backdate(live, 10_000)
    unrelated = tmp_path / ".out.partial-notapid"        # not minilm's pattern: never touched
    os.makedirs(unrelated)
    assert convert.remove_stale_siblings(str(tmp_path / "out")) == []
    assert live.exists() and unrelated.exists()


@pytest.mark.time_limit(100)
def test_sigterm_cleans_up_like_sigint(tiny_gguf, tmp_path):
    out = str(tmp_path / "out")
    child = start_hanging_conversion(tiny_gguf, out)
    child.send_signal(signal.SIGTERM)
    assert child.wait(30) == -signal.SIGTERM                 # still dies of SIGTERM
    assert staging_folders(tmp_path) == [] and not os.path.exists(out)


def test_replacing_a_symlinked_conversion_leaves_no_old_link(tiny_gguf, tmp_path):
    real = convert_gguf(tiny_gguf, str(tmp_path / "real"), progress=False)
    os.symlink(real, tmp_path / "link")
    convert_gguf(tiny_gguf, str(tmp_path / "link"), progress=False, overwrite=True)
    assert staging_folders(tmp_path) == []
    assert not os.path.islink(tmp_path / "link") and loads(str(tmp_path / "link"))
    assert loads(real)                                        # the link went, not its target


@pytest.mark.parametrize("change,fragment", [
    ("block_count", "llama.block_count=5 but the file holds tensors for 2 blocks"),   # the example
    ("missing", "missing tensor 'blk.1.ffn_up.weight'"),
    ("extra block", "unexpected tensor 'blk.2.attn_norm.weight': a 2-block llama model has no such tensor"),
    ("shape", "tensor 'output_norm.weight' has shape [15]"),
    ("bias of one layer", "missing tensor 'blk.0.attn_k.bias'"),
])
def test_gguf_whose_tensors_do_not_match_its_metadata(tmp_path, change, fragment):
    weights, extra = hf_llama_weights(), {}
    if change == "missing":
        del weights["model.layers.1.mlp.up_proj.weight"]
    elif change == "extra block":
        extra = {"blk.2.attn_norm.weight": np.ones(16, np.float32)}
    elif change == "shape":
        weights["model.norm.weight"] = np.ones(15, np.float32)
    elif change == "bias of one layer":
        extra = {"blk.0.attn_q.bias": np.zeros(16, np.float32)}
    path = write_tiny_gguf(tmp_path / "bad.gguf", weights, extra_tensors=extra)
    if change == "block_count":
        path = rewrite_block_count(path, 5)
    with pytest.raises(UnsupportedGGUFError) as info:
        convert_gguf(path, str(tmp_path / "out"), progress=False)
    assert_one_line_error(str(info.value), "bad.gguf", fragment)
    assert sorted(os.listdir(tmp_path)) == ["bad.gguf"]       # no folder, so no marker that can never load


def rewrite_block_count(path, count):
    """The tiny GGUF's llama.block_count (a uint32 right after its key) set to `count`."""
    data = bytearray(open(path, "rb").read())
    at = data.index(b"llama.block_count") + len(b"llama.block_count") + 4
    data[at:at + 4] = count.to_bytes(4, "little")
    open(path, "wb").write(bytes(data))
    return path


@pytest.mark.time_limit(120)
def test_full_disk_during_conversion_is_one_line_and_leaves_nothing(tiny_gguf, tmp_path):
    """A file-size limit (the same OSError path as a full disk) while writing the folder."""
    result = run_cli("convert", tiny_gguf, str(tmp_path / "out"), file_size=20_000, timeout=100)
    assert_cli_error(result, "out", "File too large")
    assert sorted(os.listdir(tmp_path)) == ["tiny.gguf"]


# ---------------------------------------------------------------------- convert --overwrite, identity


@pytest.mark.time_limit(200)
def test_cli_convert_overwrite(tiny_gguf, tmp_path):
    out = str(tmp_path / "out")
    assert run_cli("convert", tiny_gguf, out).returncode == 0
    assert_cli_error(run_cli("convert", tiny_gguf, out), "already exists", "--overwrite")
    result = run_cli("convert", tiny_gguf, out, "--overwrite")
    assert result.returncode == 0 and loads(out), result.stderr[-1000:]


def test_same_gguf_at_another_path_reuses_the_conversion(tiny_gguf, tmp_path, cache, monkeypatch):
    calls = count_conversions(monkeypatch)
    folder = converted_gguf_dir(tiny_gguf, progress=False)
    os.makedirs(tmp_path / "elsewhere")
    copy = shutil.copy2(tiny_gguf, tmp_path / "elsewhere" / "renamed.gguf")    # same bytes, same mtime
    os.link(tiny_gguf, tmp_path / "hardlink.gguf")
    assert converted_gguf_dir(str(copy)) == folder and converted_gguf_dir(str(tmp_path / "hardlink.gguf")) == folder
    assert len(calls) == 1


def test_a_changed_gguf_gets_its_own_conversion(tiny_gguf, tmp_path, cache, monkeypatch):
    calls = count_conversions(monkeypatch)
    first = converted_gguf_dir(tiny_gguf, progress=False)
    stat = os.stat(tiny_gguf)
    other = write_tiny_gguf(tmp_path / "other.gguf", hf_llama_weights(seed=5))   # same size, other weights
    os.replace(other, tiny_gguf)
    os.utime(tiny_gguf, ns=(stat.st_atime_ns, stat.st_mtime_ns))                 # even with the old mtime
    second = converted_gguf_dir(tiny_gguf, progress=False)
    assert second != first and len(calls) == 2
    os.utime(tiny_gguf)                                                          # touched: converted again
    assert converted_gguf_dir(tiny_gguf, progress=False) not in (first, second) and len(calls) == 3


# ---------------------------------------------------------------------- fuzz: the GGUF metadata path


def read_or_refused(path):
    try:
        reader, metadata = read_gguf(path)
    except ConversionError as e:
        assert path in str(e) and "\n" not in str(e), str(e)
        return None
    assert isinstance(metadata, dict)
    return metadata


@pytest.fixture(scope="module")
def gguf_bytes(tmp_path_factory):
    path = write_tiny_gguf(tmp_path_factory.mktemp("fuzz") / "seed.gguf", hf_llama_weights())
    return open(path, "rb").read()


@pytest.mark.time_limit(90)
@settings(max_examples=150, deadline=3000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_gguf_mutations(tmp_path, gguf_bytes, data):
    """Truncations and byte overwrites of a valid GGUF: read, or one ConversionError naming the file."""
    blob = bytearray(gguf_bytes)
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, 2000))
        blob[at:at + 8] = data.draw(st.sampled_from([b"\xff" * 8, b"\x00" * 8, (2**62).to_bytes(8, "little"),
                                                     (9).to_bytes(4, "little") * 2, b"\x08\x00\x00\x00" * 2]))
    blob = blob[:data.draw(st.integers(0, len(blob)))]
    path = tmp_path / "mutated.gguf"
    path.write_bytes(bytes(blob))
    read_or_refused(str(path))


SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


@st.composite
def gguf_headers(draw):
    """Headers built from scratch with counts and lengths that may lie (2**63 array elements ...)."""
    import struct
    lie = st.sampled_from([0, 1, 3, 2**31, 2**63 - 1, 2**64 - 1])
    parts = [b"GGUF", struct.pack("<I", draw(st.sampled_from([3, 2, 1, 0x03000000]))),
             struct.pack("<QQ", draw(lie | st.integers(0, 3)), draw(lie | st.integers(0, 4)))]
    for _ in range(draw(st.integers(0, 4))):
        key = draw(st.text(max_size=10)).encode()
        parts.append(struct.pack("<Q", draw(st.just(len(key)) | lie)) + key)
        kind = draw(st.sampled_from([4, 6, 8, 9, 13, 7]))
        parts.append(struct.pack("<I", kind))
        if kind in SCALARS:
            parts.append(draw(st.binary(min_size=struct.calcsize(SCALARS[kind]), max_size=8)))
        elif kind == 8:
            text = draw(st.binary(max_size=8))
            parts.append(struct.pack("<Q", draw(st.just(len(text)) | lie)) + text)
        elif kind == 9:
            parts.append(struct.pack("<IQ", draw(st.sampled_from([0, 8, 9, 4, 99])), draw(lie | st.integers(0, 3))))
            parts.append(draw(st.binary(max_size=24)))
    parts.append(draw(st.binary(max_size=64)))
    return b"".join(parts)


@pytest.mark.time_limit(90)
@settings(max_examples=150, deadline=3000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blob=gguf_headers())
def test_fuzz_gguf_headers(tmp_path, blob):
    path = tmp_path / "built.gguf"
    path.write_bytes(blob)
    read_or_refused(str(path))


def test_fuzz_negative_control(gguf_bytes, tmp_path):
    path = tmp_path / "seed.gguf"
    path.write_bytes(gguf_bytes)
    metadata = read_or_refused(str(path))
    assert metadata["general.architecture"] == "llama" and metadata["llama.block_count"] == 2


@pytest.mark.time_limit(30)
def test_array_claiming_2_63_elements_is_refused_quickly(gguf_bytes, tmp_path):
    """The gguf package's own reader loops once per claimed element: 2**63 would never end."""
    blob = bytearray(gguf_bytes)
    key = b"tokenizer.ggml.merges"
    at = blob.index(key) + len(key) + 4 + 4               # past the key, its value type and the item type
    blob[at:at + 8] = (2**63).to_bytes(8, "little")
    path = tmp_path / "lying.gguf"
    path.write_bytes(bytes(blob))
    with pytest.raises(ConversionError) as info:
        read_gguf(str(path))
    assert_one_line_error(str(info.value), "lying.gguf", "'tokenizer.ggml.merges'", "cannot fit in the file")


def test_gguf_metadata_of_the_wrong_type(tmp_path):
    """A string where a count belongs, tokens that are not strings: one UnsupportedGGUFError."""
    import gguf
    path = str(tmp_path / "typed.gguf")
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_string("llama.block_count", "two")
    writer.add_tensor("token_embd.weight", np.zeros((4, 16), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ConversionError) as info:
        convert_gguf(path, str(tmp_path / "out"), progress=False)
    assert_one_line_error(str(info.value), "typed.gguf")
    assert not os.path.exists(tmp_path / "out")
