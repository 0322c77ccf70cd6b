"""The speculative-decoding study's pipeline in seconds (experiments/speculative_decoding, --smoke): training, the three
tasks, the output check against plain greedy decoding, the table and the journaling overhead measurement."""
from experiments.speculative_decoding import run


def test_smoke_run(tmp_path):
    result = run.main(["--smoke", "--out", str(tmp_path)])
    assert {r["task"] for r in result["table"]} == {"code", "copy", "random"}
    assert all(r["mean_accepted"] >= 1 and r["spec_tok_s"] > 0 for r in result["table"])
    assert set(result["overhead"]["ms_per_token"]) == {"plain", "journaled", "spec_no_draft"}
    md = (tmp_path / "results.md").read_text()
    assert "| task | context |" in md and "journaled" in md
