"""Streaming retrieval: ``RosaGenerationCache``, the ROSA state of one ``generate`` call (docs/generation.md §2-§4).

The streaming implementation of the retrieval seam (``seam.py``): ``submit`` then ``result(v_sym)`` runs one
``retrieve`` of the layer's new positions.

Per ROSA layer it holds a ``RosaStream`` over [B rows x R routes] (the suffix automata over the
K-run strings) and the V symbol of every position (to answer ``v_at_tau``); for the token channel
a ``TokenStream`` per row; and the left-padding offset of each row.

Protocol of one forward over ``T_new`` new positions:

1. ``begin(new_ids, attention_mask)`` before the model runs. It records ``T_new``, streams the
   token channel over the new ids and returns its outputs (``rosa_token_ids``). Whether this is
   the prefill (first chunk, left padding applied) or a continuation follows from ``length``, the
   number of positions already consumed, never from HF's KV cache object (docs/generation.md §6, failure 3).
2. ``retrieve(layer_idx, q_sym, k_sym, v_sym)`` once per ROSA layer (through the seam's ``submit`` and
   ``result``): one
   ``scan`` of the layer's stream over the new positions. Prefill is one batched scan of the whole
   prompt; decoding scans chunks of one position. Both give exactly ``rosa_match``'s tau.

Times are absolute positions of the padded batch (column indices of ``input_ids``), so tau
indexes the stored V symbols directly.

Rollback (speculative decoding, docs/generation.md §8): ``begin(..., journal=True)`` makes the forward's scans keep
undo journals; ``rollback(k)`` then removes the last k positions of that forward from every layer's stream and
stored V symbols and from the token channel, exactly. The branch-input state (``branch_state``) holds only its
value after the whole chunk, so with input options that keep one (kv_shift, center_u) only the whole forward can
be rolled back (``partial_rollback`` tells).
"""
from __future__ import annotations

import time
from typing import Optional, Sequence

import torch

from .budget import kernel_threads
from .seam import LayerRetrieval
from .stream import RosaStream
from .tokens import TokenStream
from .values import ValueStore


class _LayerState:
    """The stream and stored V symbols of one ROSA layer."""

    def __init__(self, batch: int, routes: int, bits: int, num_threads: int) -> None:
        self.stream = RosaStream(batch, routes, bits, num_threads)
        self.values = ValueStore(batch, routes)
        self.branch: dict = {}  # streamed state of the branch's input options (``branch_inputs``)

    def reset(self) -> None:
        self.stream.reset()
        self.values.reset()
        self.branch = {}


