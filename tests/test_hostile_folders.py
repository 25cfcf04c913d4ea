"""Never delete or overwrite what minilm did not create (issue 23): the replace re-checks minilm's
marker on the folder it actually moved, the final rename never replaces, staging folders are known
by their marker and not by their name, random-checkpoint and /save keep the user's files."""
from __future__ import annotations

import json
import os
import time

import pytest

from minilm import convert
from minilm.convert import ConversionError, convert_gguf
from minilm.testing import random_checkpoint, tiny_config
from tests.hostile_helpers import assert_one_line_error, run_cli, run_python, time_limit  # noqa: F401


@pytest.fixture(scope="module")
def gguf(tmp_path_factory):
    """A tiny random llama GGUF (no tokenizer: converted with weights=False, the side-folder path)."""
    return random_checkpoint(tiny_config("llama"), str(tmp_path_factory.mktemp("gguf") / "g"), dtype="q8_0")


def users_folder(path) -> None:
    os.makedirs(path)
    with open(os.path.join(path, "notes.txt"), "w") as f:
        f.write("mine")


def assert_users_folder(path) -> None:
    assert os.listdir(path) == ["notes.txt"] and open(os.path.join(path, "notes.txt")).read() == "mine"


def during_conversion(monkeypatch, action) -> None:
    """Run `action` just before the finished conversion is renamed into place (when its marker is made)."""
    real = convert.conversion_marker

    def marker(*args):
        action()
        return real(*args)
    monkeypatch.setattr(convert, "conversion_marker", marker)


def test_a_folder_created_during_the_conversion_is_kept(gguf, tmp_path, monkeypatch):
    out = str(tmp_path / "out")
    during_conversion(monkeypatch, lambda: users_folder(out))
    with pytest.raises(ConversionError) as info:
        convert_gguf(gguf, out, progress=False, weights=False)
    assert_one_line_error(str(info.value), out, "appeared while converting", "left as it is")
    assert_users_folder(out)
    assert sorted(os.listdir(tmp_path)) == ["out"]                      # no staging folder left


def test_a_conversion_swapped_for_a_users_folder_is_not_replaced(gguf, tmp_path, monkeypatch):
    """--overwrite replaces an earlier conversion; a user's folder put in its place after the first
    check is found by the check on the folder moved aside, and put back."""
    out = str(tmp_path / "out")
    convert_gguf(gguf, out, progress=False, weights=False)

    def swap():
        os.rename(out, str(tmp_path / "earlier"))
        users_folder(out)
    during_conversion(monkeypatch, swap)
    with pytest.raises(ConversionError, match="is not a minilm conversion"):
        convert_gguf(gguf, out, progress=False, overwrite=True, weights=False)
    assert_users_folder(out)


def test_overwrite_still_replaces_an_earlier_conversion(gguf, tmp_path):
    """Negative control: the replace itself still works."""
    out = str(tmp_path / "out")
    convert_gguf(gguf, out, progress=False, weights=False)
    before = os.stat(os.path.join(out, convert.MARKER_FILE)).st_ino
    convert_gguf(gguf, out, progress=False, overwrite=True, weights=False)
    assert os.stat(os.path.join(out, convert.MARKER_FILE)).st_ino != before
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_staging_folders_are_known_by_marker_not_by_name(gguf, tmp_path):
    out = str(tmp_path / "out")
    dead = 4_194_000                                                     # above any PID this machine gives
    users = str(tmp_path / f".out.partial-{dead}-0123abcd")
    stale = str(tmp_path / f".out.partial-{dead}-89abcdef")
    users_folder(users)
    os.makedirs(stale)
    open(os.path.join(stale, convert.STAGING_MARKER), "w").close()       # what a killed conversion leaves
    for path in (users, stale, os.path.join(users, "notes.txt"), os.path.join(stale, convert.STAGING_MARKER)):
        os.utime(path, (time.time() - 3600,) * 2)
    convert_gguf(gguf, out, progress=False, weights=False)
    assert_users_folder(users)                                           # named like one, but not minilm's
    assert not os.path.exists(stale)                                     # minilm's own leftover: cleaned


def test_random_checkpoint_refuses_a_folder_that_is_not_empty(tmp_path):
    users_folder(tmp_path / "out")
    with open(tmp_path / "out" / "model.safetensors", "w") as f:
        f.write("the user's own weights")
    result = run_cli("random-checkpoint", str(tmp_path / "out"), "--config", "llama", "--dtype", "float32")
    assert result.returncode == 2
    assert_one_line_error(result.stderr.strip(), "is not empty", "--overwrite")
    assert open(tmp_path / "out" / "model.safetensors").read() == "the user's own weights"
    result = run_cli("random-checkpoint", str(tmp_path / "out"), "--config", "llama", "--dtype", "float32",
                     "--overwrite")                                      # negative control: asked for
    assert result.returncode == 0, result.stderr


def test_a_failed_save_keeps_the_earlier_one(tmp_path):
    """/save on a full disk (a file-size limit): the earlier save stays whole, no partial file is left."""
    saved = tmp_path / "conversation.json"
    saved.write_text(json.dumps({"messages": []}))
    result = run_python(f"""
        from types import SimpleNamespace
        from minilm.chat import ChatSession as Session
        messages = [{{"role": "user", "content": "x" * 20000}}]
        session = SimpleNamespace(model=None, settings={{}}, conversation=lambda: messages)
        try:
            Session.save(session, {str(saved)!r})
        except OSError as e:
            print("refused:", e)
        """, file_size=4096)
    assert "refused:" in result.stdout and "conversation.json" in result.stdout, result.stdout + result.stderr
    assert json.loads(saved.read_text()) == {"messages": []}
    assert sorted(os.listdir(tmp_path)) == ["conversation.json"]
