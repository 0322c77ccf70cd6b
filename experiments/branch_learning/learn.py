"""Training and diagnostics of the branch-learning study (imported by ``run.py`` and ``loop_overhead.py``).

A plain AdamW loop rather than ``train(cfg)``: the study-local ablations and per-step measurements below are not
library options, and the two paths show no consistent per-step difference (README.md, "Why the arms train in
their own loop").

One *arm* is a tiny Qwen3 (every layer windowed, ROSA on every layer, token channel off) with a set of
``RosaConfig`` options, trained from scratch on MQAR answers with AdamW. Measured along training:

- answer accuracy (argmax of the scored answers) on the training batch;
- per ROSA layer, the *right-slot rate*: over the query keys of the batch and every route, the fraction whose
  retrieval destination tau reads its V bits from the position of that key's value in the pair section (the V
  input position is tau, or tau - 1 under ``kv_shift``);
- at the end, answer accuracy on held-out sequences of the training length and of 4x the length.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch
from transformers import Qwen3Config

from rosa_lightning.data.synthetic import MQAR, SyntheticDataset, answer_accuracy
from rosa_lightning.modeling import RosaConfig, build_rosa_model, rosa_layers
from rosa_lightning.modeling.teacher import HashTeacher
from rosa_lightning.modeling.symbols import pack_symbols
from rosa_lightning.retrieval import rosa_match


@dataclass
class Arm:
    """One configuration of the study: ROSA options plus model size and optimiser settings."""

    name: str
    rosa: dict = field(default_factory=dict)  # RosaConfig overrides
    hidden: int = 64
    layers: int = 2
    lr: float = 3e-3
    qk_lr_scale: float = 1.0  # learning-rate multiplier of the Q and K projections (0 = frozen)
    k_copy_q: bool = False  # untied K projection initialised as a copy of Q's (the prototype's variant)
    seed_offset: int = 0  # added to the run's seed (init and data): repeats of an arm
    curriculum_steps: int = 0  # filler-length curriculum: T grows linearly from curriculum_start to the task's T
    curriculum_start: int = 64
    distill_steps: int = 0  # fixed-hash warm start: steps on the HashTeacher loss alone (modeling/teacher.py)
    distill_weight: float = 0.0  # the same teacher loss added to the training loss with this weight


def make_task(seq_len: int = 256, num_pairs: int = 8) -> MQAR:
    return MQAR(seq_len=seq_len, num_pairs=num_pairs, num_keys=64, num_values=64, num_filler=64, filler="random")


def build(arm: Arm, vocab_size: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    heads = max(2, arm.hidden // 16)
    backbone = Qwen3Config(hidden_size=arm.hidden, num_hidden_layers=arm.layers, num_attention_heads=heads,
                           num_key_value_heads=heads // 2 if heads % 2 == 0 else heads, head_dim=16,
                           intermediate_size=2 * arm.hidden, vocab_size=vocab_size, max_position_embeddings=4096)
    opts = dict(bits=4, window=32, global_layers=0, num_threads=1, token_channel="off")
    opts.update(arm.rosa)
    model = build_rosa_model(backbone, RosaConfig.from_dict(opts))  # the arms' options are flat keys
    if arm.k_copy_q:
        with torch.no_grad():
            for layer in rosa_layers(model):
                layer.rosa.k_proj.weight.copy_(layer.rosa.q_proj.weight)
    return model


def batches(task: MQAR, batch_size: int, seed: int, arm: Optional[Arm] = None):
    """Training batches; under a curriculum (``arm.curriculum_steps``) step s uses the filler length of
    T(s) = start + (T - start) * s / curriculum_steps (rounded to 8), then the task's T."""
    data = SyntheticDataset(task, 10 ** 9, seed=seed)
    i = step = 0
    while True:
        step += 1
        if arm is not None and arm.curriculum_steps and step <= arm.curriculum_steps:
            frac = step / arm.curriculum_steps
            t = int(round((arm.curriculum_start + (task.seq_len - arm.curriculum_start) * frac) / 8) * 8)
            d = SyntheticDataset(dataclasses.replace(task, seq_len=min(task.seq_len, t)), 10 ** 9, seed=seed)
            yield torch.utils.data.default_collate([d[i + j] for j in range(batch_size)])
        else:
            yield torch.utils.data.default_collate([data[i + j] for j in range(batch_size)])
        i += batch_size


