"""HF ``generate()`` for ROSA models: a fresh ``RosaGenerationCache`` per call (docs/generation.md §3), and ROSA-native
speculative decoding (docs/generation.md §8).

``RosaGenerationMixin`` goes before ``Qwen3ForCausalLM`` in the bases of ``RosaQwen3ForCausalLM``.
``generate`` creates (or resets) the ROSA cache and hands it to HF's loop as a model kwarg;
``prepare_inputs_for_generation`` announces each forward's new tokens to it (``begin``) and adds
the streamed token-channel ids. Attention keeps using HF's own cache: ``DynamicCache(config)``,
whose layers for ``sliding_attention`` are ``DynamicSlidingWindowLayer`` (only the last W-1 keys).

Speculative decoding (``generate(..., rosa_speculative=...)``, or HF's ``prompt_lookup_num_tokens``) runs its own
greedy loop, ``speculative_greedy``: a suffix-automaton drafter proposes the tokens that followed the latest earlier
occurrence of the longest repeated suffix, one forward verifies them, and the rejected positions are rolled back
from the ROSA state (undo journals) and from HF's KV cache (``crop``, with the sliding layers recording their past).
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

import torch
from transformers import DynamicCache

from rosa_lightning.retrieval.streaming import RosaGenerationCache
from rosa_lightning.retrieval.tokens import TokenStream


class RosaGenerationMixin:
    """Adds ROSA state handling to ``GenerationMixin.generate`` (greedy and sampling search, and greedy speculative
    decoding with ``rosa_speculative``)."""

    def generate(self, inputs=None, generation_config=None, rosa_cache: Optional[RosaGenerationCache] = None,
                 rosa_speculative: Any = None, **kwargs):
        """``GenerationMixin.generate`` with the ROSA state.

        Extra kwarg ``rosa_cache``: a ``RosaGenerationCache`` to use (it is reset first, and holds the
        final state afterwards, e.g. for ``nbytes()``); by default a new one per call.

        Extra kwarg ``rosa_speculative``: None/False (plain decoding), True (defaults), an int (``num_draft``), a
        mapping ``{"num_draft": ..., "min_match": ...}`` or a ``SpeculativeConfig``: greedy speculative decoding,
        whose output is token for token the greedy output (docs/generation.md §8); returns the sequences tensor.
        HF's ``prompt_lookup_num_tokens=N`` maps onto it (num_draft=N, min_match=1, the shortest n-gram HF's prompt
        lookup matches).

        Without the KV cache (``use_cache=False``) every step re-runs the full forward, which needs no
        ROSA state. Beam search and assistant models are not supported (the automata cannot be
        reordered between beams; an assistant model's draft would need its own state).
        """
        if "rosa_token_ids" in kwargs:
            raise ValueError("generate() streams the token channel itself; do not pass rosa_token_ids")
        config = generation_config if generation_config is not None else self.generation_config
        spec = SpeculativeConfig.coerce(rosa_speculative)
        lookup = kwargs.pop("prompt_lookup_num_tokens", None) or getattr(config, "prompt_lookup_num_tokens", None)
        if lookup:
            if spec is None:
                spec = SpeculativeConfig(num_draft=int(lookup), min_match=1)
            elif spec.num_draft != int(lookup):
                raise ValueError(f"prompt_lookup_num_tokens={lookup} and rosa_speculative (num_draft="
                                 f"{spec.num_draft}) disagree; pass one of them")
        if spec is not None:
            return _generate_speculative(self, inputs, config, kwargs, spec, rosa_cache)
        use_cache = kwargs.get("use_cache", config.use_cache)
        if self.rosa_config.enabled and use_cache is not False:
            _check_supported(config, kwargs)
            if rosa_cache is None:
                rosa_cache = RosaGenerationCache.for_model(self)
            rosa_cache.reset()
            kwargs["rosa_cache"] = rosa_cache
        return super().generate(inputs, generation_config, **kwargs)

    def prepare_inputs_for_generation(self, input_ids, next_sequence_length=None, cache=None, attention_mask=None,
                                      inputs_embeds=None, is_first_iteration=False,
                                      rosa_cache: Optional[RosaGenerationCache] = None, **kwargs):
        model_inputs = super().prepare_inputs_for_generation(
            input_ids, next_sequence_length=next_sequence_length, cache=cache, attention_mask=attention_mask,
            inputs_embeds=inputs_embeds, is_first_iteration=is_first_iteration, **kwargs)
        if rosa_cache is None:
            return model_inputs
        new_ids = model_inputs.get("input_ids")
        if new_ids is None:
            raise ValueError("ROSA generation needs input_ids; inputs_embeds prompts are not supported")
        if rosa_cache.length == 0 and cache is not None and cache.get_seq_length() > 0:
            raise ValueError("generate() was given a KV cache that already holds a prefix, but the ROSA state of "
                             "that prefix is not available; pass the whole prompt without a cache")
        token_ids = rosa_cache.begin(new_ids, attention_mask)
        model_inputs["rosa_cache"] = rosa_cache
        if token_ids is not None:
            model_inputs["rosa_token_ids"] = token_ids
        return model_inputs


def _check_supported(config, kwargs: dict) -> None:
    num_beams = kwargs.get("num_beams", config.num_beams)
    if num_beams is not None and num_beams > 1:
        raise NotImplementedError("beam search is not supported with ROSA (the per-row automata cannot be "
                                  "reordered between beams); use greedy or sampling")
    if kwargs.get("assistant_model") is not None or kwargs.get("assistant_early_exit") is not None:
        raise NotImplementedError("assistant-model decoding is not supported with ROSA; use rosa_speculative= "
                                  "(or prompt_lookup_num_tokens=), which drafts from the suffix automaton")


# ---- speculative decoding ----------------------------------------------------------------------


@dataclass(frozen=True)
class SpeculativeConfig:
    """Greedy speculative decoding (docs/generation.md §8).

    num_draft: at most this many draft tokens per verifying forward.
    min_match: draft only when the longest suffix of the sequence that occurred before is at least this long.
    """

    num_draft: int = 8
    min_match: int = 2

    def __post_init__(self) -> None:
        for name in ("num_draft", "min_match"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"rosa_speculative.{name} must be an int >= 1, got {value!r}")

    @classmethod
    def coerce(cls, value: Any) -> Optional["SpeculativeConfig"]:
        """None / False -> None; True -> the defaults; an int -> num_draft; a mapping -> its fields."""
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, int):
            return cls(num_draft=value)
        if isinstance(value, Mapping):
            data = {k: v for k, v in dict(value).items() if v is not None}
            enabled = data.pop("enabled", True)
            unknown = set(data) - {"num_draft", "min_match"}
            if unknown:
                raise ValueError(f"rosa_speculative: unknown keys {sorted(unknown)} (allowed: enabled, num_draft, "
                                 "min_match)")
            return cls(**data) if enabled else None
        raise TypeError(f"rosa_speculative must be None, a bool, an int, a mapping or a SpeculativeConfig, got "
                        f"{type(value).__name__}")


@dataclass
class SpeculativeStats:
    """Counts of one ``speculative_greedy`` call (all rows together)."""

    new_tokens: int = 0
    forwards: int = 0          # verifying forwards after the prefill (one per emitted group of tokens)
    drafted: int = 0           # draft tokens proposed
    accepted: int = 0          # draft tokens accepted
    accepted_from_prompt: int = 0  # of which drafted from a match that ended inside the prompt
    draft_forwards: int = 0    # forwards that carried at least one draft token
    decode_s: float = 0.0      # wall time after the prefills
    decode_cpu_s: float = 0.0  # process CPU time after the prefills
    per_row: list = field(default_factory=list)

    @property
    def mean_accepted(self) -> float:
        """Tokens emitted per verifying forward (1 + accepted drafts): the mean acceptance length."""
        return (self.forwards + self.accepted) / self.forwards if self.forwards else 0.0


@dataclass
class SpeculativeOutput:
    sequences: torch.Tensor
    stats: SpeculativeStats


class SuffixDrafter:
    """Drafts for one row: the tokens that followed the latest earlier end of the longest suffix of the row that
    also ended earlier (docs/retrieval.md §9.1), when that suffix has at least ``min_match`` tokens.

    With a token channel in ``rosa_cache`` its automaton is used (the unprocessed tokens are fed journaled and rolled
    back again); otherwise the drafter keeps a token automaton of its own, fed every committed token. A draft that
    runs into the present continues periodically (the earlier occurrence overlaps the suffix)."""

    def __init__(self, num_draft: int, min_match: int, rosa_cache: Optional[RosaGenerationCache] = None) -> None:
        self.num_draft, self.min_match = int(num_draft), int(min_match)
        self._cache = rosa_cache if rosa_cache is not None and rosa_cache.token_channel else None
        self._own = TokenStream(1, num_threads=1) if self._cache is None else None
        self.last_end: Optional[int] = None  # where the last draft's match ended (index into the sequence)

    def feed(self, tokens: Sequence[int]) -> None:
        """Committed tokens (the prompt, then every emitted token)."""
        if self._own is not None and len(tokens):
            self._own.scan(torch.tensor([list(tokens)], dtype=torch.int64))

    def propose(self, history: Sequence[int], pending: Sequence[int], limit: int) -> list[int]:
        """Up to ``limit`` draft tokens to follow ``history`` (every committed token; its last ``len(pending)``
        are not yet in the model's state)."""
        if limit < 1:
            return []
        if self._cache is not None:
            ends, lens = self._cache.token_match(torch.tensor([list(pending)], dtype=torch.int64))
        else:
            ends, lens = self._own.last_match()
        end, length = int(ends[0]), int(lens[0])
        self.last_end = None
        if end < 0 or length < self.min_match:
            return []
        self.last_end = end
        t = len(history) - 1
        period = t - end
        draft = []
        for m in range(min(limit, self.num_draft)):
            j = end + 1 + m
            while j > t:
                j -= period
            draft.append(int(history[j]))
        return draft


@torch.no_grad()
def speculative_greedy(model, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None, *,
                       max_new_tokens: int, eos_token_id: Any = None, pad_token_id: Optional[int] = None,
                       num_draft: int = 8, min_match: int = 2, min_new_tokens: int = 0,
                       rosa_cache: Optional[RosaGenerationCache] = None) -> SpeculativeOutput:
    """Greedy decoding with drafts from the suffix automaton, verified exactly (docs/generation.md §8).

    Rows are decoded one after the other (each without its left padding), then laid out as HF's greedy output: the
    given prompt columns, then each row's new tokens, ``pad_token_id`` after a row's EOS. Per row: a prefill, then
    per step one forward over [the tokens not yet fed + the draft]; the longest draft prefix equal to the model's
    own greedy choices is kept, plus the model's next token; the rest is rolled back from the ROSA state and the KV
    cache. The tokens are those of plain greedy decoding (up to floating-point differences between a chunked and a
    one-token forward, which can only matter at an exact tie of two logits). ``min_new_tokens``: the EOS ids are
    excluded until a row has that many new tokens (HF's MinNewTokensLengthLogitsProcessor).
    """
    spec = SpeculativeConfig(num_draft=num_draft, min_match=min_match)
    if input_ids.dim() != 2 or input_ids.shape[1] < 1:
        raise ValueError(f"input_ids must be [B, T] with T >= 1, got {list(input_ids.shape)}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    eos = _eos_set(eos_token_id)
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    if mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask must have the shape of input_ids {list(input_ids.shape)}, got "
                         f"{list(mask.shape)}")
    rc = None
    if model.rosa_config.enabled:
        rc = rosa_cache if rosa_cache is not None else RosaGenerationCache.for_model(model)
    stats = SpeculativeStats()
    rows = []
    for b in range(input_ids.shape[0]):
        real = mask[b].bool()
        seen = real.long().cummax(0).values.bool()
        if bool((seen & ~real).any()):
            raise ValueError("attention_mask holds padding after a real token; only left padding is supported")
        prompt = input_ids[b][real]
        if prompt.numel() == 0:
            raise ValueError(f"row {b} has no real token")
        rows.append(_decode_row(model, prompt, max_new_tokens, eos, spec, rc, stats, int(min_new_tokens or 0)))
    width = input_ids.shape[1]
    longest = max(len(r) for r in rows)
    if pad_token_id is None and any(len(r) < longest for r in rows):
        raise ValueError("rows end at different lengths: pass pad_token_id")
    out = torch.full((input_ids.shape[0], width + longest), -1 if pad_token_id is None else int(pad_token_id),
                     dtype=input_ids.dtype, device=input_ids.device)
    out[:, :width] = input_ids
    for b, r in enumerate(rows):
        out[b, width:width + len(r)] = torch.tensor(r, dtype=input_ids.dtype)
    return SpeculativeOutput(out, stats)


def _decode_row(model, prompt: torch.Tensor, max_new: int, eos: set, spec: SpeculativeConfig,
                rc: Optional[RosaGenerationCache], stats: SpeculativeStats, min_new: int = 0) -> list[int]:
    device = model.device
    kv = DynamicCache(config=model.config)
    if rc is not None:
        rc.reset()

    def forward(tokens: list[int], journal: bool) -> torch.Tensor:
        ids = torch.tensor([tokens], dtype=torch.long, device=device)
        past = kv.get_seq_length()
        kwargs = {}
        if rc is not None:
            token_ids = rc.begin(ids, None, journal=journal)
            kwargs["rosa_cache"] = rc
            if token_ids is not None:
                kwargs["rosa_token_ids"] = token_ids
        n = len(tokens)
        out = model(ids, attention_mask=torch.ones((1, past + n), dtype=torch.long, device=device),
                    position_ids=torch.arange(past, past + n, device=device)[None], cache=kv, use_cache=True,
                    **kwargs)
        return out.logits[0]

    eos_ids = sorted(eos)

    def choose(logits: torch.Tensor, first: int) -> list[int]:
        """Greedy tokens of logits rows [n, V], row r choosing new token number first + r."""
        if min_new > first and eos_ids:
            logits = logits.clone()
            logits[:min_new - first, eos_ids] = float("-inf")
        return logits.argmax(-1).tolist()

    def rollback(k: int) -> None:
        if rc is not None:
            rc.rollback(k)
        kv.crop(-k)

    history = prompt.tolist()
    first = choose(forward(history, False)[-1:], 0)[0]
    kv.activate_past_recording()  # sliding layers keep their evicted keys until crop, so a crop can restore them
    t0, c0 = time.perf_counter(), time.process_time()
    drafter = SuffixDrafter(spec.num_draft, spec.min_match, rc)
    drafter.feed(history + [first])
    history.append(first)
    generated, pending = [first], [first]
    forwards = drafted = accepted = from_prompt = 0
    while len(generated) < max_new and generated[-1] not in eos:
        remaining = max_new - len(generated)
        draft = drafter.propose(history, pending, remaining)
        chunk = pending + draft
        logits = forward(chunk, journal=bool(draft))
        preds = choose(logits[len(pending) - 1:], len(generated))
        a = 0
        while a < len(draft) and draft[a] == preds[a]:
            a += 1
        forwards += 1
        drafted += len(draft)
        accepted += a
        if draft and drafter.last_end is not None and drafter.last_end < prompt.numel():
            from_prompt += a
        reject = len(draft) - a
        if reject == 0:
            kv.crop(0)  # trims the sliding layers back to their window
            pending = [preds[a]]
        elif rc is None or rc.partial_rollback:
            rollback(reject)
            pending = [preds[a]]
        else:  # streamed branch-input state: only the whole chunk can go; its kept tokens are fed again
            rollback(len(chunk))
            pending = pending + draft[:a] + [preds[a]]
        new = (draft[:a] + [preds[a]])[:remaining]
        for i, tok in enumerate(new):
            if tok in eos:
                new = new[:i + 1]
                break
        generated += new
        history += new
        drafter.feed(new)
        stats.draft_forwards += bool(draft)
    stats.decode_s += time.perf_counter() - t0
    stats.decode_cpu_s += time.process_time() - c0
    stats.new_tokens += len(generated)
    stats.forwards += forwards
    stats.drafted += drafted
    stats.accepted += accepted
    stats.accepted_from_prompt += from_prompt
    stats.per_row.append({"new_tokens": len(generated), "forwards": forwards, "drafted": drafted,
                          "accepted": accepted, "accepted_from_prompt": from_prompt})
    return generated


def _eos_set(eos_token_id: Any) -> set:
    if eos_token_id is None:
        return set()
    if isinstance(eos_token_id, torch.Tensor):
        eos_token_id = eos_token_id.tolist()
    if isinstance(eos_token_id, int):
        return {eos_token_id}
    return {int(e) for e in eos_token_id}


# Generation-config fields whose effect the speculative loop does not reproduce: refused unless at their neutral value.
_NEUTRAL = {"do_sample": (None, False), "num_beams": (None, 1), "num_return_sequences": (None, 1),
            "repetition_penalty": (None, 1.0), "no_repeat_ngram_size": (None, 0), "bad_words_ids": (None,),
            "min_length": (None, 0), "suppress_tokens": (None,),
            "begin_suppress_tokens": (None,), "forced_bos_token_id": (None,), "forced_eos_token_id": (None,),
            "stop_strings": (None,), "sequence_bias": (None,), "renormalize_logits": (None, False),
            "return_dict_in_generate": (None, False), "output_scores": (None, False), "output_logits": (None, False),
            "exponential_decay_length_penalty": (None,), "use_cache": (None, True), "prefill_chunk_size": (None,),
            "max_matching_ngram_size": (None, 1, 2)}
_MODEL_KWARGS = ("input_ids", "attention_mask", "tokenizer", "streamer")


def _generate_speculative(model, inputs, config, kwargs: dict, spec: SpeculativeConfig,
                          rosa_cache: Optional[RosaGenerationCache]) -> torch.Tensor:
    model_kwargs = {k: kwargs.pop(k) for k in _MODEL_KWARGS if k in kwargs}
    if model_kwargs.get("streamer") is not None:
        raise NotImplementedError("rosa_speculative does not support a streamer")
    cfg = copy.deepcopy(config)
    unused = cfg.update(**kwargs)
    if unused:
        raise NotImplementedError(f"rosa_speculative does not support the generate() arguments {sorted(unused)}")
    if cfg.do_sample:
        raise NotImplementedError("rosa_speculative decodes greedily; sampling (do_sample=True) would need the "
                                  "speculative acceptance rule, which is not implemented: use do_sample=False or "
                                  "drop rosa_speculative")
    bad = sorted(name for name, ok in _NEUTRAL.items() if getattr(cfg, name, None) not in ok)
    if bad:
        settings = ", ".join(f"{n}={getattr(cfg, n)!r}" for n in bad)
        raise NotImplementedError(f"rosa_speculative supports greedy decoding with max_new_tokens / max_length, "
                                  f"eos_token_id, pad_token_id and min_new_tokens only; not {settings}")
    ids = inputs if inputs is not None else model_kwargs.get("input_ids")
    if ids is None:
        raise ValueError("rosa_speculative needs input_ids (inputs_embeds prompts are not supported)")
    max_new = cfg.max_new_tokens
    if max_new is None:
        if cfg.max_length is None:
            raise ValueError("pass max_new_tokens (or max_length)")
        max_new = int(cfg.max_length) - ids.shape[1]
    eos = cfg.eos_token_id
    pad = cfg.pad_token_id
    if pad is None and eos is not None:
        pad = next(iter(sorted(_eos_set(eos))))
    return speculative_greedy(model, ids, model_kwargs.get("attention_mask"), max_new_tokens=int(max_new),
                              eos_token_id=eos, pad_token_id=pad, num_draft=spec.num_draft,
                              min_match=spec.min_match, min_new_tokens=int(cfg.min_new_tokens or 0),
                              rosa_cache=rosa_cache).sequences
