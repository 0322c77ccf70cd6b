"""The serial-work benchmark (experiments/retrieval_throughput/serial_work.py) runs, checks match_narrow against
rosa_match on its inputs, and prints its table."""
from experiments.retrieval_throughput.serial_work import main


def test_smoke_prints_every_path(capsys):
    main(["--smoke"])
    out = capsys.readouterr().out
    for path in ("kernel", "previous", "match_narrow, reused buffers", "match_narrow, fresh buffers"):
        assert f"| {path} |" in out
    first, by_threads = out.split("by kernel threads")
    assert first.count("| 4 |") == 4 and first.count("| 8 |") == 4  # four paths per bit width
    assert "| 4 | 16 | 1 |" in by_threads and "| 8 | 8 | 1 |" in by_threads
