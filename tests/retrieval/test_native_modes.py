"""The kernel's path switches: ``retrieval._native`` takes them from the extension's ``PathMode`` enum (one
definition, in cython_ext/rosa_sam.pyx), and each mode selects the path and id width it names."""
import numpy as np
import pytest

from rosa_lightning.retrieval import _native

_sam = _native._sam  # the compiled kernel, as _native imported it


def test_python_names_are_the_kernel_enum():
    names = [m.name for m in _sam.PathMode]
    assert names == ["MODE_HYBRID", "MODE_NAIVE", "MODE_LCT", "MODE_WIDE", "MODE_DENSE", "MODE_SPARSE",
                     "MODE_GENERIC"]
    for member in _sam.PathMode:
        assert getattr(_native, member.name) is member and isinstance(member, int)
    assert _native.PathMode is _sam.PathMode
    # MODE_WIDE, MODE_DENSE, MODE_SPARSE and MODE_GENERIC are flags: or-ed into a path they leave the path bits and
    # each other alone
    flags = [int(_native.MODE_WIDE), int(_native.MODE_DENSE), int(_native.MODE_SPARSE), int(_native.MODE_GENERIC)]
    assert all(f & 3 == 0 and f & (f - 1) == 0 for f in flags) and len(set(flags)) == 4
    assert {int(_native.MODE_HYBRID), int(_native.MODE_NAIVE), int(_native.MODE_LCT)} == {0, 1, 2}


@pytest.mark.parametrize("mode, lct, wide", [
    (_native.MODE_HYBRID, 1, 0),                     # the periodic input exceeds the naive work budget
    (_native.MODE_NAIVE, 0, 0),
    (_native.MODE_LCT, 1, 0),
    (_native.MODE_NAIVE | _native.MODE_WIDE, 0, 1),
    (_native.MODE_LCT | _native.MODE_WIDE, 1, 1),
], ids=["hybrid", "naive", "lct", "naive_wide", "lct_wide"])
def test_each_mode_selects_its_path(mode, lct, wide):
    T = 3000
    k = np.ascontiguousarray((np.arange(T) % 2).astype(np.uint8).reshape(1, T, 1))  # (01)*: deep suffix links
    q = np.ascontiguousarray(np.roll(k, 1, axis=1))
    state = _native.StreamState(1, 1, mode)
    tau = np.empty((1, 1, T), np.int32)
    state.scan(q, k, tau, 1)
    assert (state.lct_pairs(), state.wide_pairs()) == (lct, wide)
    ref = _native.StreamState(1, 1, _native.MODE_NAIVE)
    want = np.empty_like(tau)
    ref.scan(q, k, want, 1)
    assert np.array_equal(tau, want)
