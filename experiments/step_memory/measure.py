"""One training step of a shallow, full-width model in this process: the bytes autograd saves for the backward, by
component, and the growth of the process's peak RSS over the step.

A step is ``final_hidden_states``, the next-token loss (all [T, V] logits, or ``chunked_next_token_loss``) and the
backward, without the optimizer (its states are counted from the parameter sizes in ``run.py``). Saved tensors
are counted with ``torch.autograd.graph.saved_tensors_hooks``: every storage once (a tensor saved by several ops,
or by several layers, counts once), parameters excluded, each storage attributed to the component whose forward
saved it first; a storage that more than one decoder layer saves (the attention mask) is counted as ``shared``.
Under activation checkpointing the checkpointed layers save through their own hooks, so the per-layer figures are
then zero and the peak RSS is what tells; the retrieval results that the pipeline keeps for the recompute are
counted from the pipeline's store.

The child side of ``run.py`` (one configuration per fresh process, so each peak is its own):

    python -m experiments.step_memory.measure --arm window+rosa --tokens 16384
"""
from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path
from typing import Any, Optional

import torch

from rosa_lightning.modeling import RosaConfig, attach_pipeline, build_rosa_model, rosa_layers
from rosa_lightning.modeling.losses import chunked_next_token_loss, shifted_cross_entropy
from rosa_lightning.retrieval import RetrievalPipeline

from experiments.gpu_check.common import QWEN3_0P6B, TINY, enable_checkpointing, qwen3_config, randomize_branches

SHAPES = {"0.6b": QWEN3_0P6B, "tiny": dict(TINY, vocab_size=512)}
# window: the sliding window with layer 0 global, no branches; window+rosa: the published branch (bits 4);
# window+rosa-8: the recommended options of experiment=longbench_induction (bits 8, kv_shift + qk_tied)
ARMS = {
    "window": dict(rosa_layers=[], runtime={"enabled": False}),
    "window+rosa": dict(bits=4),
    "window+rosa-8": dict(bits=8, inputs={"kv_shift": True, "qk_tied": True},
                          grad={"field": "soft", "k_credit": "matched", "e0_term": True}),
}


def rosa_config(arm: str, window: int) -> RosaConfig:
    return RosaConfig(**{"window": window, "global_layers": 1, **ARMS[arm]})


