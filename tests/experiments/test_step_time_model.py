"""The step-time model (experiments/step_time_model): its simulation's invariants and a seconds-long smoke run."""
import pytest

from experiments.step_time_model.run import MODELS, KernelCost, main, simulate_step

SHAPE = dict(T=16384, window=2048, efficiency=0.9)


@pytest.mark.parametrize("defer", [False, True])
def test_free_retrieval_costs_only_the_branch_matmuls(defer):
    free = KernelCost(bits=4, tau_ns=0.0, full_ns=0.0, speedup_2=2.0)
    r = simulate_step(MODELS["Qwen3-1.7B"], free, cores=1, bits=4, defer=defer, **SHAPE)
    assert r["forward_wait_s"] == 0 and r["backward_wait_s"] == 0
    assert r["ratio"] == pytest.approx(r["matmul_ratio"]) and 1.0 < r["ratio"] < 1.5


def test_more_cores_never_make_the_step_slower_and_enough_cores_hide_everything():
    kernel = KernelCost(bits=8, tau_ns=80.0, full_ns=145.0, speedup_2=2.0)
    for defer in (False, True):
        ratios = [simulate_step(MODELS["Qwen3-0.6B"], kernel, c, 8, defer, **SHAPE)["ratio"] for c in (8, 16, 64, 4096)]
        assert ratios == sorted(ratios, reverse=True)
        last = simulate_step(MODELS["Qwen3-0.6B"], kernel, 100000, 8, defer, **SHAPE)
        assert last["ratio"] == pytest.approx(last["matmul_ratio"], rel=1e-3)


def test_deferral_shortens_the_forward_wait_when_tau_is_cheaper():
    kernel = KernelCost(bits=4, tau_ns=38.0, full_ns=56.0, speedup_2=2.0)
    now = simulate_step(MODELS["Qwen3-1.7B"], kernel, 32, 4, False, **SHAPE)
    deferred = simulate_step(MODELS["Qwen3-1.7B"], kernel, 32, 4, True, **SHAPE)
    assert deferred["forward_wait_s"] < now["forward_wait_s"] and now["backward_wait_s"] == 0


def test_smoke_run_writes_its_tables(tmp_path, capsys):
    main(["--smoke", "--cores", "14", "64", "--out", str(tmp_path)])
    text = (tmp_path / "smoke.md").read_text()
    assert "Qwen3-1.7B" in text and "Qwen3-0.6B" in text and "Cores per accelerator" in text
    assert (tmp_path / "smoke.json").exists() and "window+ROSA / window" in capsys.readouterr().out


def test_post_mlp_injection_overlaps_the_mlp_too_and_never_costs_more():
    kernel = KernelCost(bits=8, tau_ns=20.0, full_ns=40.0, speedup_2=2.0)
    for defer in (False, True):
        for cores in (4, 14, 64):
            attn = simulate_step(MODELS["Qwen3-1.7B"], kernel, cores, 8, defer, injection="post_attn", **SHAPE)
            mlp = simulate_step(MODELS["Qwen3-1.7B"], kernel, cores, 8, defer, injection="post_mlp", **SHAPE)
            assert mlp["overlap_ms"] > 2 * attn["overlap_ms"]  # the MLP is most of a layer's FLOPs
            assert mlp["matmul_ratio"] == pytest.approx(attn["matmul_ratio"])  # same work, moved
            assert mlp["ratio"] <= attn["ratio"] + 1e-12 and mlp["forward_wait_s"] <= attn["forward_wait_s"] + 1e-12
    with pytest.raises(ValueError, match="post_mlp"):
        simulate_step(MODELS["Qwen3-1.7B"], kernel, 14, 8, False, injection="pre_mlp", **SHAPE)


