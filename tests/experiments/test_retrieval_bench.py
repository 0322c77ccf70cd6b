"""The kernel benchmark (experiments/retrieval_throughput/bench.py) runs at a small size: every pattern's row, the
numba baseline's agreement, and the generic scan loop (or, at bits > 4, the sparse layout) beside rosa_match, with
its results asserted equal to rosa_match's inside the benchmark."""
import pytest

pytest.importorskip("numba")  # the benchmark's baseline (the test extra installs it)

from experiments.retrieval_throughput.bench import main  # noqa: E402

SMALL = ["--T", "512", "--routes", "2", "--baseline-routes", "1", "--repeats", "1"]


@pytest.mark.parametrize("bits,compare", [(4, "generic"), (8, "generic"), (8, "sparse")])
def test_bench_prints_every_pattern(bits, compare, capsys):
    main([*SMALL, "--bits", str(bits), "--compare", compare])
    out = capsys.readouterr().out
    table, rest = out.split("Uniform random, one thread")
    outputs, scaling = rest.split("Thread scaling")
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| pattern")]
    assert len(rows) == 1 + 2 * 7 + 2                   # random, 7 periods twice, runs, blocks
    assert all(line.count("|") == 9 for line in rows)
    other = "sparse layout" if compare == "sparse" else "generic loop"
    assert other in table and other in scaling
    assert "| τ only |" in outputs and "| with counterfactuals |" in outputs
    assert "| 1 |" in scaling


def test_bench_rejects_sparse_at_four_bits():
    with pytest.raises(SystemExit):
        main([*SMALL, "--bits", "4", "--compare", "sparse"])
