"""rosa_lightning: ROSA-Tuning for Qwen3 (windowed attention + exact CPU suffix-automaton retrieval).

Import submodules explicitly (``rosa_lightning.retrieval``, ``rosa_lightning.modeling``, ...).
Importing the package registers the ROSA model with transformers' Auto classes (model_type
``rosa_qwen3``), so ``AutoModelForCausalLM.from_pretrained(<merged ROSA dir>)`` builds the ROSA model.
"""

__version__ = "0.1.0"

from rosa_lightning.modeling.auto import register_auto_classes as _register_auto_classes  # noqa: E402

_register_auto_classes()
