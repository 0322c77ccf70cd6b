"""Section 3: step time and peak memory of global vs window vs window + ROSA at one shape, bf16, batch 1.

One step is the training step of ``lit_module`` without Lightning: ``final_hidden_states``, the chunked next-token
loss (the [T, V] logits never exist at once), backward, AdamW. Per arm: a few warm-up steps, then the median of the
measured ones; for window + ROSA also the retrieval timing of those steps (``rosa_timing_stats``), in total and per
layer. A length that does not fit in memory, or whose first step shows the arm would not finish in its share of the
time budget, falls back to the next shorter one (said in the row's note).
"""
from __future__ import annotations

import gc
import statistics
import time
from typing import Optional

import torch

from rosa_lightning.modeling import RosaConfig, attach_pipeline, build_rosa_model, rosa_layers, rosa_timing_stats
from rosa_lightning.modeling.losses import chunked_next_token_loss
from rosa_lightning.retrieval import RetrievalPipeline

from .common import Budget, Row, qwen3_config, randomize_branches, synchronize

SECTION = "3 step time"
# global: full causal attention everywhere; window: the sliding window with layer 0 global; both without branches
ARMS = {"global": dict(window=None, rosa_layers=[], runtime={"enabled": False}),
        "window": dict(rosa_layers=[], runtime={"enabled": False}),
        "window+rosa": dict()}


class TooSlow(RuntimeError):
    """The first step shows the arm would not finish within its share of the time budget."""


def step_time(rows: list[Row], device: torch.device, shape: dict, lengths: list[int], window: int,
              attn_impls: list[str], warmup: int, steps: int, threads: int, budget: Budget,
              reserve_s: float, chunk_tokens: int = 1024) -> None:
    """Append one row per (attention implementation, arm) and one per ROSA layer; ``lengths`` longest first."""
    todo = [(attn, arm) for attn in attn_impls for arm in ARMS]
    for i, (attn, arm) in enumerate(todo):
        share = (budget.left() - reserve_s) / (len(todo) - i)
        notes: list[str] = []
        result, error = None, None
        for T in lengths:
            if share <= 0 or not budget.allows(reserve_s):
                notes.append("time budget spent")
                break
            try:
                result = _measure(device, shape, arm, T, window, attn, warmup, steps, threads, chunk_tokens, share)
                break
            except torch.cuda.OutOfMemoryError:
                notes.append(f"T={T} out of memory")
            except TooSlow as exc:
                notes.append(f"T={T} {exc}")
            except Exception as exc:  # recorded in the table; the other arms still run
                error = f"T={T} {type(exc).__name__}: {str(exc)[:300]}"
                break
            finally:
                _free(device)
            share = (budget.left() - reserve_s) / (len(todo) - i)
        if result is None:
            rows.append(Row(SECTION, arm, attn, "error" if error else "skipped", error or "", "; ".join(notes)))
            continue
        rows.extend(_rows(arm, attn, result, notes))
    _ratios(rows)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _build(device, shape, arm, T, window, attn):
    rosa = RosaConfig(**{"bits": 4, "window": window, "global_layers": 1, **ARMS[arm]})
    config = qwen3_config(shape, max(T, 4096), tie=True)
    torch.manual_seed(0)
    try:  # initialised on the device: seconds instead of a minute of CPU init at 0.6B
        with torch.device(device):
            model = build_rosa_model(config, rosa, torch_dtype=torch.bfloat16, attn_implementation=attn)
    except torch.OutOfMemoryError:
        raise
    except Exception:  # e.g. an init that cannot run under a device context: build on the CPU and move
        torch.manual_seed(0)
        model = build_rosa_model(config, rosa, torch_dtype=torch.bfloat16, attn_implementation=attn).to(device)
    randomize_branches(model, 1)
    return model.train()