def _query_slots(task: MQAR, ids: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(b, t_query_key, t_value_in_pairs) for every query of the batch."""
    n, nq, T = task.num_pairs, task.queries, ids.shape[1]
    q0 = T - 2 * nq
    out = []
    for b in range(ids.shape[0]):
        pair_keys = ids[b, 1:1 + 2 * n:2].tolist()
        for j in range(nq):
            tq = q0 + 2 * j
            i = pair_keys.index(int(ids[b, tq]))
            out.append((b, tq, 2 + 2 * i))
    a = np.array(out)
    return a[:, 0], a[:, 1], a[:, 2]


@torch.no_grad()
def right_slot_rates(model, task: MQAR, ids: torch.Tensor) -> list[float]:
    """Per ROSA layer: fraction of (query key, route) whose retrieval reads V from the key's value position."""
    layers = rosa_layers(model)
    z: dict = {}
    hooks = []
    for li, layer in enumerate(layers):
        for name in ("q", "k"):
            def hook(_m, _i, out, li=li, name=name):
                z[(li, name)] = out.detach()
            hooks.append(getattr(layer.rosa, f"{name}_proj").register_forward_hook(hook))
    try:
        model(input_ids=ids)
    finally:
        for h in hooks:
            h.remove()
    b, tq, tv = _query_slots(task, ids)
    rates = []
    for li, layer in enumerate(layers):
        bits = layer.rosa.bits
        shift = int(layer.rosa.input_options.kv_shift)
        q = pack_symbols(z[(li, "q")], bits)
        k = pack_symbols(z[(li, "k")], bits)
        tau = rosa_match(q.cpu(), k.cpu(), bits, num_threads=1, want_cf=False).tau.numpy()  # [B, R, T]
        got = tau[b, :, tq]  # [n_queries, R]
        rates.append(float(np.mean(got - shift == tv[:, None])))
    return rates


@torch.no_grad()
def evaluate(model, task: MQAR, num: int = 64, seed: int = 10_000, batch_size: int = 16) -> float:
    model.eval()
    data = SyntheticDataset(task, num, seed=seed)
    hits = total = 0.0
    for s in range(0, num, batch_size):
        batch = torch.utils.data.default_collate([data[i] for i in range(s, min(num, s + batch_size))])
        logits = model(input_ids=batch["input_ids"]).logits
        mask = batch["answer_mask"]
        hits += float(answer_accuracy(logits, batch["input_ids"], mask)) * mask[:, 1:].sum().item()
        total += mask[:, 1:].sum().item()
    model.train()
    return hits / total


def param_groups(model, arm: Arm) -> list[dict]:
    qk, rest = [], []
    for name, p in model.named_parameters():
        (qk if (".rosa.q_proj." in name or ".rosa.k_proj." in name) else rest).append(p)
    groups = [{"params": rest, "lr": arm.lr}]
    if arm.qk_lr_scale > 0:
        groups.append({"params": qk, "lr": arm.lr * arm.qk_lr_scale})
    else:
        for p in qk:
            p.requires_grad_(False)
    return groups


def distill_hash(model, teacher: HashTeacher, arm: Arm, task: MQAR, batch_size: int, seed: int) -> list[float]:
    """Warm start: ``arm.distill_steps`` AdamW steps on the teacher loss alone (every parameter reaching zq)."""
    opt = torch.optim.AdamW(model.parameters(), lr=arm.lr, weight_decay=0.0, betas=(0.9, 0.98))
    data = batches(task, batch_size, seed + 1)
    losses = []
    for _ in range(arm.distill_steps):
        ids = next(data)["input_ids"]
        model(input_ids=ids)
        loss = teacher.loss(ids)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def train_arm(arm: Arm, task: MQAR, steps: int, seed: int = 0, batch_size: int = 16, log_every: int = 25,
              time_limit_s: Optional[float] = None, eval_lengths=(1, 4), eval_num: int = 64,
              on_log: Optional[Callable[[dict], None]] = None, snapshots=()) -> dict:
    """Train one arm; returns {"arm", "curve": [...], "final": {...}, "model", "snapshots": {step: state_dict}}."""
    seed = seed + arm.seed_offset
    model = build(arm, task.vocab_size, seed)
    model.train()
    t0 = time.time()  # wall clock includes the warm start
    teacher = HashTeacher(model, seed) if (arm.distill_steps or arm.distill_weight) else None
    distill = distill_hash(model, teacher, arm, task, batch_size, seed) if arm.distill_steps else []
    if teacher is not None and not arm.distill_weight:
        teacher.close()  # warm start only: no hooks during training
    opt = torch.optim.AdamW(param_groups(model, arm), lr=arm.lr, weight_decay=0.0, betas=(0.9, 0.98))
    data = batches(task, batch_size, seed, arm)
    saved = {}
    curve = []
    acc_window = []
    for step in range(1, steps + 1):
        batch = next(data)
        out = model(input_ids=batch["input_ids"], labels=batch["labels"])
        loss = out.loss
        if arm.distill_weight:
            loss = loss + arm.distill_weight * teacher.loss(batch["input_ids"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        acc_window.append(float(answer_accuracy(out.logits.detach(), batch["input_ids"], batch["answer_mask"])))
        if step in snapshots:
            saved[step] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        stop = time_limit_s is not None and time.time() - t0 > time_limit_s
        if step % log_every == 0 or step == 1 or step == steps or stop:
            row = {"step": step, "seconds": round(time.time() - t0, 1), "loss": float(out.loss.detach()),
                   "train_acc": float(np.mean(acc_window[-log_every:])),
                   "right_slot": right_slot_rates(model, task, batch["input_ids"][:8])}
            curve.append(row)
            if on_log:
                on_log(row)
        if stop:
            break
    if teacher is not None:
        teacher.close()
    final = {"steps": step, "seconds": round(time.time() - t0, 1)}
    if distill:
        final["distill_loss"] = [distill[0], distill[-1]]
    for mult in eval_lengths:
        t = dataclasses.replace(task, seq_len=task.seq_len * mult)
        final[f"acc_x{mult}"] = evaluate(model, t, num=eval_num)
        final[f"right_slot_x{mult}"] = right_slot_rates(
            model, t, torch.utils.data.default_collate([SyntheticDataset(t, 8, seed=20_000)[i]
                                                         for i in range(8)])["input_ids"])
    return {"arm": dataclasses.asdict(arm), "curve": curve, "final": final, "model": model, "snapshots": saved}
