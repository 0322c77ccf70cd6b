"""Generation entry points for ROSA models (docs/generation.md): loading a trained model (``loading.py``) and the
``generate.py`` command (``cli.py``).

The streaming ROSA state is ``rosa_lightning.retrieval.RosaGenerationCache`` (the streaming side of the retrieval
seam) and ``generate()`` support is part of the model (``rosa_lightning.modeling.generate``); both are re-exported
here.
"""
from rosa_lightning.modeling.generate import RosaGenerationMixin
from rosa_lightning.retrieval.streaming import RosaGenerationCache

from .memory import kv_cache_nbytes

__all__ = ["RosaGenerationCache", "RosaGenerationMixin", "kv_cache_nbytes"]
