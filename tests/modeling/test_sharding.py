"""FSDP2 sharding of a ROSA model (``modeling/sharding.py``) in one process (gloo, world size 1): the sharded model
gives the unsharded model's loss and gradients through ``forward`` and ``chunked_loss``, its gathered state dict
is the original one, the non-finite guard reads sharded gradients, and misuse is refused."""
import copy
import os
import tempfile

import pytest
import torch
import torch.distributed as dist

from conftest import randomize_values, tiny_config
from rosa_lightning.guards import first_nonfinite_grad
from rosa_lightning.modeling import RosaConfig, attach_pipeline, build_rosa_model
from rosa_lightning.modeling.sharding import full_tensor, gather_full_state_dict, is_sharded, shard_model
from rosa_lightning.retrieval import RetrievalPipeline

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")


@pytest.fixture(scope="module")
def mesh():
    from torch.distributed.device_mesh import init_device_mesh

    store = tempfile.mktemp(prefix="rosa_sharding_pg_")
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    try:
        yield init_device_mesh("cpu", (1,))
    finally:
        dist.destroy_process_group()
        if os.path.exists(store):
            os.unlink(store)


def _model():
    torch.manual_seed(0)
    model = build_rosa_model(tiny_config(layers=3), RosaConfig.from_dict(dict(window=8)))
    randomize_values(model)
    return model.train()


def _grads(model, loss_fn):
    with RetrievalPipeline(1) as pipeline:
        attach_pipeline(model, pipeline)
        model.zero_grad(set_to_none=True)
        loss = loss_fn(model)
        loss.backward()
        attach_pipeline(model, None)
    return loss.detach(), {n: full_tensor(p.grad).clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("path", ["forward", "chunked_loss"])
def test_sharded_model_gives_the_unsharded_loss_and_gradients(mesh, ids, path):
    plain = _model()
    sharded = shard_model(copy.deepcopy(plain), mesh)
    assert is_sharded(sharded) and not is_sharded(plain)
    labels = ids.clone()
    labels[:, :10] = -100

    def loss_fn(model):
        if path == "forward":
            return model(ids, labels=labels).loss
        return model.chunked_loss(ids, labels, 7)[0]

    ref_loss, ref = _grads(plain, loss_fn)
    loss, got = _grads(sharded, loss_fn)
    assert torch.allclose(loss, ref_loss, rtol=1e-6, atol=0)
    assert sorted(got) == sorted(ref) and any(".rosa." in n for n in got)
    for n in ref:
        assert torch.allclose(got[n], ref[n], rtol=1e-5, atol=1e-7), n


def test_gathered_state_dict_is_the_model_and_guard_reads_sharded_grads(mesh, ids):
    plain = _model()
    sharded = shard_model(copy.deepcopy(plain), mesh)
    state = gather_full_state_dict(sharded)
    ref = plain.state_dict()
    assert sorted(state) == sorted(ref)
    for k in ref:
        assert type(state[k]) is torch.Tensor and torch.equal(state[k], ref[k]), k
    _grads(sharded, lambda m: m(ids, labels=ids).loss)
    assert first_nonfinite_grad(sharded) is None
    name, p = next((n, p) for n, p in sharded.named_parameters() if ".rosa." in n and p.grad is not None)
    p.grad.to_local().view(-1)[0] = float("nan")
    assert first_nonfinite_grad(sharded) == name


def test_misuse_is_refused(mesh):
    model = shard_model(_model(), mesh)
    with pytest.raises(ValueError, match="already sharded"):
        shard_model(model, mesh)
    with pytest.raises(TypeError, match="model.layers"):
        shard_model(torch.nn.Linear(2, 2), mesh)
