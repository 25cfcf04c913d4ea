"""`minilm chat` and `minilm generate` as a user meets them: commands, Ctrl-C, the context window,
settings from generation_config.json, help texts, extras. Driven through stdin and signals of a
real `python -m minilm.cli` process on a tiny random model with a character tokenizer
(tests/chat_checkpoint.py), on the NumPy backend so that no Numba compilation is waited for."""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

import minilm
from minilm import chat
from minilm.cli import build_parser, main
from minilm.extras import MissingExtraError, require_extra
from minilm.tokenizer import Tokenizer
from chat_checkpoint import tiny_chat_checkpoint

SAMPLING = {"do_sample": True, "temperature": 0.7, "top_k": 5}


def cli(*args, stdin="", timeout=300):
    return subprocess.run([sys.executable, "-m", "minilm.cli", *map(str, args)], input=stdin, capture_output=True,
                          text=True, timeout=timeout)


class Live:
    """A running `minilm chat`: stdout and stderr collected by threads, stdin written line by line."""

    def __init__(self, *args):
        # SIGINT back to its default in the child: a test run started in the background (`cmd &` in a
        # script) inherits SIGINT ignored, and Python then never raises KeyboardInterrupt.
        self.proc = subprocess.Popen([sys.executable, "-m", "minilm.cli", "chat", *map(str, args)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        self.out, self.err = bytearray(), bytearray()
        for stream, buffer in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=self._collect, args=(stream, buffer), daemon=True).start()

    @staticmethod
    def _collect(stream, buffer):
        while chunk := os.read(stream.fileno(), 4096):
            buffer.extend(chunk)

    def wait_for(self, condition, what: str, timeout: float = 120):
        deadline = time.monotonic() + timeout
        while not condition():
            assert self.proc.poll() is None, f"chat exited while waiting for {what}: {self.err.decode()}"
            assert time.monotonic() < deadline, f"no {what} after {timeout} s: {self.out.decode()!r}"
            time.sleep(0.05)

    def send(self, line: str):
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def close(self, timeout: float = 120) -> int:
        self.proc.stdin.close()
        return self.proc.wait(timeout)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_chat_checkpoint(tmp_path_factory.mktemp("tiny-chat"))


@pytest.fixture(scope="module")
def sampling_tiny(tmp_path_factory):
    return tiny_chat_checkpoint(tmp_path_factory.mktemp("tiny-sampling"), generation_config=SAMPLING)


@pytest.fixture(scope="module")
def endless(tmp_path_factory):
    """Greedy replies that only Ctrl-C or the length ends (about 5 ms a token)."""
    return tiny_chat_checkpoint(tmp_path_factory.mktemp("tiny-endless"), max_position_embeddings=4096, endless=True)


def reply_text(folder, **kwargs) -> str:
    """What the Python API generates for 'Hi', decoded as the CLI prints it."""
    tokenizer = Tokenizer.from_pretrained(folder)
    model = minilm.load(folder, backend="numpy", progress=False)
    ids = chat.prompt_ids(tokenizer, [{"role": "user", "content": "Hi"}])
    out = model.generate(ids, **kwargs)[0, ids.shape[1]:]
    eos = tokenizer.token_to_id("<|im_end|>")
    out = out[:list(out).index(eos)] if eos in out else out
    return tokenizer.decode(out, skip_special_tokens=True)


# --- settings: the command line > generation_config.json > minilm's defaults --------------------

def test_settings_precedence():
    settings, sources = chat.effective_settings({"top_p": 0.5, "temperature": None}, SAMPLING | {"top_p": 0.9})
    assert settings["top_p"] == 0.5 and sources["top_p"] == "command line"
    assert settings["temperature"] == 0.7 and settings["top_k"] == 5 and sources["top_k"] == "generation_config.json"
    assert settings["max_new_tokens"] == 256 and sources["max_new_tokens"] == "default"
    assert chat.effective_settings({}, {})[0]["temperature"] == 0.0                      # no file: greedy
    # As in transformers, a temperature without do_sample does not sample.
    assert chat.effective_settings({}, {"temperature": 0.6})[0]["temperature"] == 0.0
    assert chat.effective_settings({"temperature": 0.0}, SAMPLING)[0]["temperature"] == 0.0


def test_params_parse_and_refuse():
    settings = chat.effective_settings({}, {})[0]
    new = chat.parse_params("temperature=0.7 top-p=0.9 max_new_tokens=128 seed=3", settings)
    assert (new["temperature"], new["top_p"], new["max_new_tokens"], new["seed"]) == (0.7, 0.9, 128, 3)
    assert settings["temperature"] == 0.0                                              # the old dict is untouched
    assert chat.parse_params("seed=none min_p=0.1", new)["seed"] is None
    for bad, message in [("top_p=1.5", "top_p=1.5 must be in (0, 1]"), ("temperature=hot", "is not a number"),
                         ("max_new_tokens=2.5", "is not an integer"), ("beam=4", "key one of"),
                         ("temperature", "key one of")]:
        with pytest.raises(chat.SettingsError, match=message.replace("(", r"\(").replace("]", r"\]")):
            chat.parse_params(bad, settings)


# --- generate: defaults from generation_config.json ------------------------------------------

def test_generate_uses_generation_config_and_temperature_0_is_greedy(tiny, sampling_tiny):
    greedy = reply_text(tiny, max_new_tokens=12)
    sampled = reply_text(sampling_tiny, max_new_tokens=12, seed=1)           # generation_config.json samples
    assert sampled == reply_text(tiny, max_new_tokens=12, seed=1, **SAMPLING)
    assert sampled != greedy

    result = cli("generate", "Hi", "--model", sampling_tiny, "--backend", "numpy", "--max-new-tokens", 12,
                 "--seed", 1, "--verbose")
    assert result.returncode == 0, result.stderr
    assert result.stdout == sampled + "\n"
    assert "temperature=0.7 (generation_config.json)" in result.stderr
    assert "top_k=5 (generation_config.json)" in result.stderr and "max_new_tokens=12 (command line)" in result.stderr

    result = cli("generate", "Hi", "--model", sampling_tiny, "--backend", "numpy", "--max-new-tokens", 12,
                 "--seed", 1, "--temperature", 0, "--verbose")
    assert result.returncode == 0, result.stderr
    assert result.stdout == greedy + "\n"
    assert "temperature=0 (greedy) (command line)" in result.stderr


def test_bad_value_in_generation_config_is_one_line(tmp_path):
    folder = tiny_chat_checkpoint(tmp_path / "m", generation_config={"do_sample": True, "top_p": 7})
    result = cli("generate", "Hi", "--model", folder, "--backend", "numpy")
    assert result.returncode == 2     # named at load, with the file
    assert result.stderr.strip() == f"minilm: error: {folder}/generation_config.json: top_p=7 must be in (0, 1]"


# --- chat through stdin ------------------------------------------------------------------------

def test_chat_commands_are_not_messages(tiny, tmp_path):
    saved, after_reset = tmp_path / "conversation.json", tmp_path / "after-reset.json"
    lines = ["/help", "/params temperature=0.5 top_p=0.8 max_new_tokens=5 seed=0", "/params", "/frobnicate",
             "/params top_p=2", "Hello", "/system Be brief.", f"/save {saved}", "/reset", f"/save {after_reset}",
             f"/save {tmp_path / 'no' / 'such' / 'folder.json'}", "//etc is a folder"]
    result = cli("chat", "--model", tiny, "--backend", "numpy", "--max-new-tokens", 20,
                 stdin="\n".join(lines) + "\n")
    assert result.returncode == 0, result.stderr
    err = result.stderr
    assert "/save FILE" in err and "/system TEXT" in err                                   # /help
    assert "temperature=0.5, top_p=0.8, top_k=50, min_p=None, repetition_penalty=1.0, max_new_tokens=5" in err
    assert "unknown command /frobnicate; /help lists the commands" in err
    assert "minilm: error: top_p=2.0 must be in (0, 1]" in err                            # refused, chat goes on
    assert "minilm: error: [Errno 2] No such file or directory" in err
    assert err.count("tokens/s") == 2                                       # only Hello and //etc reached the model
    assert "[5 tokens;" in err                                                            # /params took effect
    conversation = json.loads(saved.read_text())
    assert [m["role"] for m in conversation["messages"]] == ["system", "user", "assistant"]
    assert conversation["messages"][0]["content"] == "Be brief."
    assert conversation["messages"][1]["content"] == "Hello"
    assert conversation["settings"]["max_new_tokens"] == 5 and conversation["settings"]["top_p"] == 0.8
    assert json.loads(after_reset.read_text())["messages"] == [{"role": "system", "content": "Be brief."}]


def test_chat_drops_the_oldest_turns_when_the_context_is_full(tmp_path):
    # max_position_embeddings=128; ChatML adds 7 tokens to a message, 13 to a reply; replies are 0-10 tokens.
    # Turn 2 needs at most 104 positions; turn 3 at least 132, and at most 104 without turn 1.
    folder = tiny_chat_checkpoint(tmp_path / "m", max_position_embeddings=128, endless=True)
    messages = [f"{n} message".ljust(18, ".") for n in ("first", "second", "third")]
    saved = tmp_path / "c.json"
    result = cli("chat", "--model", folder, "--backend", "numpy", "--max-new-tokens", 10, "--system", "S",
                 stdin="\n".join(messages + [f"/save {saved}", "x" * 200, f"/save {saved}.2"]) + "\n")
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("context full: dropped the oldest turn to fit max_position_embeddings=128 "
                               "(the system prompt stays)") == 1
    kept = json.loads(saved.read_text())["messages"]
    assert kept[0] == {"role": "system", "content": "S"}
    assert [m["content"] for m in kept if m["role"] == "user"] == messages[1:]
    # A message that cannot fit even alone is refused in one line; the conversation stays as it was.
    assert "minilm: error: the conversation has" in result.stderr and "leaves no room" in result.stderr
    assert json.loads((tmp_path / "c.json.2").read_text())["messages"] == kept
    assert result.stderr.count("tokens/s") == 3


def test_ctrl_c_stops_the_reply_and_keeps_the_conversation(endless, tmp_path):
    saved = tmp_path / "c.json"
    live = Live("--model", endless, "--backend", "numpy", "--max-new-tokens", 3000)
    live.wait_for(lambda: live.out.startswith(b"> "), "prompt")
    live.send("Hi there!")
    live.wait_for(lambda: len(live.out) > 40, "reply")                   # a reply is streaming
    live.proc.send_signal(signal.SIGINT)
    live.wait_for(lambda: b"reply stopped" in live.err, "stop notice", timeout=60)
    live.send("/params max_new_tokens=4")
    live.send("And now?")
    live.send(f"/save {saved}")
    assert live.close() == 0, live.err.decode()
    messages = json.loads(saved.read_text())["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert 0 < len(messages[1]["content"]) < 3000                          # the partial reply, kept
    assert messages[1]["content"] in live.out.decode()
    assert live.err.count(b"tokens/s") == 2 and b"[stopped after " in live.err


def test_ctrl_c_twice_at_the_prompt_exits(tiny):
    live = Live("--model", tiny, "--backend", "numpy")
    live.wait_for(lambda: live.out.startswith(b"> "), "prompt")
    live.proc.send_signal(signal.SIGINT)
    live.wait_for(lambda: b"Ctrl-C again" in live.err, "exit hint")
    assert live.proc.poll() is None                                      # one Ctrl-C does not leave
    live.proc.send_signal(signal.SIGINT)
    assert live.proc.wait(60) == 0
    assert b"Traceback" not in live.err


# --- the command line itself ------------------------------------------------------------------

def test_every_option_has_help_and_shows_its_default():
    parser = build_parser()
    commands = next(a for a in parser._actions if a.choices and "generate" in a.choices).choices
    for name, sub in commands.items():
        if name == "bench":
            continue                                   # bench's options are minilm/bench.py's (the lead's)
        formatter = sub._get_formatter()
        for action in sub._actions:
            if not action.option_strings or action.dest == "help":
                continue
            option = f"minilm {name} {action.option_strings[0]}"
            assert action.help, f"{option} has no help text"
            shown = formatter._get_help_string(action)
            if not isinstance(action.default, bool) and action.default is not None:
                assert "(default: %(default)s)" in shown or "default" in action.help, option
            if name in ("generate", "chat") and not isinstance(action.default, bool):
                assert "default" in shown, f"{option} does not say what happens when it is not given"


def test_abbreviated_options_are_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "hi", "--max-new-token", "3"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --max-new-token" in capsys.readouterr().err


@pytest.mark.parametrize("hidden,args,hint", [
    ("transformers", ["parity"], 'minilm parity needs the [parity] extra: pip install -e ".[parity]"'),
    ("torch", ["parity"], 'minilm parity needs the [parity] extra: pip install -e ".[parity]"'),
    ("matplotlib", ["masks", "--png", "x.png"], 'minilm masks --png needs the [notebooks] extra: '
                                                  'pip install -e ".[notebooks]"'),
    ("matplotlib", ["attention", "Hi", "--layer", "0", "--png", "x.png"],
     'minilm attention --png needs the [notebooks] extra: pip install -e ".[notebooks]"'),
    ("cupy", ["generate", "hi", "--backend", "cuda-emulated"],
     'minilm generate --backend cuda-emulated needs the [cuda] extra: pip install -e ".[cuda]"'),
    ("cupy", ["chat", "--backend", "cuda"], 'minilm chat --backend cuda needs the [cuda] extra: '
                                            'pip install -e ".[cuda]"'),
])
def test_missing_extra_is_one_line(monkeypatch, capsys, tiny, hidden, args, hint):
    monkeypatch.setitem(sys.modules, hidden, None)        # as if not installed: find_spec and import both fail
    assert main(args + ["--model", tiny]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"minilm: error: {hint}"]


def test_missing_extra_in_the_python_api(monkeypatch, tiny):
    monkeypatch.setitem(sys.modules, "cupy", None)
    with pytest.raises(MissingExtraError, match=r"backend='cuda-emulated' needs the \[cuda\] extra"):
        minilm.load(tiny, backend="cuda-emulated", progress=False)
    require_extra("numpy", "test", "anything")                              # installed: no error
    assert issubclass(MissingExtraError, ImportError)