def _measure(device, shape, arm, T, window, attn, warmup, steps, threads, chunk_tokens, share_s) -> dict:
    t_start = time.perf_counter()
    model = _build(device, shape, arm, T, window, attn)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    ids = torch.randint(1, shape["vocab_size"], (1, T), generator=torch.Generator().manual_seed(T)).to(device)
    times: list[float] = []
    per_layer: list[dict] = []
    totals: dict = {}
    with RetrievalPipeline(threads) as pipe:  # defer_counterfactuals auto: on for CUDA
        attach_pipeline(model, pipe)
        try:
            for i in range(warmup + steps):
                if i == warmup:
                    rosa_timing_stats(model, reset=True)
                    if device.type == "cuda":
                        torch.cuda.reset_peak_memory_stats(device)
                synchronize(device)
                t0 = time.perf_counter()
                hidden = model.final_hidden_states(ids)
                loss, _ = chunked_next_token_loss(hidden, model.lm_head, ids, chunk_tokens)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                del hidden, loss
                synchronize(device)
                dt = time.perf_counter() - t0
                if i >= warmup:
                    times.append(dt)
                elif i == 0:
                    expected = (time.perf_counter() - t_start) + dt * (warmup + steps - 1)
                    if expected > share_s:
                        raise TooSlow(f"too slow for the budget (first step {dt:.1f} s, {share_s:.0f} s left "
                                      f"for this arm)")
            n = len(times)
            per_layer = [_layer_stats(layer, n) for layer in rosa_layers(model)]
            totals = {k: (v / n if isinstance(v, float) else v) for k, v in rosa_timing_stats(model).items()}
            totals["overlap_fraction"] = _overall_overlap(per_layer)
        finally:
            attach_pipeline(model, None)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"T": T, "step_s": statistics.median(times), "steps_s": times, "peak_gib": peak, "rosa": totals,
            "per_layer": per_layer, "kernel_threads": pipe.num_threads, "deferred": pipe.defers(device),
            "params": sum(p.numel() for p in model.parameters())}


def _layer_stats(layer, steps: int) -> dict:
    t = layer.rosa.timing
    overlap = max(0.0, min(1.0, 1.0 - t.wait_s / t.retrieval_s)) if t.retrieval_s > 0 else 0.0
    return {"layer": layer.self_attn.layer_idx, "overlap_fraction": overlap, "retrieval_cpu_s": t.retrieval_s / steps,
            "wait_s": t.wait_s / steps, "backward_wait_s": t.backward_wait_s / steps, "deferred_cpu_s": t.deferred_s / steps}


def _overall_overlap(per_layer: list[dict]) -> float:
    """The overlap fraction over all layers (1 - total wait / total retrieval)."""
    retrieval = sum(d["retrieval_cpu_s"] for d in per_layer)
    wait = sum(d["wait_s"] for d in per_layer)
    return max(0.0, min(1.0, 1.0 - wait / retrieval)) if retrieval > 0 else 0.0


def _rows(arm: str, attn: str, r: dict, notes: list[str]) -> list[Row]:
    setting = f"{attn} T={r['T']} bf16 B=1"
    peak = f"{r['peak_gib']:.2f} GiB" if r["peak_gib"] is not None else "— (CPU)"
    value = f"{r['step_s']:.3f} s/step, peak {peak}"
    parts = list(notes) + [f"median of {len(r['steps_s'])}", f"{r['params'] / 1e6:.1f}M params"]
    out = []
    if arm == "window+rosa":
        s = r["rosa"]
        parts.append(f"overlap {s['overlap_fraction']:.3f}, forward wait {s['wait_s']:.3f} s, backward wait "
                     f"{s['backward_wait_s']:.3f} s, retrieval CPU {s['retrieval_cpu_s']:.3f} s, deferred CPU "
                     f"{s['deferred_cpu_s']:.3f} s per step; {r['kernel_threads']} kernel threads, deferral "
                     f"{'on' if r['deferred'] else 'off'}")
        for d in r["per_layer"]:
            out.append(Row(SECTION, f"window+rosa layer {d['layer']}", setting, "measured",
                           f"overlap {d['overlap_fraction']:.3f}, forward wait {d['wait_s']:.4f} s",
                           f"backward wait {d['backward_wait_s']:.4f} s, retrieval CPU {d['retrieval_cpu_s']:.4f} s, "
                           f"deferred CPU {d['deferred_cpu_s']:.4f} s per step", data=d))
    return [Row(SECTION, arm, setting, "measured", value, "; ".join(parts), data=r)] + out


def _ratios(rows: list[Row]) -> None:
    """Add 'x window' to each arm's value when the window arm ran at the same setting."""
    window = {r.setting: r.data["step_s"] for r in rows if r.section == SECTION and r.check == "window"
              and r.result == "measured"}
    for r in rows:
        if r.section == SECTION and r.check in ARMS and r.result == "measured" and r.setting in window:
            r.value += f", {r.data['step_s'] / window[r.setting]:.2f}x window"


def flash_attention_available() -> Optional[str]:
    """The flash_attn version when it imports, else None."""
    try:
        import flash_attn
    except Exception:  # not installed, or built for another torch/CUDA
        return None
    return getattr(flash_attn, "__version__", "unknown")
