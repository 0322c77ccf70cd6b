"""Sections 1 and 2: the retrieval pipeline on the device against ``rosa_match`` on the CPU, a small ROSA model on
the device against the same model on the CPU (fp32), and a bf16 forward and backward."""
from __future__ import annotations

import copy

import torch

from rosa_lightning.modeling import RosaConfig, attach_pipeline, rosa_layers
from rosa_lightning.modeling.losses import chunked_next_token_loss
from rosa_lightning.retrieval import RetrievalPipeline, rosa_match
from rosa_lightning.retrieval.indices import values_at

from .common import TINY, Budget, Row, enable_checkpointing, guarded, max_rel_diff, small_rosa_model, synchronize

# device vs CPU: the matmuls differ in summation order only (TF32 is switched off for this section)
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-4}


def pipeline_exactness(rows: list[Row], device: torch.device, shapes: list[tuple], threads: int,
                       budget: Budget) -> None:
    """tau, counterfactuals and V at tau from ``RetrievalPipeline`` on ``device`` tensors vs ``rosa_match`` on the
    CPU, for every shape [B, T, R], bits 4 and 8, counterfactuals deferred or not. Two inputs per layer key, so the
    second call reuses the first one's pinned buffers, stream and event."""
    for bits in (4, 8):
        for defer in (False, True):
            for B, T, R in shapes:
                setting = f"B={B} T={T} R={R} bits={bits} defer={defer}"
                if not budget.allows(30):
                    rows.append(Row("1 exactness", "pipeline vs rosa_match", setting, "skipped", note="time budget"))
                    continue
                guarded(rows, "1 exactness", "pipeline vs rosa_match", setting,
                        lambda: rows.append(_one_pipeline_case(device, B, T, R, bits, defer, threads, setting)))


def _one_pipeline_case(device, B, T, R, bits, defer, threads, setting) -> Row:
    g = torch.Generator().manual_seed(1000 * bits + T + R)
    bad = []
    with RetrievalPipeline(threads, defer_counterfactuals=defer) as pipe:
        for rep in range(2):
            # a small alphabet in part of the routes makes long repeats (deep automaton states) likely
            hi = 2 ** bits if rep == 0 else min(2 ** bits, 3)
            q, k, v = (torch.randint(0, hi, (B, T, R), generator=g, dtype=torch.uint8) for _ in range(3))
            ref = rosa_match(q, k, bits, threads, want_cf=True, layout="BTR")
            pending = [pipe.submit(layer, q.to(device), k.to(device), bits, want_cf=(layer == 0)) for layer in (0, 1)]
            pipe.end_forward()
            found = [p.result(v.to(device)) for p in pending]
            cf = found[0].counterfactuals()
            synchronize(device)
            if defer and found[0].cf_deferred is None:
                bad.append("counterfactuals were not deferred")
            for layer, f in enumerate(found):
                if f.tau.device.type != device.type:
                    bad.append(f"layer {layer} tau on {f.tau.device}")
                if not torch.equal(f.tau.cpu().int(), ref.tau):
                    bad.append(f"rep {rep} layer {layer} tau")
                if not torch.equal(f.v_at_tau.cpu(), values_at(v, ref.tau)):
                    bad.append(f"rep {rep} layer {layer} v_at_tau")
            if found[1].has_cf:
                bad.append("counterfactuals computed without want_cf")
            if cf is None or not torch.equal(cf.cpu().int(), ref.cf):
                bad.append(f"rep {rep} counterfactuals")
    return Row("1 exactness", "pipeline vs rosa_match", setting, "FAIL" if bad else "pass",
               "equal" if not bad else "; ".join(bad[:4]))


def model_exactness(rows: list[Row], device: torch.device, batch: int, length: int, threads: int,
                    budget: Budget) -> None:
    """A small ROSA model on ``device`` vs on the CPU: logits, the ROSA injection (logits with ROSA minus logits
    without) and every parameter's gradient, with and without deferral and activation checkpointing.

    In float64, where rounding cannot flip a projection's sign bit (a flipped bit changes a symbol, hence tau, and
    the difference is then no longer a rounding one), for every variant; in fp32 (the training dtype) once, where a
    flipped bit is possible but rare at this size.

    Then the recommended branch (bits 8, ``kv_shift`` + ``qk_tied``), whose full forward takes K's symbols from Q's
    of the previous position instead of running a K projection (``RosaBranch.shift_k_from_q``), in float64 and fp32
    with deferral: the device's shortcut against the CPU's."""
    configs = {"published": RosaConfig(bits=4, window=16, global_layers=1),
               "induction": RosaConfig(bits=8, window=16, global_layers=1,
                                       inputs=dict(kv_shift=True, qk_tied=True))}
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(1, TINY["vocab_size"], (batch, length), generator=g)
    variants = ([(torch.float64, d, c, "published") for d in (False, True) for c in (False, True)]
                + [(torch.float32, True, False, "published")]
                + [(dt, True, False, "induction") for dt in (torch.float64, torch.float32)])
    refs = {}
    for dtype, defer, ckpt, inputs in variants:
        name = str(dtype).replace("torch.", "")
        setting = f"{name} B={batch} T={length} defer={defer} checkpointing={ckpt}"
        if inputs != "published":
            setting += " bits=8 inputs=induction (K from Q)"
        if not budget.allows(30):
            rows.append(Row("1 exactness", "model device vs CPU", setting, "skipped", note="time budget"))
            continue
        if (dtype, inputs) not in refs:
            refs[dtype, inputs] = small_rosa_model(TINY, configs[inputs], seed=3, dtype=dtype)
        base = refs[dtype, inputs]
        guarded(rows, "1 exactness", "model device vs CPU", setting,
                lambda: rows.append(_model_case(base, ids, device, defer, ckpt, threads, setting)))


