"""Section 4: FSDP on one device. A single-process process group (nccl on CUDA, gloo on the CPU), a small ROSA model
wrapped by torch FSDP (``use_orig_params=True``, one unit per decoder layer), one forward and backward: the loss and
every gradient must equal those of the unwrapped model; the same with stage-A freezing (only ROSA parameters train);
then both again with FSDP2 (``fully_shard`` as ``trainer=fsdp2`` applies it), which also runs on the CPU.
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
from rosa_lightning.modeling.sharding import full_tensor, shard_model
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
        for check, compare in (("FSDP vs unwrapped", _compare), ("FSDP2 vs unwrapped", _compare_fsdp2)):
            for stage in ("all parameters", "stage A (ROSA only)"):
                guarded(rows, SECTION, check, stage,
                        lambda: rows.append(compare(device, length, threads, stage)))
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


def _reference(device: torch.device, length: int, threads: int, stage: str):
    """The small ROSA model (stage-A frozen when asked), its input and the unwrapped model's loss and gradients."""
    base = small_rosa_model(TINY, RosaConfig(bits=4, window=16, global_layers=1), seed=11)
    if stage.startswith("stage A"):
        freeze_backbone(base)
    ids = torch.randint(1, TINY["vocab_size"], (2, length), generator=torch.Generator().manual_seed(12)).to(device)
    plain = copy.deepcopy(base).to(device)
    ref_loss = _loss(plain, ids, threads)
    ref = {n: p.grad.detach().cpu() for n, p in plain.named_parameters() if p.grad is not None}
    return base, ids, ref_loss, ref


def _verdict(check: str, stage: str, ref_loss, ref: dict, loss, got: dict, note: str) -> Row:
    missing = sorted(set(ref) ^ set(got))
    grad = max((max_rel_diff(got[n], ref[n]) for n in ref if n in got), default=0.0)
    loss_diff = max_rel_diff(loss, ref_loss)
    bad = [f"{k} rel {x:.1e}" for k, x in (("loss", loss_diff), ("grads", grad)) if not x <= RTOL]
    if missing:
        bad.append(f"gradients on one side only: {missing[:3]}")
    if stage.startswith("stage A") and any(".rosa." not in n for n in got):
        bad.append("a frozen backbone parameter got a gradient")
    return Row(SECTION, check, stage, "FAIL" if bad else "pass",
               f"max rel diff: loss {loss_diff:.1e}, grads {grad:.1e}", "; ".join(bad) or note)


def _compare(device: torch.device, length: int, threads: int, stage: str) -> Row:
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    base, ids, ref_loss, ref = _reference(device, length, threads, stage)
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
    return _verdict("FSDP vs unwrapped", stage, ref_loss, ref, loss, got,
                    f"{len(ref)} gradients, {units} FSDP units, use_orig_params, tol {RTOL:g}")


def _compare_fsdp2(device: torch.device, length: int, threads: int, stage: str) -> Row:
    """The same with FSDP2 (``fully_shard``) as ``trainer=fsdp2`` applies it (``modeling/sharding.py``)."""
    from torch.distributed.device_mesh import init_device_mesh

    base, ids, ref_loss, ref = _reference(device, length, threads, stage)
    sharded = shard_model(copy.deepcopy(base).to(device), init_device_mesh(device.type, (1,)))
    loss = _loss(sharded, ids, threads)
    got = {n: full_tensor(p.grad).detach().cpu() for n, p in sharded.named_parameters() if p.grad is not None}
    return _verdict("FSDP2 vs unwrapped", stage, ref_loss, ref, loss, got,
                    f"{len(ref)} gradients, fully_shard per decoder layer + root, tol {RTOL:g}")


def _plain_name(name: str) -> str:
    return ".".join(part for part in name.split(".") if part not in ("_fsdp_wrapped_module", "_checkpoint_wrapped_module"))