def _rss_bytes(field: str) -> Optional[int]:
    """VmRSS / VmHWM of this process from /proc (Linux), in bytes; None elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class SavedTensorCounter:
    """Counts the storages autograd saves for the backward, by the component whose forward saved them."""

    def __init__(self, model) -> None:
        self.stack = ["other"]
        self.params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.first: dict[int, str] = {}
        self.bytes: dict[int, int] = {}
        self.savers: dict[int, set] = {}
        self.keep: list[torch.Tensor] = []  # the step needs them anyway; keeping them here pins their addresses
        self._handles = []
        inner = model.model
        named = [("embedding", inner.embed_tokens), ("final norm", inner.norm)]
        named += [(f"layer {i}", layer) for i, layer in enumerate(inner.layers)]
        for name, module in named:
            self._handles.append(module.register_forward_pre_hook(self._enter(name)))
            self._handles.append(module.register_forward_hook(self._leave))

    def _enter(self, name: str):
        def hook(module, args):
            self.stack.append(name)
        return hook

    def _leave(self, module, args, out) -> None:
        self.stack.pop()

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in self.params and storage.nbytes() > 0:
            self.first.setdefault(ptr, self.stack[-1])
            self.bytes[ptr] = max(self.bytes.get(ptr, 0), storage.nbytes())
            self.savers.setdefault(ptr, set()).add(self.stack[-1])
        self.keep.append(t)
        return t

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)

    def by_component(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for ptr, n in self.bytes.items():
            layers = {s for s in self.savers[ptr] if s.startswith("layer ")}
            name = "shared" if len(layers) > 1 else self.first[ptr]
            out[name] = out.get(name, 0) + n
        return out

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self.keep.clear()


def tensor_bytes(obj: Any, seen: Optional[set] = None, depth: int = 4) -> int:
    """Bytes of the distinct tensor storages reachable from ``obj`` through attributes, dicts and sequences."""
    seen = set() if seen is None else seen
    if isinstance(obj, torch.Tensor):
        ptr = obj.untyped_storage().data_ptr()
        if ptr in seen:
            return 0
        seen.add(ptr)
        return obj.untyped_storage().nbytes()
    if depth == 0 or obj is None or isinstance(obj, (int, float, str, bool)):
        return 0
    if isinstance(obj, dict):
        items = list(obj.values())
    elif isinstance(obj, (list, tuple)):
        items = list(obj)
    else:
        items = list(getattr(obj, "__dict__", {}).values())
        items += [getattr(obj, s) for s in getattr(type(obj), "__slots__", ()) if hasattr(obj, s)]
    return sum(tensor_bytes(x, seen, depth - 1) for x in items)


def _warm_up(model, ids: torch.Tensor, loss_chunk: int) -> None:
    """A short step first, so that lazy initialisation (kernels, thread pools, the worker) is not in the peak."""
    hidden = model.final_hidden_states(ids)
    loss = chunked_next_token_loss(hidden, model.lm_head, ids, loss_chunk or ids.shape[1])[0]
    loss.backward()
    model.zero_grad(set_to_none=True)


def measure(shape: str, arm: str, tokens: int, window: int, layers: int, loss_chunk: int, checkpointing: bool,
            threads: int) -> dict:
    torch.set_num_threads(threads)
    config = qwen3_config(dict(SHAPES[shape], num_hidden_layers=layers), max(tokens, 4096), tie=True)
    torch.manual_seed(0)
    model = build_rosa_model(config, rosa_config(arm, window), torch_dtype=torch.bfloat16,
                             attn_implementation="sdpa")
    randomize_branches(model, 1)
    model.train()
    if checkpointing:
        enable_checkpointing(model)
    ids = torch.randint(1, config.vocab_size, (1, tokens), generator=torch.Generator().manual_seed(tokens))
    layer_params = [sum(p.numel() * p.element_size() for p in layer.parameters()) for layer in model.model.layers]
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    kept = 0
    with RetrievalPipeline(threads) as pipe:
        attach_pipeline(model, pipe)
        try:
            _warm_up(model, ids[:, :min(tokens, 256)], loss_chunk)
            counter = SavedTensorCounter(model)
            rss_before = _rss_bytes("VmRSS")
            peak_reset = _reset_peak()
            maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            t0 = time.perf_counter()
            with counter.hooks():
                hidden = model.final_hidden_states(ids)
                counter.stack.append("loss")
                if loss_chunk:
                    loss, _ = chunked_next_token_loss(hidden, model.lm_head, ids, loss_chunk)
                else:
                    loss, _ = shifted_cross_entropy(model.lm_head(hidden), ids)
                counter.stack.pop()
            kept = tensor_bytes(pipe._kept)
            t1 = time.perf_counter()
            saved = counter.by_component()
            counter.close()
            loss.backward()
            t2 = time.perf_counter()
            peak = _rss_bytes("VmHWM") if peak_reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            base = rss_before if peak_reset else maxrss_before
        finally:
            attach_pipeline(model, None)
    grads_finite = all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    return {
        "shape": shape, "arm": arm, "tokens": tokens, "window": window, "layers": layers, "loss_chunk": loss_chunk,
        "checkpointing": checkpointing, "threads": threads, "loss": float(loss.detach()), "grads_finite": bool(grads_finite),
        "saved_bytes": saved, "kept_retrieval_bytes": kept, "param_bytes": param_bytes,
        "layer_param_bytes": layer_params, "rosa_layers": [layer.self_attn.layer_idx for layer in rosa_layers(model)],
        "peak_growth_bytes": peak - base, "peak_exact": peak_reset, "forward_s": t1 - t0, "backward_s": t2 - t1,
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", default="0.6b", choices=sorted(SHAPES))
    ap.add_argument("--arm", default="window+rosa", choices=list(ARMS))
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--window", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=3, help="decoder layers built (layer 0 global, the rest windowed)")
    ap.add_argument("--loss-chunk", type=int, default=1024, help="0 = all [T, V] logits at once")
    ap.add_argument("--checkpointing", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    if args.layers < 3:
        ap.error(f"--layers must be >= 3 (layer 0 global and two windowed layers to compare), got {args.layers}")
    print(json.dumps(measure(args.shape, args.arm, args.tokens, args.window, args.layers, args.loss_chunk,
                             args.checkpointing, args.threads)))


if __name__ == "__main__":
    main()
