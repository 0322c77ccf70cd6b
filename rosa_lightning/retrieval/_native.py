"""The one module that imports the compiled kernel ``_sam`` (cython_ext/rosa_sam.pyx)."""
from . import _sam

# Private path switches of the kernel, defined once in its ``PathMode`` enum (tests force each path; the default
# is the hybrid). MODE_WIDE is a flag or-ed into a mode: int32 state ids even where uint16 ones fit. MODE_DENSE and
# MODE_SPARSE are flags of the batch kernel's transition layout: dense rows at every bit width, or the sparse layout
# at every width above 4 (without either the width decides; a stream always uses dense rows). MODE_GENERIC (tests)
# keeps a pair on the generic scan loop where the bits-4 naive loop (cython_ext/naive16.pxi) would run.
PathMode = _sam.PathMode
MODE_HYBRID = PathMode.MODE_HYBRID
MODE_NAIVE = PathMode.MODE_NAIVE
MODE_LCT = PathMode.MODE_LCT
MODE_WIDE = PathMode.MODE_WIDE
MODE_DENSE = PathMode.MODE_DENSE
MODE_SPARSE = PathMode.MODE_SPARSE
MODE_GENERIC = PathMode.MODE_GENERIC

gather_queries = _sam.gather_queries
match = _sam.match
StreamState = _sam.StreamState
count_q_runs = _sam.count_q_runs
match_into = _sam.match_into
release_arenas = _sam.release_arenas
arena_bytes = _sam.arena_bytes
_test_sparse_table_slots = _sam._test_sparse_table_slots   # tests only: breaks the sparse table's load invariant
