"""What the sections of the GPU check share: the result rows, the time budget, small models and their inputs."""
from __future__ import annotations

import time
import traceback
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional

import torch
from transformers import Qwen3Config

from rosa_lightning.modeling import RosaConfig, build_rosa_model, rosa_layers

TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
            head_dim=16, vocab_size=256)
QWEN3_0P6B = dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                  num_key_value_heads=8, head_dim=128, vocab_size=151936)


@dataclass
class Row:
    """One line of the printed table. ``result``: pass / FAIL / measured / skipped / error."""

    section: str
    check: str
    setting: str
    result: str
    value: str = ""
    note: str = ""
    data: dict = field(default_factory=dict)  # extra numbers for the JSON file only

    def cells(self) -> list[str]:
        return [self.section, self.check, self.setting, self.result, self.value, self.note]

    def to_json(self) -> dict:
        return asdict(self)


class Budget:
    """Wall-clock guard: ``allows(estimate_s)`` is False once starting a step of that length would pass the end."""

    def __init__(self, total_s: float) -> None:
        self.total_s = float(total_s)
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.total_s - self.elapsed()

    def allows(self, estimate_s: float = 0.0) -> bool:
        return self.left() > estimate_s


def guarded(rows: list[Row], section: str, check: str, setting: str, fn: Callable[[], None]) -> None:
    """Run ``fn`` (which appends its own rows); an exception becomes one ``error`` row instead of ending the check."""
    try:
        fn()
    except Exception as exc:  # recorded in the table: one failing part must not hide the others
        last = traceback.extract_tb(exc.__traceback__)[-1]
        rows.append(Row(section, check, setting, "error", f"{type(exc).__name__}: {str(exc)[:300]}",
                        f"at {last.filename.rsplit('/', 1)[-1]}:{last.lineno}"))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def qwen3_config(shape: dict, max_positions: int, tie: bool = False) -> Qwen3Config:
    """A Qwen3 config of ``shape``; ``tie``: the lm_head shares the embedding table (as Qwen3-0.6B does)."""
    return Qwen3Config(**shape, max_position_embeddings=max_positions, tie_word_embeddings=tie,
                       eos_token_id=0, pad_token_id=0)


def small_rosa_model(shape: dict, rosa: RosaConfig, seed: int, *, dtype: Optional[torch.dtype] = None,
                     attn: str = "sdpa", max_positions: int = 4096):
    """A random-weight ROSA model on the CPU with non-zero e0/e1 (so the branches inject something)."""
    torch.manual_seed(seed)
    model = build_rosa_model(qwen3_config(shape, max_positions), rosa, torch_dtype=dtype, attn_implementation=attn)
    randomize_branches(model, seed + 1)
    return model.train()


def randomize_branches(model, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in rosa_layers(model):
            for p in (layer.rosa.e0, layer.rosa.e1):
                p.copy_(torch.randn(p.shape, generator=g).to(p.dtype))


def enable_checkpointing(model) -> str:
    """Non-reentrant activation checkpointing of every decoder layer, by the name this transformers version has."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable()
        return "activation_checkpointing_enable"
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return "gradient_checkpointing_enable"


def max_rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max(max |b|, tiny), in fp32 on the CPU."""
    a, b = a.detach().float().cpu(), b.detach().float().cpu()
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-12)) if b.numel() else 0.0


def fmt_s(x: Any) -> str:
    return f"{x:.3f}" if isinstance(x, float) else str(x)
