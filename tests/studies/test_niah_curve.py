"""``experiments.retrofit_recovery.niah_curve``: the curve of a keep_best_niah run, its best step as the callback
picks it (the first step at the maximum), a resumed run's repeated step, the plot, and runs without a curve."""
import json

import pytest

from experiments.retrofit_recovery import niah_curve


def write_curve(run, rows):
    (run / "best").mkdir(parents=True)
    (run / "best" / "curve.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_curve_best_step_and_plot(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    write_curve(a, [{"step": 400, "niah_single_1_512": 2.0}, {"step": 800, "niah_single_1_512": 8.0},
                    {"step": 1200, "niah_single_1_512": 8.0}, {"step": 800, "niah_single_1_512": 6.0}])
    write_curve(b, [{"step": 400, "niah_single_1_512": 4.0, "niah_single_1_1024": 1.0}])
    out = tmp_path / "curve.png"
    assert niah_curve.main([f"one={a}", str(b), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    # the resumed run's later line for step 800 replaces the earlier one: the maximum 8 is first reached at 1200
    assert "one niah_single_1_512: 400:2 800:6 1200:8  best 8 at step 1200" in text
    assert f"{b} niah_single_1_1024: 400:1  best 1 at step 400" in text
    assert out.stat().st_size > 1000


def test_a_run_without_curve_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="callbacks=keep_best_niah"):
        niah_curve.main([str(tmp_path)])
