"""The serial-work benchmark (experiments/retrieval_throughput/serial_work.py) runs, checks match_narrow against
rosa_match on its inputs, and prints its table."""
from experiments.retrieval_throughput.serial_work import main


def test_smoke_prints_every_path(capsys):
    main(["--smoke"])
    out = capsys.readouterr().out
    for path in ("kernel", "previous", "match_narrow, reused buffers", "match_narrow, fresh buffers"):
        assert f"| {path} |" in out
    assert out.count("| 4 |") == 4 and out.count("| 8 |") == 4
