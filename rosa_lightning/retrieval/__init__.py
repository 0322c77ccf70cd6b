"""ROSA retrieval: exact suffix-automaton matching per (row, route) pair (docs/retrieval.md)."""
from .match import rosa_match
from .result import RosaBuffers, RosaMatch
from .stream import RosaStream

__all__ = ["rosa_match", "RosaMatch", "RosaBuffers", "RosaStream"]
from .tokens import TokenStream, rosa_next_token  # noqa: E402,F401