def _model_run(model, ids, defer, threads, checkpointing=False) -> dict:
    """One forward without ROSA (no grad), one with ROSA and its backward; ``model`` is used up."""
    if checkpointing:
        enable_checkpointing(model)
    device = model.device
    with RetrievalPipeline(threads, defer_counterfactuals=defer) as pipe:
        attach_pipeline(model, pipe)
        ids = ids.to(device)
        model.rosa_config.enabled = False
        with torch.no_grad():
            plain = model(input_ids=ids, use_cache=False).logits.float()
        model.rosa_config.enabled = True
        logits = model(input_ids=ids, use_cache=False).logits
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
        loss.backward()
        synchronize(device)
        reused = pipe.reused
        attach_pipeline(model, None)
    return {"logits": logits.detach().float().cpu(), "injection": (logits.detach().float() - plain).cpu(),
            "loss": float(loss.detach()), "reused": reused,
            "grads": {n: p.grad.detach().float().cpu() for n, p in model.named_parameters() if p.grad is not None}}


def _model_case(base, ids, device, defer, ckpt, threads, setting) -> Row:
    ref = _model_run(copy.deepcopy(base), ids, defer=False, threads=threads)
    rtol = TOLERANCE[base.dtype]
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        got = _model_run(copy.deepcopy(base).to(device), ids, defer=defer, threads=threads, checkpointing=ckpt)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    logits = max_rel_diff(got["logits"], ref["logits"])
    injection = max_rel_diff(got["injection"], ref["injection"])
    missing = sorted(set(ref["grads"]) ^ set(got["grads"]))
    grad = max((max_rel_diff(got["grads"][n], ref["grads"][n]) for n in ref["grads"] if n in got["grads"]), default=0.0)
    rosa_grads = [n for n in ref["grads"] if ".rosa." in n]
    bad = [f"{name} rel {x:.1e}" for name, x in (("logits", logits), ("injection", injection), ("grads", grad))
           if not x <= rtol]
    if missing:
        bad.append(f"gradients present on one side only: {missing[:3]}")
    if float(ref["injection"].abs().max()) == 0.0:
        bad.append("the ROSA branches inject nothing")
    if ckpt and got["reused"] == 0:
        bad.append("checkpointing recompute ran the kernel again")
    value = f"max rel diff: logits {logits:.1e}, injection {injection:.1e}, grads {grad:.1e}"
    return Row("1 exactness", "model device vs CPU", setting, "FAIL" if bad else "pass", value,
               "; ".join(bad) or f"{len(ref['grads'])} gradients ({len(rosa_grads)} ROSA), tol {rtol:g}",
               data={"logits": logits, "injection": injection, "grads": grad, "reused": got["reused"]})


def bf16_forward_backward(rows: list[Row], device: torch.device, shape: dict, length: int, threads: int) -> None:
    """A bf16 ROSA model on ``device``: chunked next-token loss over ``final_hidden_states``, backward; finite loss
    and gradients, and every ROSA parameter gets a gradient."""
    setting = f"bf16 hidden={shape['hidden_size']} layers={shape['num_hidden_layers']} T={length}"

    def run() -> None:
        rosa = RosaConfig(bits=4, window=max(16, length // 8), global_layers=1)
        model = small_rosa_model(shape, rosa, seed=7, dtype=torch.bfloat16, max_positions=max(4096, length)).to(device)
        g = torch.Generator().manual_seed(8)
        ids = torch.randint(1, shape["vocab_size"], (1, length), generator=g).to(device)
        with RetrievalPipeline(threads) as pipe:
            attach_pipeline(model, pipe)
            hidden = model.final_hidden_states(ids)
            loss, _ = chunked_next_token_loss(hidden, model.lm_head, ids, 1024)
            loss.backward()
            synchronize(device)
            attach_pipeline(model, None)
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        nonfinite = [n for n, gr in grads.items() if not bool(torch.isfinite(gr).all())]
        no_grad = [n for n, p in model.named_parameters() if ".rosa." in n and p.grad is None]
        zero_rosa = [n for n, gr in grads.items() if ".rosa." in n and float(gr.abs().max()) == 0.0]
        bad = ([] if torch.isfinite(loss.detach()) else ["loss not finite"]) + [f"non-finite grad {n}" for n in nonfinite[:3]]
        bad += [f"no grad {n}" for n in no_grad[:3]] + [f"zero grad {n}" for n in zero_rosa[:3]]
        rows.append(Row("2 bf16", "forward + backward", setting, "FAIL" if bad else "pass",
                        f"loss {float(loss.detach()):.4f}, {len(grads)} gradients finite" if not bad else "; ".join(bad),
                        f"{len(rosa_layers(model))} ROSA layers"))

    guarded(rows, "2 bf16", "forward + backward", setting, run)
