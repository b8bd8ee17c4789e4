"""A GPT-2- or Llama-architecture language model with fixed seeded weights and a byte-level BPE tokenizer trained on
a few sentences, saved as a Hugging Face folder (with a ChatML chat template in tokenizer_config.json): a real
decoder to export, test and benchmark without any download."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

from forwardpass.formats.base import require
from forwardpass.formats.huggingface import SENTENCES
from forwardpass.formats.torch import import_torch

__all__ = ["CHAT_TEMPLATE", "EOS", "build_seeded_decoder", "build_seeded_gpt2", "build_seeded_llama"]

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
    return build_seeded_decoder(
        folder, "GPT2LMHeadModel", seed=seed, n_positions=context, n_embd=width, n_layer=layers, n_head=heads
    )


def build_seeded_llama(folder: Path, *, layers: int = 2, width: int = 64, context: int = 512, seed: int = 0) -> Path:
    """As build_seeded_gpt2, a Llama-architecture model (rotary embedding, grouped-query attention: 4 query heads
    share 2 key/value heads, tied embeddings): what ONNX Runtime GenAI's model builder exports."""
    return build_seeded_decoder(
        folder,
        "LlamaForCausalLM",
        seed=seed,
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=context,
        tie_word_embeddings=True,
    )


def build_seeded_decoder(folder: Path, architecture: str, *, seed: int = 0, **settings: object) -> Path:
    """As build_seeded_gpt2, a model of any transformers causal-LM class (`architecture`, e.g. "MistralForCausalLM")
    whose config takes `settings` (its sizes, sliding window, rope scaling...) over the tokenizer's vocabulary, token
    0 as its begin and end token and peaked logits."""
    transformers = _transformers()
    model_class = getattr(transformers, architecture)
    vocab = _save_tokenizer(folder)
    # initializer_range 0.2: peaked logits, so greedy choices are clear-cut, not decided by rounding
    defaults = {"vocab_size": vocab, "initializer_range": 0.2, "bos_token_id": 0, "eos_token_id": 0}
    return _save_model(model_class, model_class.config_class(**{**defaults, **settings}), folder, seed)


def _save_tokenizer(folder: Path) -> int:
    """The byte-level BPE tokenizer and tokenizer_config.json (with the chat template) in `folder`; its vocabulary
    size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

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
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    settings = {"chat_template": CHAT_TEMPLATE, "bos_token": EOS, "eos_token": EOS, "unk_token": EOS}
    (folder / "tokenizer_config.json").write_text(json.dumps(settings, indent=2), encoding="utf-8")
    return int(tokenizer.get_vocab_size())


def _transformers() -> ModuleType:
    import_torch("huggingface")  # first: transformers imports torchvision, which needs torch set up
    transformers = require("transformers", "huggingface")
    transformers.utils.logging.set_verbosity_error()
    return transformers


def _save_model(model_class: type, config: object, folder: Path, seed: int) -> Path:
    import_torch("huggingface").manual_seed(seed)
    model_class(config).eval().save_pretrained(folder)
    return folder
