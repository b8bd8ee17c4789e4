"""A GPT-2-architecture language model with fixed seeded weights and a byte-level BPE tokenizer trained on a few
sentences, saved as a Hugging Face folder (with a ChatML chat template in tokenizer_config.json): a real decoder to
export, test and benchmark without any download."""

from __future__ import annotations

import json
from pathlib import Path

from forwardpass.formats.base import require
from forwardpass.formats.huggingface import SENTENCES
from forwardpass.formats.torch import import_torch

__all__ = ["CHAT_TEMPLATE", "EOS", "build_seeded_gpt2"]

EOS = "<|endoftext|>"
TURN_START, TURN_END = "<|im_start|>", "<|im_end|>"
# ChatML, written with both whitespace-controlled and plain block tags (so trim_blocks / lstrip_blocks matter), a
# namespace, a refusal through raise_exception and tojson: what real templates use.
CHAT_TEMPLATE = """{%- set ns = namespace(system='You are a helpful assistant.') -%}
{%- if messages and messages[0].role == 'system' %}
    {%- set ns.system = messages[0].content %}
    {%- set messages = messages[1:] %}
{%- endif %}
{{ bos_token }}<|im_start|>system
{{ ns.system }}<|im_end|>
{% for message in messages %}
    {% if message.role not in ['user', 'assistant'] %}
        {{ raise_exception('roles after the system message are user or assistant, not ' + message.role) }}
    {% endif %}
<|im_start|>{{ message.role }}{% if message.name is defined %} {{ message.name | tojson }}{% endif %}

{{ message.content | trim }}<|im_end|>
{% endfor %}
{% if add_generation_prompt %}
<|im_start|>assistant
{% endif %}"""


def build_seeded_gpt2(
    folder: Path, *, layers: int = 2, width: int = 64, heads: int = 4, context: int = 128, seed: int = 0
) -> Path:
    """Write config.json, model.safetensors, tokenizer.json (vocabulary ~400, token 0 = end of text, 1 and 2 the
    ChatML turn markers) and tokenizer_config.json to `folder`; the same arguments always give the same weights."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    torch = import_torch("huggingface")
    transformers = require("transformers", "huggingface")
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=[EOS, TURN_START, TURN_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(SENTENCES, trainer)
    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        vocab_size=tokenizer.get_vocab_size(),
        n_positions=context,
        n_embd=width,
        n_layer=layers,
        n_head=heads,
        initializer_range=0.2,  # peaked logits: greedy choices are clear-cut, not decided by rounding
        bos_token_id=0,
        eos_token_id=0,
    )
    model = transformers.GPT2LMHeadModel(config).eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save(str(folder / "tokenizer.json"))
    settings = {"chat_template": CHAT_TEMPLATE, "bos_token": EOS, "eos_token": EOS, "unk_token": EOS}
    (folder / "tokenizer_config.json").write_text(json.dumps(settings, indent=2), encoding="utf-8")
    return folder
