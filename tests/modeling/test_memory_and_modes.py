"""What the branch saves for backward; pre_attn and gradient checkpointing paths."""
import torch

from conftest import randomize_values
from rosa_lightning.retrieval import RetrievalPipeline
from rosa_lightning.modeling import RosaBranch, RosaConfig, build_rosa_model, rosa_named_parameters


def test_branch_saves_only_compact_indices_besides_input_and_weights():
    torch.manual_seed(0)
    B, T, C, M = 2, 40, 32, 4
    branch = RosaBranch(C, M)
    randomize = torch.Generator().manual_seed(0)
    with torch.no_grad():
        branch.e0.copy_(torch.randn(C, generator=randomize))
    u = torch.randn(B, T, C, requires_grad=True)
    shared = {p.data_ptr() for p in branch.parameters()} | {u.data_ptr()}
    extra = []

    def pack(t):
        if t.data_ptr() not in shared:
            extra.append((t.dtype, tuple(t.shape)))
        return t

    with RetrievalPipeline(num_threads=1) as pipe, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        inj = branch(u, 0, pipe)
    R = C // M
    dtypes = sorted(str(d) for d, _ in extra)
    assert dtypes == ["torch.int16", "torch.int16", "torch.uint8"], extra
    shapes = {s for _, s in extra}
    assert (B, R, T) in shapes and any(len(s) == 4 and s[:2] == (B, R) and s[3] == M for s in shapes)
    inj.sum().backward()
    assert u.grad is not None


def test_pre_attn_gradients(cfg, ids):
    torch.manual_seed(0)
    model = build_rosa_model(cfg, RosaConfig(window=16, injection="pre_attn"))
    randomize_values(model)
    model(ids, labels=ids).loss.backward()
    for n, p in rosa_named_parameters(model):
        assert p.grad is not None and p.grad.abs().sum() > 0, n


def test_gradient_checkpointing_gives_same_gradients(cfg, ids):
    torch.manual_seed(0)
    model = build_rosa_model(cfg, RosaConfig(window=16))
    randomize_values(model)
    model.train()
    model(ids, labels=ids).loss.backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model(ids, labels=ids).loss.backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, want[n], atol=1e-6, rtol=1e-5, msg=n)
