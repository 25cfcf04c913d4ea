"""A tiny random llama with a real tokenizer and a ChatML template, for the CLI's chat and generate tests.

The vocabulary is printable ASCII, one token per character, plus three special tokens, so
every generated token prints at once (no held-back partial UTF-8) and a random model never
produces invisible output. Needs only tokenizers and minilm (no torch): the no-extras wheel
test runs it in a venv.
"""
from __future__ import annotations

import json
import os
import string

from minilm.testing import tiny_checkpoint

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHARACTERS = sorted(set(string.printable) - set("\x0b\x0c\r\t"))
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def write_tokenizer(folder) -> dict:
    """tokenizer.json + tokenizer_config.json; returns {special token: id}."""
    from tokenizers import Tokenizer, decoders, models
    vocab = {ch: i for i, ch in enumerate(CHARACTERS)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    tokenizer.decoder = decoders.Fuse()
    tokenizer.add_special_tokens(SPECIALS)
    tokenizer.save(os.path.join(folder, "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "chat_template": CHATML, "eos_token": "<|im_end|>",
              "pad_token": "<|endoftext|>", "bos_token": None, "clean_up_tokenization_spaces": False}
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump(config, f)
    return {token: tokenizer.token_to_id(token) for token in SPECIALS}


def tiny_chat_checkpoint(folder, max_position_embeddings: int = 128, generation_config: dict | None = None,
                         seed: int = 0, endless: bool = False) -> str:
    """A tiny llama (vocab = the characters + specials) with its tokenizer; returns the folder.

    endless: the LM head's <|im_end|> row is zeroed, so greedy replies never end by themselves
    (the other logits spread far above and below 0): a reply that only Ctrl-C or the length stops.
    """
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    ids = write_tokenizer(folder)
    tiny_checkpoint("llama", folder, seed=seed, vocab_size=len(CHARACTERS) + len(SPECIALS),
                    max_position_embeddings=max_position_embeddings, bos_token_id=ids["<|im_start|>"],
                    eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    if endless:
        from safetensors.numpy import load_file, save_file
        path = os.path.join(folder, "model.safetensors")
        tensors = load_file(path)
        tensors["lm_head.weight"][ids["<|im_end|>"]] = 0.0
        save_file(tensors, path)
    if generation_config is not None:
        with open(os.path.join(folder, "generation_config.json"), "w") as f:
            json.dump(generation_config, f)
    return folder
