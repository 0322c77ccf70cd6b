"""rosa_speculative through the entry points: generate.py's ``generation.rosa_speculative`` and eval.py's
``generation.speculative`` give the predictions of plain greedy decoding (samsum's stop and minimum length
included)."""
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from rosa_lightning.evaluation.cli import _speculative_option
from rosa_lightning.evaluation.runner import Sample, generate_batch
from rosa_lightning.generation.cli import CONFIG_DIR, generate_text, load_model_and_tokenizer
from rosa_lightning.modeling import RosaQwen3ForCausalLM
from rosa_lightning.modeling.generate import SpeculativeConfig

from tests.evaluation.helpers import save_backbone, save_merged, tokenizer

from .test_generate_cli import PROMPT, _cfg, checkpoint  # noqa: F401  (the module fixture)


def test_generate_cli_option(checkpoint):  # noqa: F811
    backbone, adapter = checkpoint
    base = [f"model.backbone={backbone}", f"adapter={adapter}", "max_new_tokens=16", "echo_prompt=false",
            f"prompt=['{PROMPT}','one two three one two']"]
    model, tok = load_model_and_tokenizer(_cfg(*base))
    want = generate_text(_cfg(*base), model, tok)
    for option in ("generation.rosa_speculative=true", "generation.rosa_speculative={num_draft: 3, min_match: 1}",
                   "+generation.prompt_lookup_num_tokens=4"):
        assert generate_text(_cfg(*base, option), model, tok) == want, option


def test_eval_option_and_runner(tmp_path):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        off = compose(config_name="eval")
        on = compose(config_name="eval", overrides=["generation.speculative={num_draft: 5, min_match: 1}"])
    assert SpeculativeConfig.coerce(_speculative_option(off)) is None
    spec = SpeculativeConfig.coerce(_speculative_option(on))
    assert spec == SpeculativeConfig(num_draft=5, min_match=1)
    merged = save_merged(save_backbone(tmp_path / "backbone"), tmp_path / "merged", window=16)
    model, tok = RosaQwen3ForCausalLM.from_pretrained(merged).eval(), tokenizer()
    g = torch.Generator().manual_seed(0)
    motif = torch.randint(1, 300, (6,), generator=g).tolist()
    samples = [Sample(str(i), torch.randint(1, 300, (n,), generator=g).tolist() + motif * 3, 12) for i, n in
               enumerate([40, 25, 33])]
    want, _ = generate_batch(model, tok, samples)
    got, timing = generate_batch(model, tok, samples, spec)
    assert got == want and timing.decode_s > 0 and timing.prefill_s > 0
    newline = tok.encode("\n", add_special_tokens=False)[-1]
    stop = [Sample("s", samples[0].input_ids, 8, stop_ids=(newline,), min_new_tokens=3)]
    bias = torch.zeros(model.config.vocab_size)
    bias[newline] = 100.0
    handle = model.lm_head.register_forward_hook(lambda m, i, out: out + bias)
    try:
        want, _ = generate_batch(model, tok, stop)
        got, _ = generate_batch(model, tok, stop, spec)
    finally:
        handle.remove()
    assert got == want and len(got[0]) == 4 and got[0][-1] == newline  # three tokens, then the stop


def test_generate_entry_point_with_the_readme_option(checkpoint, tmp_path):  # noqa: F811
    """The README's command shape: ``python generate.py ... generation.rosa_speculative=true`` prints what plain
    greedy decoding prints."""
    import os
    import subprocess
    import sys

    from .test_generate_cli import ROOT, _reference

    backbone, adapter = checkpoint
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    run = subprocess.run([sys.executable, str(ROOT / "generate.py"), f"model.backbone={backbone}",
                          f"adapter={adapter}", f"prompt='{PROMPT}'", "max_new_tokens=8",
                          "generation.rosa_speculative=true", f"hydra.run.dir={tmp_path}"],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().splitlines()[-1] == PROMPT + _reference(backbone, adapter, PROMPT, 8)
