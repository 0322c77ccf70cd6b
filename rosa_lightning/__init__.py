"""rosa_lightning: ROSA-Tuning for Qwen3 (windowed attention + exact CPU suffix-automaton retrieval).

Import submodules explicitly (``rosa_lightning.retrieval``, ``rosa_lightning.modeling``, ...);
importing the package itself does no work.
"""

__version__ = "0.1.0"
