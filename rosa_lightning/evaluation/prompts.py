"""LongBench prompts as the official ``pred.py`` builds them: template, middle truncation, chat rule.

For one record: ``prompt = template.format(**record)``; when the tokenized prompt is longer than
``max_length`` tokens (strictly), keep its first and last ``int(max_length / 2)`` tokens, decode each
half with ``skip_special_tokens=True``, join the two strings and tokenize the result again (so the
final length can differ from ``max_length`` by a few tokens, exactly as in the official code). A chat
template is applied after truncation, and never for the datasets in ``CHAT_TEMPLATE_EXCLUDED``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rosa_lightning.evaluation import longbench


@dataclass
class Prompt:
    """A model input: ``input_ids`` (list of int, the exact tokens the model reads), whether the prompt was
    truncated, and its token count before truncation."""

    input_ids: list[int]
    truncated: bool
    full_tokens: int


def tokenize(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` as the official code gets them: ``tokenizer(text, truncation=False)``, i.e.
    with the tokenizer's own special tokens (a BOS for tokenizers that add one; none for Qwen)."""
    return list(tokenizer(text, truncation=False)["input_ids"])


def instruction_tokens(tokenizer: Any, dataset: str) -> int:
    """Tokens of the dataset's template with an empty context and input (the instructions alone)."""
    return len(tokenize(tokenizer, longbench.prompt_template(dataset).format(context="", input="")))


def check_max_length(tokenizer: Any, dataset: str, max_length: int) -> None:
    """Refuse a ``max_length`` that the middle truncation would fill with the instructions alone."""
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"longbench.max_length must be an int >= 2, got {max_length!r}")
    need = instruction_tokens(tokenizer, dataset)
    if max_length <= need:
        raise ValueError(f"longbench.max_length={max_length} is not above the {need} tokens of {dataset!r}'s "
                         f"instructions alone; truncation would cut into them (use a larger max_length)")


def build_prompt(tokenizer: Any, dataset: str, record: dict, max_length: int, chat_template: bool) -> Prompt:
    """The official LongBench model input of ``record`` (see the module docstring)."""
    prompt = longbench.prompt_template(dataset).format(**record)
    ids = tokenize(tokenizer, prompt)
    truncated = len(ids) > max_length
    if truncated:
        half = int(max_length / 2)
        prompt = (tokenizer.decode(ids[:half], skip_special_tokens=True)
                  + tokenizer.decode(ids[-half:], skip_special_tokens=True))
    if chat_template and longbench.base_dataset(dataset) not in longbench.CHAT_TEMPLATE_EXCLUDED:
        prompt = apply_chat_template(tokenizer, prompt)
    return Prompt(tokenize(tokenizer, prompt) if truncated or chat_template else ids, truncated, len(ids))


def apply_chat_template(tokenizer: Any, prompt: str) -> str:
    """``prompt`` as one user turn of the tokenizer's chat template, with the assistant turn opened."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("longbench.chat_template=true, but the tokenizer has no chat template (a base model "
                         "takes the raw prompt: set longbench.chat_template=false)")
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)
