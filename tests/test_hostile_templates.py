"""Chat templates and tokenizers under attack (issue 14, class 5 and the tokenizer weak items).

The sandbox already blocked escapes; now rendering also has a budget (range and repetition caps,
format widths, string and output sizes, a wall-clock limit), and every failure is one
ChatTemplateError naming the template. The bombs run in a child process with a 2 GiB address
space, so a regression dies of MemoryError instead of taking the machine's memory.
"""
import json
import os
import threading
import time

import jinja2
import pytest

import minilm.tokenizer as tokenizer_module
from minilm.tokenizer import ChatTemplateError, Tokenizer, TokenizerError, render_chat_template
from hostile_helpers import (assert_cli_error, assert_one_line_error, byte_level_tokenizer, run_cli, run_python,  # noqa: F401
                             time_limit, write_json)

MESSAGES = [{"role": "user", "content": "hi"}]

# name -> (template, fragment of the error). Each would hang or build a gigabyte without the budget.
BOMBS = {
    "nested range(100000)": ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
                             "range() of 100000"),                                          # the example
    "'a' * 10**9": ("{{ 'a' * 10**9 }}", "a result of length 1000000000"),                 # the example
    "'%999999999s'": ("{{ '%999999999s' % 'a' }}", "width or precision of 999999999"),     # the example
    "format filter": ("{{ '%999999999s'|format('a') }}", "width or precision"),
    "'%*s'": ("{{ '%*s' % (10**9, 'a') }}", "'*' widths"),
    "str.format width": ("{{ '{:999999999}'.format('a') }}", "width or precision"),
    "str.format precision": ("{{ '{:.999999999f}'.format(1.5) }}", "width or precision"),
    "nested format spec": ("{{ '{:{}}'.format('a', 10**9) }}", "nested format"),
    "[x] * 10**9": ("{{ ([1] * 10**9)|length }}", "a result of length"),
    "center filter": ("{{ 'a'|center(10**9) }}", "a result of length"),
    "ljust method": ("{{ 'a'.ljust(10**9) }}", "a result of length"),
    "zfill method": ("{{ '1'.zfill(10**9) }}", "a result of length"),
    "expandtabs": ("{{ ('\\t' * 100000).expandtabs(100000) }}", "a result of length"),
    "replace blowup": ("{{ ('a' * 100000)|replace('', 'b' * 1000) }}", "a result of length"),
    "join blowup": ("{{ ('a' * 100000).join(['x'] * 10000) }}", "a result of length"),
    "indent": ("{{ ('a\\n' * 100000)|indent(4000) }}", "a result of length"),
    "batch fill": ("{{ [1]|batch(10**9, 0)|list|length }}", "batch size"),
    "10 ** 10 ** 9": ("{{ 10 ** (10 ** 9) }}", "an integer of bit length"),
    "squaring": ("{% set ns = namespace(x=3) %}{% for i in range(40) %}{% set ns.x = ns.x * ns.x %}{% endfor %}",
                 "an integer of bit length"),
    "namespace doubling": ("{% set ns = namespace(s='ab') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}"
                           "{% endfor %}", "a str of length"),
    "macro doubling": ("{% macro d(s, n) %}{% if n %}{{ d(s ~ s, n - 1) }}{% endif %}{% endmacro %}{{ d('a', 60) }}",
                       "a str of length"),
    "output cap": ("{% for i in range(10000) %}{{ messages[0].content * 5000 }}{% endfor %}", "the output"),
    "tojson indent": ("{{ messages|tojson(indent=10**9) }}", "width or precision"),
    "lipsum": ("{{ lipsum(10**9) }}", "'lipsum' is undefined"),
    "recursion": ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "RecursionError"),
}


@pytest.mark.time_limit(150)
def test_template_bombs_are_refused_in_bounded_time_and_memory():
    code = f"""
        import json, time
        from minilm.tokenizer import ChatTemplateError, render_chat_template
        results = {{}}
        for name, (template, _) in {BOMBS!r}.items():
            start = time.perf_counter()
            try:
                render_chat_template(template, [{{"role": "user", "content": "hi"}}], template_name="bomb.jinja")
                outcome = "rendered"
            except ChatTemplateError as e:
                outcome = str(e)
            results[name] = [outcome, time.perf_counter() - start]
        print(json.dumps(results))
    """
    result = run_python(code, memory_gb=2.0, timeout=140)
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads(result.stdout.strip().splitlines()[-1])
    for name, (template, fragment) in BOMBS.items():
        message, seconds = results[name]
        assert message.startswith("bomb.jinja"), (name, message)
        assert_one_line_error(message, fragment)
        assert seconds < 5, (name, seconds)


@pytest.mark.time_limit(30)
@pytest.mark.parametrize("template", [
    "{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}",   # within the range cap
    "{% set s = 'a' * 100000 %}{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}",  # no call at all
])
def test_render_time_limit(monkeypatch, template):
    monkeypatch.setattr(tokenizer_module, "TEMPLATE_TIME_LIMIT_S", 0.5)
    start = time.perf_counter()
    with pytest.raises(ChatTemplateError) as info:
        render_chat_template(template, MESSAGES, template_name="slow.jinja")
    assert time.perf_counter() - start < 5
    assert_one_line_error(str(info.value), "slow.jinja", "longer than the chat-template limit of 0.5 s")