def test_interleaving_micro_batches_one_is_todays_step_and_two_hide_more():
    from experiments.step_time_model.run import cores_to_hide

    model, kernel = MODELS["Qwen3-1.7B"], KernelCost(bits=8, tau_ns=25.0, full_ns=60.0, speedup_2=2.0)
    for defer in (False, True):
        assert simulate_step(model, kernel, 14, 8, defer, microbatches=1, **SHAPE) == \
            simulate_step(model, kernel, 14, 8, defer, **SHAPE)
    free = KernelCost(bits=8, tau_ns=0.0, full_ns=0.0, speedup_2=2.0)
    one, two = (simulate_step(model, free, 1, 8, True, microbatches=m, **SHAPE) for m in (1, 2))
    assert two["ratio"] == pytest.approx(two["matmul_ratio"]) == pytest.approx(one["matmul_ratio"])
    assert two["step_s"] == pytest.approx(2 * one["step_s"]) and two["window_s"] == pytest.approx(2 * one["window_s"])
    for injection in ("post_attn", "post_mlp"):
        n1 = cores_to_hide(model, kernel, 8, True, SHAPE["T"], SHAPE["window"], 0.9, injection=injection)
        n2 = cores_to_hide(model, kernel, 8, True, SHAPE["T"], SHAPE["window"], 0.9, injection=injection,
                           microbatches=2)
        assert n2 <= n1
    assert cores_to_hide(model, kernel, 8, True, SHAPE["T"], SHAPE["window"], 0.9, microbatches=2) < \
        cores_to_hide(model, kernel, 8, True, SHAPE["T"], SHAPE["window"], 0.9)
    with pytest.raises(ValueError, match="microbatches"):
        simulate_step(model, kernel, 14, 8, True, microbatches=0, **SHAPE)


def test_a_bad_micro_batch_count_fails_before_the_kernel_is_measured(tmp_path, monkeypatch):
    import experiments.step_time_model.run as stm

    def measured(*a, **k):
        raise AssertionError("the kernel was measured before the arguments were checked")

    monkeypatch.setattr(stm, "measure_kernel", measured)
    with pytest.raises(SystemExit, match="--microbatches must be at least 1"):
        main(["--smoke", "--microbatches", "1", "0", "--out", str(tmp_path)])


def test_a_run_on_given_kernel_figures_leaves_the_measured_table_alone(monkeypatch):
    import experiments.step_time_model.run as stm

    written = []
    monkeypatch.setattr(stm.Path, "write_text", lambda self, text: written.append(self))
    monkeypatch.setattr(stm.Path, "mkdir", lambda self, **k: None)
    main(["--ns", "4:15:25", "--ns", "8:20:40", "--cores", "14"])
    assert written and all(p.parent == stm.HERE / "results" / "given_ns" for p in written)


def test_k_from_q_removes_a_quarter_of_the_branch_matmuls():
    """Without a K projection the branch's matmuls are 11 of 15 C x C units per layer and step (forward 3 of 4,
    backward 8 of 11), so the matmul-only overhead over the window shrinks by 4/15, and the step never gets slower."""
    from experiments.step_time_model.run import layer_times

    model = MODELS["Qwen3-1.7B"]
    free = KernelCost(bits=8, tau_ns=0.0, full_ns=0.0, speedup_2=2.0)
    own = simulate_step(model, free, 14, 8, True, **SHAPE)
    from_q = simulate_step(model, free, 14, 8, True, k_from_q=True, **SHAPE)
    assert (from_q["matmul_ratio"] - 1) == pytest.approx((own["matmul_ratio"] - 1) * 11 / 15, rel=1e-9)
    a, b = layer_times(model, 16384, 2048, rosa=True), layer_times(model, 16384, 2048, rosa=True, k_from_q=True)
    assert b.pre == pytest.approx(a.pre / 2) and b.window == a.window and b.post == a.post
    kernel = KernelCost(bits=8, tau_ns=25.0, full_ns=60.0, speedup_2=2.0)
    for cores in (8, 14, 32, 64):
        for defer in (False, True):
            assert simulate_step(model, kernel, cores, 8, defer, k_from_q=True, **SHAPE)["step_s"] <= \
                simulate_step(model, kernel, cores, 8, defer, **SHAPE)["step_s"] + 1e-12
