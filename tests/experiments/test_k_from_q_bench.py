"""experiments/rosa_overhead/k_from_q.py: the seconds-long version runs, checks both paths agree, and reports."""
from experiments.rosa_overhead.k_from_q import main


def test_k_from_q_bench_smoke(capsys):
    res = main(["--hidden", "64", "--T", "96", "--rounds", "2"])
    assert res["k_projection_ms"] > 0 and res["k_from_q_ms"] > 0 and res["ratio"] > 0
    assert "| K from Q |" in capsys.readouterr().out
