"""ROSA retrieval: exact suffix-automaton matching per (row, route) pair (docs/retrieval.md), and the seam through
which ROSA layers get it (``seam.py``): the batch pipeline (``pipeline.py``) and the streaming generation state
(``streaming.py``). The CPU-core budget is ``budget.py``."""
from .budget import cpu_budget, kernel_threads
from .match import rosa_match
from .pipeline import RetrievalHandle, RetrievalPipeline, RetrievalTimeout
from .result import RosaBuffers, RosaMatch
from .seam import LayerRetrieval, PendingResult, Retriever
from .stream import RosaStream
from .streaming import RosaGenerationCache
from .tokens import TokenStream, rosa_next_token

__all__ = ["LayerRetrieval", "PendingResult", "RetrievalHandle", "RetrievalPipeline", "RetrievalTimeout",
           "Retriever", "RosaBuffers", "RosaGenerationCache", "RosaMatch", "RosaStream", "TokenStream", "cpu_budget",
           "kernel_threads", "rosa_match", "rosa_next_token"]
