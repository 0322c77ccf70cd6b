"""The plain-Python reference (docs/retrieval.md §3) and the brute-force oracle (docs/retrieval.md §4) reproduce every vector."""
import pytest

from rosa_lightning.retrieval.reference import scan_pair_oracle, scan_pair_reference

from ._vectors import load_cases

CASES = load_cases()
FIELDS = ("tau", "q_run_id", "r_cf_run", "k_run_start", "k_run_sym", "rcap")


@pytest.mark.parametrize("scan", [scan_pair_reference, scan_pair_oracle], ids=["reference", "oracle"])
@pytest.mark.parametrize("case", CASES, ids=[c["label"] for c in CASES])
def test_vector(scan, case):
    result = scan(case["q"], case["k"], case["M"])
    for key in FIELDS:
        if key in case:
            assert result[key] == case[key], key


def test_cf_times_match_hand_field():
    from rosa_lightning.retrieval.reference import flipped_cf_times

    for case in CASES:
        if "r_cf_time" not in case:
            continue
        res = scan_pair_reference(case["q"], case["k"], case["M"])
        flipped = flipped_cf_times(res, case["q"], case["M"])
        starts = [t for t in range(len(case["q"])) if t == 0 or case["q"][t] != case["q"][t - 1]]
        for i, u in enumerate(starts):
            for j in range(case["M"]):
                bit = (case["q"][u] >> j) & 1
                assert flipped[i][j] == case["r_cf_time"][i][j][1 - bit]
                assert case["r_cf_time"][i][j][bit] == case["tau"][u]
