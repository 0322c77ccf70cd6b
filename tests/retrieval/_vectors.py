"""Loader for the public test vectors (docs/retrieval.md §8.1); list fields may be JSON-encoded strings."""
import json
import pathlib

_PATH = pathlib.Path(__file__).resolve().parents[1] / "data" / "rosa_vectors_public.json"
_LIST_FIELDS = ("q", "k", "tau", "r_cf_run", "r_cf_time", "k_run_start", "k_run_sym", "rcap", "q_run_id")


def _decode(case: dict) -> dict:
    out = dict(case)
    for key in _LIST_FIELDS:
        if isinstance(out.get(key), str):
            out[key] = json.loads(out[key])
    out["label"] = str(case.get("name", case.get("id")))
    return out


def load_cases():
    """All hand and random cases, decoded."""
    data = json.loads(_PATH.read_text())
    return [_decode(c) for c in data["hand"]] + [_decode(c) for c in data["random"]["cases"]]
