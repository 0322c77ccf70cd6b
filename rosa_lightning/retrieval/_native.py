"""The one module that imports the compiled kernel ``_sam`` (cython_ext/rosa_sam.pyx)."""
from . import _sam

# Private path switches of the kernel (tests force each path; the default is the hybrid).
MODE_HYBRID = 0
MODE_NAIVE = 1
MODE_LCT = 2
# Flag (or-ed into a mode): int32 state ids even where uint16 ones fit.
MODE_WIDE = 4

gather_queries = _sam.gather_queries
match = _sam.match
StreamState = _sam.StreamState
