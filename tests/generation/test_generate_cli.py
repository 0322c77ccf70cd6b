"""generate.py: Hydra-composed from conf/, base checkpoint + ROSA adapter + tokenizer from a local dir."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from rosa_lightning.generation.cli import CONFIG_DIR, generate_text, load_model_and_tokenizer
from rosa_lightning.modeling import RosaConfig, build_rosa_model, load_adapter, rosa_layers, save_adapter

from .helpers import tiny_config

ROOT = Path(__file__).resolve().parents[2]
VOCAB = 300
TEXTS = ["the cat sat on the mat. the dog sat on the log.\n", "a b c d e f g h i j k l m n o p\n",
         "one two three four five six seven eight nine ten\n"] * 4
PROMPT = "the cat sat on the mat. the dog"


def _tokenizer():
    """A byte-level BPE tokenizer (the project's trainer) with <|endoftext|> as eos and pad."""
    from transformers import PreTrainedTokenizerFast

    from rosa_lightning.data.stdlib_corpus import EOT, train_tokenizer

    tok = train_tokenizer(TEXTS, VOCAB)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOT, pad_token=EOT)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A 'pretrained' Qwen3 directory (weights + tokenizer) and a ROSA adapter with non-zero parameters."""
    from transformers import Qwen3ForCausalLM

    root = tmp_path_factory.mktemp("gen_ckpt")
    backbone = root / "backbone"
    torch.manual_seed(0)
    base = Qwen3ForCausalLM(tiny_config(vocab_size=VOCAB))
    with torch.no_grad():
        for p in base.parameters():
            if p.ndim == 2:
                p.normal_(0, 0.1)
    base.save_pretrained(backbone)
    _tokenizer().save_pretrained(backbone)
    rosa = RosaConfig(window=8, global_layers=1, token_channel="shared", runtime=dict(num_threads=1))
    model = build_rosa_model(str(backbone), rosa)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in rosa_layers(model):
            layer.rosa.e0.copy_(torch.randn(64, generator=g))
            layer.rosa.e1.copy_(torch.randn(64, generator=g))
        model.rosa_token.proj.weight.copy_(torch.randn(64, 64, generator=g) * 0.3)
    adapter = save_adapter(model, root / "adapter")
    return backbone, adapter


def _cfg(*overrides):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="generate", overrides=list(overrides))


def _reference(backbone, adapter, prompt, n):
    tok = _tokenizer()
    model = build_rosa_model(str(backbone), RosaConfig(window=8, global_layers=1, token_channel="shared"))
    load_adapter(model, adapter)
    model.eval()
    ids = tok(prompt, return_tensors="pt").input_ids
    return tok.decode(model.generate(ids, max_new_tokens=n, do_sample=False)[0, ids.shape[1]:])


def test_generate_text_matches_direct_generate(checkpoint):
    backbone, adapter = checkpoint
    cfg = _cfg(f"model.backbone={backbone}", f"adapter={adapter}", f"prompt='{PROMPT}'", "max_new_tokens=12")
    model, tok = load_model_and_tokenizer(cfg)
    assert model.rosa_config.token_channel == "shared" and model.config.sliding_window == 8
    assert float(model.model.layers[1].rosa.e0.detach().abs().sum()) > 0  # the adapter was loaded
    [text] = generate_text(cfg, model, tok)
    assert text == PROMPT + _reference(backbone, adapter, PROMPT, 12)
    batch = generate_text(_cfg(f"model.backbone={backbone}", f"adapter={adapter}", "max_new_tokens=12",
                               f"prompt=['{PROMPT}','one two']", "echo_prompt=false"), model, tok)
    assert batch[0] == text[len(PROMPT):] and batch[1] == _reference(backbone, adapter, "one two", 12)


def test_stop_strings_and_sampling(checkpoint):
    backbone, adapter = checkpoint
    base = [f"model.backbone={backbone}", f"adapter={adapter}", f"prompt='{PROMPT}'", "max_new_tokens=12",
            "echo_prompt=false"]
    model, tok = load_model_and_tokenizer(_cfg(*base))
    ids = tok(PROMPT, return_tensors="pt").input_ids
    new = model.generate(ids, max_new_tokens=12, do_sample=False)[0, ids.shape[1]:].tolist()
    words = [tok.decode(new[i:i + 1]) for i in range(len(new))]
    stop = next(w for w in words[2:] if w.isascii() and w.isalnum())  # a plain word, safe to quote for Hydra
    k = next(k for k in range(1, len(new) + 1) if stop in tok.decode(new[:k]))
    [cut] = generate_text(_cfg(*base, f"generation.stop_strings=['{stop}']"), model, tok)
    assert cut == tok.decode(new[:k])  # stops at the first token that completes the stop string
    sampled = [generate_text(_cfg(*base, "generation.do_sample=true", "generation.temperature=1.5",
                                  "generation.top_p=0.95", f"seed={s}"), model, tok)[0] for s in (0, 0, 1)]
    assert sampled[0] == sampled[1] and sampled[0] != sampled[2]


def test_missing_adapter_is_reported(checkpoint, tmp_path):
    backbone, _ = checkpoint
    with pytest.raises(FileNotFoundError, match="adapter"):
        load_model_and_tokenizer(_cfg(f"model.backbone={backbone}", f"adapter={tmp_path}/none.safetensors",
                                      "prompt=x"))


def test_entry_point_prints_text(checkpoint, tmp_path):
    backbone, adapter = checkpoint
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    run = subprocess.run([sys.executable, str(ROOT / "generate.py"), f"model.backbone={backbone}",
                          f"adapter={adapter}", f"prompt='{PROMPT}'", "max_new_tokens=6",
                          f"hydra.run.dir={tmp_path}"], capture_output=True, text=True, env=env, cwd=ROOT,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().splitlines()[-1] == PROMPT + _reference(backbone, adapter, PROMPT, 6)
