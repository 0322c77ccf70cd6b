"""Decode latency per token from 1k to 64k context; KV and ROSA state per token (README.md in this folder)."""
