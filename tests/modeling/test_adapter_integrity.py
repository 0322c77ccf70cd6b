"""Adapter files: finite weights only, a checksum that finds flipped bytes, the ROSA layout compared on load,
whether the backbone was trained, and older files without these fields still loading."""
import json

import pytest
import torch
from safetensors.torch import save_file

from conftest import randomize_values
from rosa_lightning.modeling import (RosaConfig, build_rosa_model, load_adapter, read_adapter_metadata,
                                     rosa_named_parameters, save_adapter)
from rosa_lightning.modeling.integrity import ChecksumError, NonFiniteError


def _model(cfg, **rosa):
    torch.manual_seed(0)
    model = build_rosa_model(cfg, RosaConfig.from_dict(dict(window=16, **rosa)))
    randomize_values(model)
    return model


def _flip_tensor_bytes(file, tensor):
    """Flip one byte inside ``tensor``'s data in ``file`` (found by its bytes), keeping the file readable."""
    raw = bytearray(file.read_bytes())
    data = tensor.detach().contiguous().view(torch.uint8).numpy().tobytes()
    at = raw.find(data)
    assert at >= 0
    raw[at + len(data) // 2] ^= 0xFF
    file.write_bytes(bytes(raw))


def test_metadata_records_config_checksum_and_backbone_state(cfg, tmp_path):
    model = _model(cfg, bits=8, kv_shift=True, qk_tied=True)
    file = save_adapter(model, tmp_path / "a", backbone_trained=True)
    meta = read_adapter_metadata(file)
    assert meta["rosa_config"] == model.rosa_config.to_dict() and meta["backbone_trained"] is True
    assert len(meta["checksum"]) == 64 and meta["file"] == file
    assert read_adapter_metadata(save_adapter(model, tmp_path / "b"))["backbone_trained"] is None


def test_layout_mismatch_names_the_fields(cfg, tmp_path):
    file = save_adapter(_model(cfg, bits=8, kv_shift=True, qk_tied=True), tmp_path / "a")
    other = _model(cfg, bits=4)
    before = {n: p.clone() for n, p in rosa_named_parameters(other)}
    with pytest.raises(ValueError, match=r"bits: saved 8, current 4; inputs.kv_shift: saved True, current False; "
                                         r"inputs.qk_tied: saved True, current False"):
        load_adapter(other, file)
    assert all(torch.equal(p, before[n]) for n, p in rosa_named_parameters(other))  # nothing was copied
    # gradient options and runtime settings do not change what the parameters compute: accepted
    load_adapter(_model(cfg, bits=8, kv_shift=True, qk_tied=True, k_credit="matched", num_threads=1), file)


def test_flipped_bytes_are_found_and_named(cfg, tmp_path):
    model = _model(cfg)
    file = save_adapter(model, tmp_path / "a")
    _flip_tensor_bytes(file, dict(rosa_named_parameters(model))["model.layers.1.rosa.q_proj.weight"])
    fresh = _model(cfg)
    with pytest.raises(ChecksumError, match=f"adapter {file} is corrupted"):
        load_adapter(fresh, file)


def test_old_adapter_without_checksum_loads_with_a_warning(cfg, tmp_path):
    model = _model(cfg)
    file = tmp_path / "old.safetensors"
    save_file({n: p.detach().contiguous() for n, p in rosa_named_parameters(model)}, str(file),
              metadata={"rosa_config": json.dumps(model.rosa_config.to_dict())})
    meta = read_adapter_metadata(file)
    assert meta["checksum"] is None and meta["backbone_trained"] is None
    fresh = build_rosa_model(cfg, RosaConfig(window=16))
    with pytest.warns(UserWarning, match="no content checksum"):
        load_adapter(fresh, file)
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(rosa_named_parameters(model), rosa_named_parameters(fresh)))


def test_non_finite_adapter_is_refused_and_the_previous_file_kept(cfg, tmp_path):
    model = _model(cfg)
    file = save_adapter(model, tmp_path / "a")
    before = file.read_bytes()
    with torch.no_grad():
        dict(rosa_named_parameters(model))["model.layers.1.rosa.e0"][0] = float("nan")
    with pytest.raises(NonFiniteError, match="model.layers.1.rosa.e0"):
        save_adapter(model, tmp_path / "a")
    assert file.read_bytes() == before and [p.name for p in file.parent.iterdir()] == [file.name]


def test_damaged_header_names_the_file(tmp_path):
    file = tmp_path / "rosa_adapter.safetensors"
    file.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        read_adapter_metadata(file)
