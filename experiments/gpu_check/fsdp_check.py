"""Section 4: FSDP on one device. A single-process process group (nccl on CUDA, gloo on the CPU), a small ROSA model
wrapped by torch FSDP (``use_orig_params=True``, one unit per decoder layer), one forward and backward: the loss and
every gradient must equal those of the unwrapped model; the same with stage-A freezing (only ROSA parameters train).
"""
from __future__ import annotations

import copy
import functools
import os
import tempfile

import torch
import torch.distributed as dist
from transformers.models.qwen3.modeling_qwen3 import Qwen3DecoderLayer

from rosa_lightning.modeling import RosaConfig, RosaQwen3DecoderLayer, attach_pipeline, freeze_backbone
from rosa_lightning.retrieval import RetrievalPipeline

from .common import TINY, Row, guarded, max_rel_diff, small_rosa_model, synchronize

SECTION = "4 FSDP"
RTOL = 1e-4  # fp32; FSDP's flat parameters change no arithmetic, only where the tensors live


def fsdp_check(rows: list[Row], device: torch.device, length: int, threads: int) -> None:
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_available():
        rows.append(Row(SECTION, "process group", backend, "skipped", note="torch.distributed is not available"))
        return
    store = tempfile.NamedTemporaryFile(prefix="gpu_check_pg_", delete=False)
    store.close()
    os.unlink(store.name)  # the FileStore creates it
    started = False
    try:
        dist.init_process_group(backend, init_method=f"file://{store.name}", rank=0, world_size=1)
        started = True
        rows.append(Row(SECTION, "process group", backend, "pass", "world size 1"))
        for stage in ("all parameters", "stage A (ROSA only)"):
            guarded(rows, SECTION, "FSDP vs unwrapped", stage,
                    lambda: rows.append(_compare(device, length, threads, stage)))
    except Exception as exc:  # recorded: FSDP on one device is a feasibility check
        rows.append(Row(SECTION, "process group", backend, "error", f"{type(exc).__name__}: {str(exc)[:300]}"))
    finally:
        if started:
            dist.destroy_process_group()
        if os.path.exists(store.name):
            os.unlink(store.name)


def _loss(model, ids, threads) -> torch.Tensor:
    with RetrievalPipeline(threads) as pipe:
        inner = model.module if hasattr(model, "module") else model
        attach_pipeline(inner, pipe)
        logits = model(input_ids=ids).logits
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
        loss.backward()
        synchronize(ids.device)
        attach_pipeline(inner, None)
    return loss.detach()


def _compare(device: torch.device, length: int, threads: int, stage: str) -> Row:
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    base = small_rosa_model(TINY, RosaConfig(bits=4, window=16, global_layers=1), seed=11)
    if stage.startswith("stage A"):
        freeze_backbone(base)
    ids = torch.randint(1, TINY["vocab_size"], (2, length), generator=torch.Generator().manual_seed(12)).to(device)
    plain = copy.deepcopy(base).to(device)
    ref_loss = _loss(plain, ids, threads)
    ref = {n: p.grad.detach().cpu() for n, p in plain.named_parameters() if p.grad is not None}
    policy = functools.partial(transformer_auto_wrap_policy,
                               transformer_layer_cls={Qwen3DecoderLayer, RosaQwen3DecoderLayer})
    kwargs = dict(auto_wrap_policy=policy, use_orig_params=True)
    if device.type == "cuda":
        kwargs["device_id"] = device
    try:
        wrapped = FSDP(copy.deepcopy(base).to(device), **kwargs)
    except RuntimeError as exc:
        if device.type != "cpu":
            raise
        # torch's FSDP shards onto accelerators only; the unwrapped reference above has still run
        return Row(SECTION, "FSDP vs unwrapped", stage, "skipped", f"reference loss {float(ref_loss):.4f}",
                   f"FSDP refuses the CPU: {str(exc)[:200]}")
    loss = _loss(wrapped, ids, threads)
    with FSDP.summon_full_params(wrapped, with_grads=True):
        got = {_plain_name(n): p.grad.detach().cpu() for n, p in wrapped.named_parameters() if p.grad is not None}
    units = sum(isinstance(m, FSDP) for m in wrapped.modules())
    missing = sorted(set(ref) ^ set(got))
    grad = max((max_rel_diff(got[n], ref[n]) for n in ref if n in got), default=0.0)
    loss_diff = max_rel_diff(loss, ref_loss)
    bad = [f"{k} rel {x:.1e}" for k, x in (("loss", loss_diff), ("grads", grad)) if not x <= RTOL]
    if missing:
        bad.append(f"gradients on one side only: {missing[:3]}")
    if stage.startswith("stage A") and any(".rosa." not in n for n in got):
        bad.append("a frozen backbone parameter got a gradient")
    return Row(SECTION, "FSDP vs unwrapped", stage, "FAIL" if bad else "pass",
               f"max rel diff: loss {loss_diff:.1e}, grads {grad:.1e}",
               "; ".join(bad) or f"{len(ref)} gradients, {units} FSDP units, use_orig_params, tol {RTOL:g}")


def _plain_name(name: str) -> str:
    return ".".join(part for part in name.split(".") if part not in ("_fsdp_wrapped_module", "_checkpoint_wrapped_module"))
