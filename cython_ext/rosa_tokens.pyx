# cython: language_level=3
"""Native token-channel kernel (single-stream ROSA over raw token ids).

Only ``rosa_lightning.retrieval`` imports this module.
"""
