"""docs/adding-a-family.md's worked example, executed from the page itself: the Mistral family
module registers, and its parity code (against transformers, with a negative control) passes."""
import re
import sys
import types
from pathlib import Path

import pytest

import minilm.models

DOC = Path(__file__).resolve().parents[1] / "docs" / "adding-a-family.md"


def marked_block(tag: str) -> str:
    match = re.search(rf"<!-- test: {tag} -->\n```python\n(.*?)```", DOC.read_text(), re.S)
    assert match, f"{DOC.name} has no code block marked 'test: {tag}'"
    return match.group(1)


@pytest.fixture
def mistral_registered(monkeypatch):
    """The doc's module as minilm.models.mistral, registered like the doc says."""
    module = types.ModuleType("minilm.models.mistral")
    module.__package__ = "minilm.models"
    exec(compile(marked_block("family"), f"{DOC}:family", "exec"), module.__dict__)
    monkeypatch.setitem(sys.modules, "minilm.models.mistral", module)
    monkeypatch.setitem(minilm.models.FAMILIES, "mistral", module.MistralModel)
    return module.MistralModel


def test_the_worked_example_matches_transformers(mistral_registered):
    exec(compile(marked_block("parity"), f"{DOC}:parity", "exec"), {})


def test_without_registration_the_family_is_refused():
    from minilm.config import ConfigError, parse_config
    from minilm.testing import tiny_config
    with pytest.raises(ConfigError, match="unsupported model_type='mistral'"):
        parse_config(tiny_config("llama", model_type="mistral"))
