"""The kernel benchmark (experiments/retrieval_throughput/bench.py) runs at a small size: every pattern's row, the
numba baseline's agreement, and at bits > 4 the sparse layout beside the dense rows (its results asserted equal
to theirs inside the benchmark)."""
import pytest

pytest.importorskip("numba")  # the benchmark's baseline (the test extra installs it)

from experiments.retrieval_throughput.bench import main  # noqa: E402

SMALL = ["--T", "512", "--routes", "2", "--baseline-routes", "1", "--repeats", "1"]


@pytest.mark.parametrize("bits", [4, 8])
def test_bench_prints_every_pattern(bits, capsys):
    main([*SMALL, "--bits", str(bits)])
    out = capsys.readouterr().out
    table, scaling = out.split("Thread scaling")[:2]
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| pattern")]
    assert len(rows) == 1 + 2 * 7 + 2                   # random, 7 periods twice, runs, blocks
    columns = 8 if bits > 4 else 5
    assert all(line.count("|") == columns + 1 for line in rows)
    assert ("sparse layout" in table) == (bits > 4) and ("sparse layout" in scaling) == (bits > 4)
    assert "| 1 |" in scaling