@pytest.mark.time_limit(30)
def test_render_time_limit_in_another_thread(monkeypatch):
    """The watchdog is not SIGALRM: it interrupts a render in a worker thread too."""
    monkeypatch.setattr(tokenizer_module, "TEMPLATE_TIME_LIMIT_S", 0.5)
    outcome = []

    def worker():
        try:
            render_chat_template(BOMBS["nested range(100000)"][0].replace("100000", "9999"), MESSAGES)
        except ChatTemplateError as e:
            outcome.append(str(e))
    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(10)
    assert not thread.is_alive() and outcome and "longer than" in outcome[0]


def test_watchdog_never_fires_after_a_render(monkeypatch):
    """A fast render disarms its timer: nothing is raised later in the same thread."""
    monkeypatch.setattr(tokenizer_module, "TEMPLATE_TIME_LIMIT_S", 0.2)
    for _ in range(20):
        assert render_chat_template("{{ messages[0].content }}", MESSAGES) == "hi"
    deadline = time.perf_counter() + 0.6
    while time.perf_counter() < deadline:      # pure-Python work past every timer's deadline
        sum(range(1000))


def test_normal_templates_render_unchanged():
    """Negative control: features real templates use are within the budget."""
    template = ("{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}"
                "{{ '%-6s|' % m.role }}{{ '{:>4}'.format(loop.index) }}{{ m.content|tojson(indent=2) }}"
                "{{ '=' * 10 }}{{ m.content|center(8) }}{% endfor %}{{ range(3)|list }}{{ ns.n }}")
    expected = "user  |   1\"hi\"==========   hi   [0, 1, 2]1"
    assert render_chat_template(template, MESSAGES) == expected


@pytest.mark.parametrize("template,fragment", [
    ("{{ raise_exception('Conversation roles must alternate') }}", "refused the conversation: Conversation roles"),
    ("{% for %}", "syntax error on line 1"),
    ("{{ 1 + 'a' }}", "TypeError"),
    ("{{ ''.__class__.__mro__ }}", "SecurityError"),                  # escapes stay blocked
    ("{% set ns = namespace() %}{% set ns._x = 1 %}", "underscore"),
    ("{{ foo.bar }}", "UndefinedError"),
])
def test_template_errors_name_the_template_file(tmp_path, template, fragment):
    folder = byte_level_tokenizer(tmp_path / "tok")
    (tmp_path / "tok" / "chat_template.jinja").write_text(template)
    tok = Tokenizer.from_pretrained(folder)
    with pytest.raises(ChatTemplateError) as info:
        tok.apply_chat_template(MESSAGES)
    assert_one_line_error(str(info.value), os.path.join(folder, "chat_template.jinja"), fragment)
    assert isinstance(info.value, jinja2.exceptions.TemplateError) and isinstance(info.value, ValueError)


def test_named_templates_are_named(tmp_path):
    folder = byte_level_tokenizer(tmp_path / "tok", chat_template=None)
    write_json(os.path.join(folder, "tokenizer_config.json"),
               {"chat_template": [{"name": "default", "template": "{{ raise_exception('no') }}"}]})
    with pytest.raises(ChatTemplateError) as info:
        Tokenizer.from_pretrained(folder).apply_chat_template(MESSAGES)
    assert_one_line_error(str(info.value), "tokenizer_config.json (chat template 'default')")


@pytest.mark.time_limit(200)
def test_cli_template_error_is_one_line(tmp_path):
    from minilm.testing import tiny_checkpoint
    folder = tiny_checkpoint("llama", str(tmp_path / "m"))
    byte_level_tokenizer(folder, chat_template="{{ raise_exception('only one message allowed') }}")
    result = run_cli("generate", "hello", "--model", folder, "--backend", "numpy")
    assert_cli_error(result, "tokenizer_config.json", "only one message allowed")


# ---------------------------------------------------------------------- tokenizers' Rust panics


def backtracking_tokenizer(folder):
    from tokenizers import Regex, pre_tokenizers
    return byte_level_tokenizer(folder, pre_tokenizer=pre_tokenizers.Split(Regex("(a+)+b"), behavior="isolated"))


@pytest.mark.time_limit(60)
def test_rust_panic_becomes_a_tokenizer_error(tmp_path):
    """A pre-tokenizer regex that backtracks without end makes Oniguruma give up and `tokenizers`
    panic: pyo3_runtime.PanicException, which `except Exception` does not catch."""
    folder = backtracking_tokenizer(tmp_path / "tok")
    tok = Tokenizer.from_pretrained(folder)
    assert tok.encode("aab") != []                    # negative control: short inputs work
    with pytest.raises(TokenizerError) as info:
        tok.encode("a" * 5000 + "c")
    assert_one_line_error(str(info.value), folder, "tokenizers library failed")


@pytest.mark.time_limit(200)
def test_cli_rust_panic_is_one_line(tmp_path):
    from minilm.testing import tiny_checkpoint
    folder = tiny_checkpoint("llama", str(tmp_path / "m"))
    backtracking_tokenizer(folder)
    result = run_cli("generate", "a" * 5000 + "c", "--model", folder, "--backend", "numpy",
                     env={"RUST_BACKTRACE": "0"})
    # `tokenizers` prints its own panic note first; minilm's last line is the one-line error.
    assert_cli_error(result, "tokenizers library failed")
