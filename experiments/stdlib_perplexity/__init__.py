"""Perplexity by position on real text, the Python stdlib sources (README.md in this folder)."""
