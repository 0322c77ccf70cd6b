"""Tiny saved models for the evaluation tests: a 'pretrained' Qwen3 directory with a byte-level BPE
tokenizer trained on the LongBench fixture texts, and a merged ROSA model built on it."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

from rosa_lightning.data.stdlib_corpus import EOT, train_tokenizer
from rosa_lightning.modeling import RosaConfig, build_rosa_model, rosa_layers

ROOT = Path(__file__).resolve().parents[2]
FIXTURE_DIR = ROOT / "rosa_lightning" / "evaluation" / "fixtures" / "longbench"
VOCAB = 400


def fixture_texts() -> list[str]:
    texts = []
    for path in sorted(FIXTURE_DIR.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            r = json.loads(line)
            texts += [r["context"], r["input"], *r["answers"]]
    return texts + ["The grass is green. The sky is blue. One of the special magic numbers for x is: 1234567."]


def tokenizer() -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_object=train_tokenizer(fixture_texts(), VOCAB), eos_token=EOT,
                                   pad_token=EOT)


def save_backbone(path: Path, seed: int = 0) -> Path:
    """A 2-layer Qwen3 (hidden 64) with O(1) logits, its tokenizer, saved with save_pretrained."""
    torch.manual_seed(seed)
    config = Qwen3Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=16, intermediate_size=128, vocab_size=VOCAB, max_position_embeddings=8192,
                         eos_token_id=0, pad_token_id=0)
    model = Qwen3ForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0, 0.1)
    model.save_pretrained(path)
    tokenizer().save_pretrained(path)
    return path


def save_merged(backbone: Path, path: Path, window: int = 64, seed: int = 1) -> Path:
    """A merged ROSA model (window ``window``, ROSA on layer 1, branches that inject something) + tokenizer."""
    model = build_rosa_model(str(backbone), RosaConfig(window=window, global_layers=1, runtime=dict(num_threads=1)))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in rosa_layers(model):
            layer.rosa.e0.copy_(torch.randn(layer.rosa.e0.shape, generator=g))
            layer.rosa.e1.copy_(torch.randn(layer.rosa.e1.shape, generator=g))
    model.save_pretrained(path)
    tokenizer().save_pretrained(path)
    return path