class RosaGenerationCache:
    """Incremental ROSA state for every ROSA layer of one model (and its token channel).

    Args:
        layers: decoder-layer indices that carry a ROSA branch.
        routes: R = hidden_size / bits.
        bits: M, bits per route.
        token_channel: whether the model has the token channel (then ``begin`` needs the ids).
        num_threads: kernel threads per scan (None = every core of the process).

    Streams are allocated on the first ``begin`` (the batch size is known then) and kept, emptied,
    across ``reset`` for the same batch size.
    """

    def __init__(self, layers: Sequence[int], routes: int, bits: int, token_channel: bool = False,
                 num_threads: Optional[int] = None) -> None:
        layers = [int(i) for i in layers]
        if len(set(layers)) != len(layers):
            raise ValueError(f"layers must be distinct, got {layers}")
        if routes < 1:
            raise ValueError(f"routes must be >= 1, got {routes}")
        self.layers = layers
        self.routes = int(routes)
        self.bits = int(bits)
        self.token_channel = bool(token_channel)
        self.num_threads = num_threads
        self.batch: Optional[int] = None
        self._states: dict[int, _LayerState] = {}
        self._tokens: Optional[TokenStream] = None
        self.start: Optional[torch.Tensor] = None
        self.length = 0
        self._num_new = 0
        self._journal = False
        self._branch_before: Optional[dict] = None

    streaming = True  # the seam: positions arrive chunk by chunk

    @classmethod
    def for_model(cls, model) -> "RosaGenerationCache":
        """A cache matching a ``RosaQwen3ForCausalLM`` (its ROSA layers, bits, token channel and thread setting)."""
        rosa = model.rosa_config
        return cls(rosa.layers_for(model.config.num_hidden_layers), model.config.hidden_size // rosa.bits,
                   rosa.bits, token_channel=getattr(model, "rosa_token", None) is not None,
                   num_threads=kernel_threads(rosa.runtime.num_threads))

    # ---- lifecycle ---------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget the sequence: the next ``begin`` is a prefill again."""
        for state in self._states.values():
            state.reset()
        if self._tokens is not None:
            self._tokens.reset()
        self.start = None
        self.length = 0
        self._num_new = 0
        self._journal = False
        self._branch_before = None

    def _allocate(self, batch: int) -> None:
        if batch == self.batch:
            self.reset()
            return
        self.batch = batch
        self._states = {i: _LayerState(batch, self.routes, self.bits, self.num_threads) for i in self.layers}
        self._tokens = TokenStream(batch, self.num_threads) if self.token_channel else None
        self.reset()

    # ---- one forward -------------------------------------------------------------------------
    def begin(self, input_ids: Optional[torch.Tensor], attention_mask: Optional[torch.Tensor] = None,
              num_new: Optional[int] = None, journal: bool = False) -> Optional[torch.Tensor]:
        """Announce the next ``T_new`` positions; returns the token channel's ids for them.

        Args:
            input_ids: int [B, T_new], the new tokens (may be None without the token channel,
                then ``num_new`` and the batch size come from ``num_new`` / the previous call).
            attention_mask: optional 0/1 [B, past + T_new] (HF's 2D mask); its last T_new columns
                mark the new positions. On the first chunk, each row's leading zeros are its left
                padding; later chunks must be all real tokens.
            num_new: T_new when ``input_ids`` is None.
            journal: make this forward revocable (``rollback``); not on the first (prefill) chunk.

        Returns:
            int64 [B, T_new] on ``input_ids``' device (-1 = none) with the token channel, else None.
        """
        batch, n = self._shape(input_ids, attention_mask, num_new)
        if journal and self.length == 0:
            raise ValueError("the prefill (first chunk) cannot be journaled; journal the continuation chunks")
        if self.length == 0:
            self._allocate(batch)
            self.start = _left_padding(attention_mask, n, batch)
        else:
            if batch != self.batch:
                raise ValueError(f"batch size changed from {self.batch} to {batch} within one sequence")
            if attention_mask is not None and not bool(attention_mask[:, -n:].all()):
                raise ValueError("padding after the first chunk is not supported: left padding must end within the "
                                 "first (prefill) chunk and later positions must all be real tokens")
        token_ids = None
        if self._tokens is not None:
            if input_ids is None:
                raise ValueError("the token channel needs input_ids in begin()")
            ids = input_ids.detach().to("cpu", torch.int64)
            first = self.length == 0
            token_ids = self._tokens.scan(ids, start=self.start if first else None,
                                          journal=journal).to(input_ids.device)
        self._journal = bool(journal)
        self._branch_before = ({i: _copy_branch(st.branch) for i, st in self._states.items()} if journal else None)
        self.length += n
        self._num_new = n
        return token_ids

    def forward_kwargs(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> dict:
        """``begin`` plus the model kwargs for this forward: ``rosa_cache`` (and ``rosa_token_ids``)."""
        token_ids = self.begin(input_ids, attention_mask)
        kwargs = {"rosa_cache": self}
        if token_ids is not None:
            kwargs["rosa_token_ids"] = token_ids
        return kwargs

    def submit(self, layer_idx: int, q_sym: torch.Tensor, k_sym: torch.Tensor, bits: int,
               want_cf: bool = False, reuse: bool = False) -> "_StreamJob":
        """The seam: the scan runs in ``result(v_sym)``, which needs the layer's V symbols (tau may point at a new
        position). No counterfactuals are computed (``cf`` is None); a backward through Q/K/V then fails clearly."""
        if bits != self.bits:
            raise ValueError(f"layer {layer_idx} retrieves with bits={bits}, but this cache was made for bits={self.bits}")
        return _StreamJob(self, layer_idx, q_sym, k_sym)

    def end_forward(self) -> None:
        """The seam: nothing is deferred in streaming."""

    def retrieve(self, layer_idx: int, q_sym: torch.Tensor, k_sym: torch.Tensor,
                 v_sym: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scan layer ``layer_idx``'s stream over the new positions.

        Args:
            q_sym, k_sym, v_sym: uint8 [B, T_new, R] symbols of the new positions (any device).

        Returns:
            tau: int32 [B, R, T_new] absolute times, -1 = none; v_at_tau: uint8 [B, R, T_new],
            the V symbol stored at time tau (0 where none). Both on the CPU.
        """
        state = self._states.get(layer_idx)
        if state is None:
            hint = "; call begin() before the forward" if self.batch is None else ""
            raise ValueError(f"layer {layer_idx} has no ROSA state in this cache (ROSA layers {self.layers}){hint}")
        n = self._num_new
        expected = (self.batch, n, self.routes)
        for name, sym in (("q_sym", q_sym), ("k_sym", k_sym), ("v_sym", v_sym)):
            if tuple(sym.shape) != expected:
                raise ValueError(f"{name} must have shape [B, T_new, R] = {list(expected)} as announced by begin(), "
                                 f"got {list(sym.shape)}")
        past = state.stream.length
        if past != self.length - n:
            raise RuntimeError(f"layer {layer_idx} has consumed {past} positions, expected {self.length - n}: "
                               "call begin() once before every forward and retrieve() once per layer")
        # V first: tau may point at a new position itself (tau[t] <= t).
        state.values.append(v_sym.detach().to("cpu", torch.uint8))
        start = self.start if past == 0 else None
        tau = state.stream.scan(q_sym.detach().cpu(), k_sym.detach().cpu(), start=start, journal=self._journal)
        return tau, state.values.gather(tau)

    # ---- rollback ----------------------------------------------------------------------------
    @property
    def partial_rollback(self) -> bool:
        """Whether ``rollback`` may keep part of the last forward: false when a branch-input option keeps streamed
        state (kv_shift, center_u), which is known only after the whole chunk."""
        return not any(st.branch for st in self._states.values())

    @property
    def rollback_positions(self) -> int:
        """How many positions of the last forward ``rollback`` can remove (0 unless it was journaled)."""
        return self._num_new if self._journal else 0

    def rollback(self, k: int) -> None:
        """Remove the last ``k`` positions of the last forward (begun with ``journal=True``, every ROSA layer
        retrieved) from every layer's automata and stored V symbols and from the token channel; the next forward
        continues exactly as after a forward over only the kept positions. With streamed branch-input state only
        the whole forward can be removed (``partial_rollback``). HF's KV cache is the caller's to crop."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(f"k must be a non-negative int, got {k!r}")
        if k > self.rollback_positions:
            raise ValueError(f"cannot roll back {k} positions: the last forward "
                             f"{'was not journaled' if not self._journal else f'had {self._num_new}'}")
        if k == 0:
            return
        for i, st in self._states.items():
            if st.stream.length != self.length:
                raise RuntimeError(f"layer {i} has not retrieved the last forward's positions; roll back after the "
                                   "forward has run through every ROSA layer")
        if k < self._num_new and not self.partial_rollback:
            raise NotImplementedError("the ROSA branch's input options (kv_shift / center_u) keep streamed state that "
                                      "is known only after a whole chunk: roll back the whole forward "
                                      f"(k={self._num_new}) and feed its kept positions again")
        for i, st in self._states.items():
            st.stream.rollback(k)
            st.values.rollback(k)
            if k == self._num_new and self._branch_before is not None:
                st.branch = self._branch_before[i]
        if self._tokens is not None:
            self._tokens.rollback(k)
        self.length -= k
        self._num_new -= k
        if self._num_new == 0:
            self._journal = False

    def token_match(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The token channel's match after the tokens ``ids`` int [B, n], without keeping them: (end int64 [B],
        length int32 [B]) as ``TokenStream.last_match``, with ``ids`` fed and then rolled back. Ends count real
        tokens from each row's first one. Ends any journal of the last forward (commit)."""
        if self._tokens is None:
            raise ValueError("this cache has no token channel")
        if self.length == 0:
            raise ValueError("token_match needs the prompt to have been fed (begin) first")
        self._tokens.scan(ids.detach().to("cpu", torch.int64), journal=True)
        ends, lens = self._tokens.last_match()
        self._tokens.rollback(ids.shape[1])
        self._journal = False
        return ends, lens

    def branch_state(self, layer_idx: int) -> dict:
        """Mutable per-layer dict for the branch's own streamed state (the input options of
        ``rosa_lightning.modeling.branch_inputs``: previous input, running sums); emptied by ``reset``."""
        state = self._states.get(layer_idx)
        if state is None:
            raise ValueError(f"layer {layer_idx} has no ROSA state in this cache (ROSA layers {self.layers})")
        return state.branch

    # ---- memory ------------------------------------------------------------------------------
    def nbytes(self) -> dict[str, int]:
        """Bytes held now: ``automaton`` (all RosaStreams), ``values`` (stored V symbols, allocated
        capacity), ``token_channel`` (TokenStream), and ``total``."""
        automaton = sum(s.stream.nbytes() for s in self._states.values())
        values = sum(s.values.nbytes() for s in self._states.values())
        tokens = self._tokens.nbytes() if self._tokens is not None else 0
        return {"automaton": automaton, "values": values, "token_channel": tokens,
                "total": automaton + values + tokens}

    # ---- helpers -----------------------------------------------------------------------------
    def _shape(self, input_ids, attention_mask, num_new) -> tuple[int, int]:
        if input_ids is not None:
            if input_ids.dim() != 2 or input_ids.shape[1] < 1:
                raise ValueError(f"input_ids must be [B, T_new] with T_new >= 1, got {list(input_ids.shape)}")
            batch, n = input_ids.shape
        else:
            if num_new is None or num_new < 1:
                raise ValueError("begin() needs input_ids or num_new >= 1")
            n = int(num_new)
            batch = attention_mask.shape[0] if attention_mask is not None else self.batch
            if batch is None:
                raise ValueError("begin() without input_ids needs an attention_mask on the first chunk")
        if attention_mask is not None:
            if attention_mask.dim() != 2 or attention_mask.shape[0] != batch or attention_mask.shape[1] < n:
                raise ValueError(f"attention_mask must be 2D [B, past + T_new] with B={batch}, T_new={n}, "
                                 f"got {list(attention_mask.shape)}")
        return int(batch), int(n)


class _StreamJob:
    """``submit``'s result: ``result(v_sym)`` scans the layer's stream and returns tau and v_at_tau on the
    symbols' device."""

    def __init__(self, cache: RosaGenerationCache, layer_idx: int, q_sym: torch.Tensor, k_sym: torch.Tensor) -> None:
        self._cache, self._layer, self._q, self._k = cache, layer_idx, q_sym, k_sym

    def result(self, v_sym: torch.Tensor) -> LayerRetrieval:
        t0 = time.perf_counter()
        tau, v_at_tau = self._cache.retrieve(self._layer, self._q, self._k, v_sym)
        seconds = time.perf_counter() - t0
        device = self._q.device
        return LayerRetrieval(tau=tau.to(device), v_at_tau=v_at_tau.to(device=device, dtype=torch.uint8),
                              retrieval_s=seconds, wait_s=seconds)


def _copy_branch(state: dict) -> dict:
    """A copy of a layer's branch-input state that later forwards do not change (they replace its tensors)."""
    return {key: (dict(value) if isinstance(value, dict) else value) for key, value in state.items()}


def _left_padding(attention_mask: Optional[torch.Tensor], n: int, batch: int) -> torch.Tensor:
    """int64 [B]: leading zeros of each row's mask over the new positions (0 without a mask).

    Raises ValueError for a mask that is not left padding (a zero after a one).
    """
    if attention_mask is None:
        return torch.zeros(batch, dtype=torch.int64)
    mask = attention_mask[:, -n:].detach().cpu().bool()
    seen = mask.to(torch.int64).cummax(dim=1).values.bool()  # True from each row's first real token on
    if bool((seen & ~mask).any()):
        raise ValueError("attention_mask holds padding after a real token; only left padding is supported")
    return (~seen).sum(dim=1).to(torch.int64)
