"""Memory of HF's attention KV cache, per layer (for the decode-cost measurements and tests)."""
from __future__ import annotations


def kv_cache_nbytes(cache) -> list[dict]:
    """Per layer of an HF ``Cache``: ``{"type", "tokens", "bytes"}``.

    ``tokens`` is the number of cached positions (the window for a ``DynamicSlidingWindowLayer``),
    ``bytes`` the keys plus values actually held.
    """
    out = []
    for layer in cache.layers:
        keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
        held = [t for t in (keys, values) if t is not None and hasattr(t, "numel")]
        out.append({"type": type(layer).__name__,
                    "tokens": int(keys.shape[-2]) if held else 0,
                    "bytes": sum(t.numel() * t.element_size() for t in held)})
    return out
