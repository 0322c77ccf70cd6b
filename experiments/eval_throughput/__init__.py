"""Prefill and decode tokens/s of the evaluation's generation path: global vs window vs window + ROSA
(README.md in this folder)."""
