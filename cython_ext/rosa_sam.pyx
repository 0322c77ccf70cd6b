# cython: language_level=3
"""Native ROSA retrieval kernel (suffix automaton over run-compressed key symbols).

Only ``rosa_lightning.retrieval`` imports this module.
"""
