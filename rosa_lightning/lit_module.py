"""``RosaLitModule``: loss, metrics, optimizer groups and the two training stages (docs/method.md §5).

Stage A trains the ROSA parameters only; the backbone is frozen with ``requires_grad=False`` and
gets no optimizer state. Stage B trains the backbone too, at its own (small) learning rate, with the
schedule restarted. Stage B starts either in the same run once ``stage_a_tokens`` tokens were seen
(single process: the optimizer and scheduler are rebuilt), or as a separate run with
``train.stage=B model.init_from=<stage-A checkpoint or adapter dir>``.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Optional

import lightning as L
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel

from rosa_lightning.callbacks.checkpoint_io import verify_checkpoint
from rosa_lightning.data.hub import resolve_reference
from rosa_lightning.data.loading import backbone_reference
from rosa_lightning.guards import (check_has_rosa, check_nonfinite_mode, check_token_ids, check_window_fits,
                                   first_nonfinite_grad, nonfinite_grad_error, nonfinite_loss_error)
from rosa_lightning.modeling import (RosaConfig, build_rosa_model, freeze_backbone, is_rosa_parameter, load_adapter,
                                     read_adapter_metadata, unused_parameters)
from rosa_lightning.modeling.integrity import BRANCH_FIELDS, check_layout
from rosa_lightning.modeling.losses import answer_accuracy, shifted_cross_entropy
from rosa_lightning.modeling.parameters import rosa_layers
from rosa_lightning.modeling.sharding import is_sharded, shard_model
from rosa_lightning.modeling.teacher import HashTeacher

log = logging.getLogger(__name__)
STAGES = ("A", "B")


class RosaLitModule(L.LightningModule):
    """LightningModule around a ROSA-patched Qwen3 (``rosa_lightning.modeling``).

    Args:
        backbone: path / hub id, ``{name_or_path: ...}``, or a mapping of Qwen3Config fields.
        rosa: a ``RosaConfig``.
        optimizer: partial optimizer (``params`` given here), e.g. AdamW with betas and eps.
        scheduler: partial ``scheduler(optimizer, total_steps)`` or None (constant LR).
        lr: per stage ("A", "B"), the groups' base learning rates and schedule floors: ``rosa``,
            ``rosa_min``, ``backbone``, ``backbone_min`` (backbone values are needed in stage B only).
        weight_decay: applied to matrices (ROSA projections incl. out_proj, backbone weights); e0/e1,
            norms and biases get 0.
        stage: "A" or "B" (the stage this run starts in).
        stage_a_tokens: switch A -> B in this run after that many training tokens (None = never).
        from_scratch: random init for a backbone given by path/hub id (configs always are).
        init_from: a Lightning checkpoint or an adapter directory to take the starting weights from.
        hash_teacher: None, or ``{weight, warm_start_steps, until_step, seed}``: a fixed-hash teacher for the ROSA
            Q logits (``modeling/teacher.py``). For the first ``warm_start_steps`` steps the training loss is the
            teacher loss alone; after that ``lm_loss + weight * teacher_loss`` until ``until_step`` (None = to the
            end). Logged as ``train/teacher_loss``.
        loss_chunk_tokens: the loss computes logits for this many scored positions at a time, under activation
            checkpointing (``chunked_next_token_loss``), never the whole [B, T, V]; None = all logits at once.
        nonfinite: what a NaN/inf training loss or gradient does: "raise" stops training with an error naming
            the step and the value; "skip" leaves the weights and optimizer state of that step unchanged (the
            step still counts for the schedule) and counts it in ``train/nonfinite_skipped``.
        gradient_checkpointing: activation checkpointing of every decoder layer (non-reentrant); the ROSA
            layers' recompute reuses the first forward's retrieval, so the kernel still runs once per layer and step.
    """

    def __init__(self, backbone: Any, rosa: Any, optimizer: Callable, scheduler: Optional[Callable] = None,
                 lr: Optional[Mapping] = None, weight_decay: float = 0.01, stage: str = "A",
                 stage_a_tokens: Optional[int] = None, from_scratch: bool = False,
                 torch_dtype: Optional[str] = None, attn_implementation: str = "sdpa",
                 init_from: Optional[str] = None, hash_teacher: Optional[Mapping] = None,
                 nonfinite: str = "raise", loss_chunk_tokens: Optional[int] = None,
                 gradient_checkpointing: bool = False) -> None:
        super().__init__()
        if stage not in STAGES:
            raise ValueError(f"train.stage must be one of {STAGES}, got {stage!r}")
        self.nonfinite = check_nonfinite_mode(nonfinite)
        if loss_chunk_tokens is not None and (isinstance(loss_chunk_tokens, bool) or not isinstance(loss_chunk_tokens, int)
                                              or loss_chunk_tokens < 1):
            raise ValueError(f"model.loss_chunk_tokens must be an int >= 1 or null, got {loss_chunk_tokens!r}")
        self.loss_chunk_tokens = loss_chunk_tokens
        if not isinstance(gradient_checkpointing, bool):
            raise ValueError(f"model.gradient_checkpointing must be true or false, got {gradient_checkpointing!r}")
        # plain containers only, so that checkpoints load with torch.load(weights_only=True)
        self.save_hyperparameters(_plain({"backbone": backbone, "rosa": rosa, "lr": lr, "weight_decay": weight_decay,
                                          "stage": stage, "stage_a_tokens": stage_a_tokens,
                                          "from_scratch": from_scratch, "torch_dtype": torch_dtype,
                                          "attn_implementation": attn_implementation, "init_from": init_from,
                                          "hash_teacher": hash_teacher, "nonfinite": nonfinite,
                                          "loss_chunk_tokens": loss_chunk_tokens,
                                          "gradient_checkpointing": gradient_checkpointing}),
                                  logger=False)
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.lr = {"A": {"rosa": 3e-4, "rosa_min": 5e-5},
                   "B": {"rosa": 1e-4, "rosa_min": 5e-6, "backbone": 5e-6, "backbone_min": 1e-6}}
        for st, values in dict(lr or {}).items():
            if st not in STAGES:
                raise ValueError(f"model.lr keys must be stages {STAGES}, got {st!r}")
            self.lr[st] = {**self.lr[st], **dict(values)}
        self.stage = stage
        self.model = build_model(backbone, rosa, torch_dtype=torch_dtype,
                                 attn_implementation=attn_implementation, from_scratch=from_scratch)
        check_has_rosa(len(rosa_layers(self.model)), self.model.rosa_config)
        if gradient_checkpointing:
            # non-reentrant (HF's default): the first forward computes the counterfactuals, and the retriever answers
            # each ROSA layer's recompute from its kept result (docs/pipeline.md §1)
            self.model.activation_checkpointing_enable()
        # an adapter alone reproduces this run only with the backbone it started from; record when it
        # was trained too (stage B here, or in the run ``init_from`` continues)
        self.backbone_trained = stage == "B"
        if init_from:
            self.backbone_trained |= bool(load_initial_weights(self.model, init_from))
        self._apply_stage()
        self.teacher_cfg = teacher_config(hash_teacher)
        self.teacher = None
        if self.teacher_cfg is not None:
            self.teacher = HashTeacher(self.model, seed=self.teacher_cfg["seed"])
        self.tokens_seen = 0
        self.stage_started_step = 0
        self.nonfinite_skipped = 0
        self._nonfinite_loss = False

    # ---- stages -------------------------------------------------------------------------------
    def _apply_stage(self) -> None:
        if self.stage == "A":
            freeze_backbone(self.model)
        else:
            for p in self.model.parameters():
                p.requires_grad_(True)
        for _, p in unused_parameters(self.model):  # no gradient ever reaches them (DDP refuses those)
            p.requires_grad_(False)

    def _maybe_enter_stage_b(self) -> None:
        budget = self.hparams.stage_a_tokens
        if self.stage != "A" or budget is None or self.tokens_seen < budget:
            return
        # Every rank counts the same tokens (batch size x world size per step), so all of them switch at this step.
        strategy = self.trainer.strategy
        wrapped = isinstance(strategy.model, DistributedDataParallel)
        # setup() refuses these before training; a run resumed into stage A from a checkpoint is checked here
        check_switch_supported(strategy, self.trainer.world_size)
        self.stage = "B"
        self.backbone_trained = True
        self.stage_started_step = self.global_step
        self._apply_stage()
        if wrapped:
            # DDP registers the parameters that require gradients when it wraps the model: wrap again, so the
            # backbone's gradients are all-reduced too (the old wrapper's reducer is dropped with it)
            strategy.model = self
            strategy.configure_ddp()
        strategy.setup_optimizers(self.trainer)  # new groups; the schedule restarts
        self.print(f"stage B from step {self.global_step} ({self.tokens_seen} tokens seen)")

    # ---- sharding -----------------------------------------------------------------------------
    def configure_model(self) -> None:
        """Under Lightning's ``ModelParallelStrategy`` (``trainer=fsdp_cpu`` / ``trainer=fsdp2``): shard the model
        with FSDP2 over all ranks (``modeling/sharding.py``). Other strategies set no device mesh and leave the
        model as it is."""
        mesh = self._device_mesh
        if mesh is None or is_sharded(self.model):
            return
        if mesh.ndim != 1:
            # the strategy splits the ranks into data- and tensor-parallel groups (by default nodes x devices);
            # ROSA layers have no tensor-parallel plan, so every rank is a data-parallel rank of one FSDP group
            from torch.distributed.device_mesh import init_device_mesh

            log.info("FSDP2 over all %d ranks (the strategy's %s split %s is not used: no tensor parallelism)",
                     mesh.size(), mesh.mesh_dim_names, tuple(mesh.shape))
            mesh = init_device_mesh(mesh.device_type, (mesh.size(),))
        shard_model(self.model, mesh)

    # ---- forward and loss ---------------------------------------------------------------------
    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Logits [B, T, V] for ``batch["input_ids"]`` (plus ``rosa_token_ids`` when present)."""
        kwargs = {}
        if "rosa_token_ids" in batch:
            kwargs["rosa_token_ids"] = batch["rosa_token_ids"]
        return self.model(input_ids=batch["input_ids"], use_cache=False, **kwargs).logits

    def _step(self, batch: Mapping[str, torch.Tensor], split: str) -> torch.Tensor:
        # an id outside the vocabulary would fail inside the embedding without saying which or where
        check_token_ids(batch["input_ids"], self.model.config.vocab_size)
        if self.loss_chunk_tokens is None:
            logits = self(batch)
            loss, n_scored = shifted_cross_entropy(logits, batch["labels"])
        else:
            loss, n_scored, chunk_acc = self.model.chunked_loss(batch["input_ids"], batch["labels"],
                                                                self.loss_chunk_tokens, batch.get("rosa_token_ids"),
                                                                batch.get("answer_mask"))
        bs = batch["input_ids"].shape[0]
        self.log(f"{split}/loss", loss, prog_bar=True, batch_size=bs, sync_dist=split != "train")
        self.log(f"{split}/ppl", torch.exp(loss.detach().clamp(max=30.0)), batch_size=bs,
                 sync_dist=split != "train")
        if "answer_mask" in batch:
            acc = (answer_accuracy(logits.detach(), batch["input_ids"], batch["answer_mask"])
                   if self.loss_chunk_tokens is None else chunk_acc)
            self.log(f"{split}/answer_acc", acc, prog_bar=True, batch_size=bs, sync_dist=split != "train")
        return loss

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._step(batch, "train")
        if self.teacher is not None:
            loss = self._with_teacher(loss, batch["input_ids"])
        if not bool(torch.isfinite(loss.detach())):
            if self.nonfinite == "raise":
                raise nonfinite_loss_error(loss, self.global_step)
            self._nonfinite_loss = True  # the optimizer step of this batch is skipped (on_before_optimizer_step)
        self.tokens_seen += batch["input_ids"].numel() * self.trainer.world_size
        self.log("train/tokens_seen", float(self.tokens_seen), batch_size=1)
        self.log("train/stage_b", float(self.stage == "B"), batch_size=1)
        for group in self.trainer.optimizers[0].param_groups:
            self.log(f"lr/{group['name']}", group["lr"], batch_size=1)
        return loss

    def _with_teacher(self, loss: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        cfg, step = self.teacher_cfg, self.global_step
        if cfg["until_step"] is not None and step >= cfg["until_step"]:
            self.teacher.close()  # done: no more hooks or kept inputs
            self.teacher = None
            return loss
        t_loss = self.teacher.loss(input_ids)
        self.log("train/teacher_loss", t_loss, batch_size=input_ids.shape[0])
        if step < cfg["warm_start_steps"]:
            return t_loss
        return loss + cfg["weight"] * t_loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._maybe_enter_stage_b()

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Stop on (or skip) a step whose gradients hold NaN/inf, before the optimizer applies them.

        Under a loss scaler (fp16 mixed precision) inf gradients are the scaler's business: it skips
        those steps itself. In DDP the gradients were all-reduced, and the skip decision is reduced
        too, so every rank skips the same steps.
        """
        if getattr(self.trainer.precision_plugin, "scaler", None) is not None:
            return
        bad = first_nonfinite_grad(self.model)
        if self.nonfinite == "raise":
            # sharded gradients: each rank checked its own shards, so all of them must stop when one found one
            anywhere = (is_sharded(self.model)
                        and self.trainer.strategy.reduce_boolean_decision(bad is not None, all=False))
            if bad is not None:
                raise nonfinite_grad_error(bad, self.global_step)
            if anywhere:
                raise FloatingPointError(f"another rank found a NaN or inf gradient at step {self.global_step} "
                                         f"(its error names the parameter); training stops here")
            return
        skip = self.trainer.strategy.reduce_boolean_decision(bad is not None or self._nonfinite_loss, all=False)
        self._nonfinite_loss = False
        if skip:
            optimizer.zero_grad(set_to_none=True)  # no gradient: AdamW leaves weights and moments untouched
            self.nonfinite_skipped += 1
        self.log("train/nonfinite_skipped", float(self.nonfinite_skipped), batch_size=1)

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.stage == "A" and self.hparams.stage_a_tokens is not None:
            check_switch_supported(self.trainer.strategy, self.trainer.world_size)
        datamodule = getattr(self.trainer, "datamodule", None)
        rows = getattr(datamodule, "row_tokens", None)
        if stage == "fit" and callable(rows):
            kinds = getattr(self.model.config, "layer_types", None) or []
            check_window_fits(self.model.rosa_config.window, kinds.count("sliding_attention"), rows())

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "val")

    # ---- optimization -------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        groups = parameter_groups(self.model, self.lr[self.stage], self.hparams.weight_decay, self.stage)
        optimizer = self.optimizer_factory(params=groups)
        if self.scheduler_factory is None:
            return optimizer
        total = self.trainer.estimated_stepping_batches
        total = int(total) if math.isfinite(total) else None
        if total is None:
            raise ValueError("the LR schedule needs a finite run length: set trainer.max_steps or max_epochs")
        # the schedule spans the steps from the start of this stage to the end of the run; stage_started_step comes
        # from the checkpoint on resume (global_step is not restored yet when Lightning builds the optimizers)
        scheduler = self.scheduler_factory(optimizer=optimizer, total_steps=max(1, total - self.stage_started_step))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---- checkpoint state ---------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["rosa_config"] = self.model.rosa_config.to_dict()
        checkpoint["rosa_train_state"] = {"tokens_seen": self.tokens_seen, "stage": self.stage,
                                          "stage_started_step": self.stage_started_step,
                                          "backbone_trained": self.backbone_trained,
                                          "nonfinite_skipped": self.nonfinite_skipped}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        check_layout(saved_rosa_config(checkpoint), self.model.rosa_config,
                     f"checkpoint {getattr(self._trainer, 'ckpt_path', None) or 'ckpt_path'}",
                     self.model.config.num_hidden_layers)
        state = checkpoint.get("rosa_train_state")
        if state is None:
            return
        drop_unused_from_optimizer_state(checkpoint, self.model, state["stage"])
        self.backbone_trained = bool(state.get("backbone_trained", state["stage"] == "B"))
        self.nonfinite_skipped = int(state.get("nonfinite_skipped", 0))
        self.tokens_seen = int(state["tokens_seen"])
        self.stage_started_step = int(state["stage_started_step"])
        if state["stage"] != self.stage:
            self.stage = state["stage"]
            self._apply_stage()


def check_switch_supported(strategy: Any, world_size: int) -> None:
    """Raise ``ValueError`` when ``strategy`` cannot switch from stage A to B within a run: the sharded strategies
    (FSDP, FSDP2, DeepSpeed) fix which parameters train when they wrap the model, and several ranks need DDP."""
    from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy

    sharded = isinstance(strategy, (DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy))
    if sharded or (world_size > 1 and not isinstance(strategy, DDPStrategy)):
        raise ValueError(f"train.stage_a_tokens (the in-run switch from stage A to B) works in one process or "
                         f"with DDP, not with {type(strategy).__name__}; run the two stages as two runs: "
                         f"train.stage=A without train.stage_a_tokens, then train.stage=B "
                         f"model.init_from=<the stage-A checkpoint>")


def _plain(value: Any) -> Any:
    """OmegaConf nodes and dataclasses (RosaConfig) -> dicts / lists / primitives."""
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def teacher_config(cfg: Optional[Mapping]) -> Optional[dict]:
    """Validated ``hash_teacher`` settings with defaults, or None when off (None, or weight 0 and no warm start)."""
    if cfg is None:
        return None
    known = {"weight": 0.0, "warm_start_steps": 0, "until_step": None, "seed": 0}
    unknown = set(cfg) - set(known)
    if unknown:
        raise ValueError(f"model.hash_teacher: unknown keys {sorted(unknown)}; expected a subset of {sorted(known)}")
    out = {**known, **dict(cfg)}
    if isinstance(out["weight"], bool) or not isinstance(out["weight"], (int, float)) or out["weight"] < 0:
        raise ValueError(f"model.hash_teacher.weight must be a number >= 0, got {out['weight']!r}")
    for key in ("warm_start_steps", "seed"):
        if isinstance(out[key], bool) or not isinstance(out[key], int) or out[key] < 0:
            raise ValueError(f"model.hash_teacher.{key} must be an int >= 0, got {out[key]!r}")
    if out["until_step"] is not None and (not isinstance(out["until_step"], int) or out["until_step"] < 0):
        raise ValueError(f"model.hash_teacher.until_step must be null or an int >= 0, got {out['until_step']!r}")
    if out["weight"] == 0 and out["warm_start_steps"] == 0:
        return None
    out["weight"] = float(out["weight"])
    return out


def group_name(name: str, p: torch.nn.Parameter) -> str:
    """The optimizer group of a parameter: ROSA or backbone, matrices (decayed) or vectors (``_no_decay``)."""
    part = "rosa" if is_rosa_parameter(name) else "backbone"
    return part if p.ndim >= 2 else f"{part}_no_decay"


def drop_unused_from_optimizer_state(checkpoint: dict, model: torch.nn.Module, stage: str) -> None:
    """Convert a checkpoint written when unused parameters (``unused_parameters``) were still in the optimizer's
    groups: remove them from the saved groups, so the optimizer state loads into today's groups. They never had a
    gradient, so they hold no state; nothing else changes. A no-op for checkpoints written since."""
    unused = {name for name, _ in unused_parameters(model)}
    if not unused:
        return
    names: dict[str, list[str]] = {}  # the groups as they were built with every parameter of the stage
    for name, p in model.named_parameters():
        if stage == "A" and not is_rosa_parameter(name):
            continue
        names.setdefault(group_name(name, p), []).append(name)
    for opt in checkpoint.get("optimizer_states") or []:
        for group in opt.get("param_groups", []):
            old = names.get(group.get("name"), [])
            if len(group["params"]) != len(old) or not unused.intersection(old):
                continue  # already without them, or groups of another layout (the optimizer reports it)
            dropped = [pid for pid, name in zip(group["params"], old) if name in unused]
            group["params"] = [pid for pid, name in zip(group["params"], old) if name not in unused]
            for pid in dropped:
                opt.get("state", {}).pop(pid, None)


def parameter_groups(model: torch.nn.Module, lr: Mapping, weight_decay: float, stage: str) -> list[dict]:
    """Optimizer groups (docs/method.md §5.3): ROSA matrices / ROSA vectors (e0, e1) / backbone matrices / backbone
    vectors (norms, biases), each with ``lr``, ``min_lr`` (the schedule's floor) and ``name``.

    Only parameters with ``requires_grad`` are included; empty groups are dropped (stage A has no
    backbone groups at all).
    """
    buckets: dict[str, list] = {"rosa": [], "rosa_no_decay": [], "backbone": [], "backbone_no_decay": []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        buckets[group_name(name, p)].append(p)
    groups = []
    for name, params in buckets.items():
        if not params:
            continue
        part = name.split("_")[0]
        groups.append({"params": params, "name": name, "lr": float(lr[part]), "min_lr": float(lr[f"{part}_min"]),
                       "weight_decay": 0.0 if name.endswith("no_decay") else float(weight_decay)})
    if not groups:
        raise ValueError(f"stage {stage}: no trainable parameters")
    return groups


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 20):
    """Per group: linear warmup from ``min_lr`` to ``lr`` over ``warmup_steps``, then cosine to ``min_lr``
    at ``total_steps`` (docs/method.md §5.3). Groups without ``min_lr`` decay to 0.
    """
    def factor(floor: float) -> Callable[[int], float]:
        def f(step: int) -> float:
            if step < warmup_steps:
                return floor + (1.0 - floor) * step / warmup_steps
            progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
        return f

    floors = [g.get("min_lr", 0.0) / g["lr"] if g["lr"] > 0 else 0.0 for g in optimizer.param_groups]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, [factor(fl) for fl in floors])


def build_model(backbone: Any, rosa: Any, *, torch_dtype: Optional[str], attn_implementation: str,
                from_scratch: bool) -> torch.nn.Module:
    """``build_rosa_model`` after a fast availability check of a path / hub id (no hanging retries)."""
    if isinstance(rosa, (Mapping, DictConfig)):
        rosa = RosaConfig.from_dict(OmegaConf.to_container(rosa) if isinstance(rosa, DictConfig) else dict(rosa))
    ref = backbone_reference(backbone)
    if ref is not None:
        spec: Any = resolve_reference(ref, what="backbone", config_key="model.backbone")
    else:
        spec = OmegaConf.to_container(backbone) if isinstance(backbone, DictConfig) else backbone
        from_scratch = True  # a bare config has no weights to load
    dtype = getattr(torch, torch_dtype) if isinstance(torch_dtype, str) else torch_dtype
    model = build_rosa_model(spec, rosa, torch_dtype=dtype, attn_implementation=attn_implementation,
                             from_scratch=from_scratch)
    return model.train()  # from_pretrained returns the model in eval mode


def saved_rosa_config(checkpoint: Mapping) -> Optional[dict]:
    """The ROSA config a Lightning checkpoint was written with (older ones: from its hyperparameters)."""
    if checkpoint.get("rosa_config") is not None:
        return dict(checkpoint["rosa_config"])
    rosa = (checkpoint.get("hyper_parameters") or {}).get("rosa")
    return dict(rosa) if isinstance(rosa, Mapping) else None


def load_initial_weights(model: torch.nn.Module, path: str) -> Optional[bool]:
    """Start from a Lightning checkpoint (``state_dict`` keys under ``model.``) or a saved adapter
    (a ``.safetensors`` file or a directory holding one), after checking its checksum and that its ROSA
    branch layout is the model's (the window and global layers may change). Returns whether the file's
    backbone was trained (None: not recorded)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"model.init_from={path!r} does not exist")
    if p.is_dir() or p.suffix == ".safetensors":
        load_adapter(model, str(p), compare=BRANCH_FIELDS)  # a starting point: the window may change
        return read_adapter_metadata(str(p))["backbone_trained"]
    checkpoint = torch.load(p, map_location="cpu", weights_only=False)
    verify_checkpoint(checkpoint, f"{p} (model.init_from)")
    check_layout(saved_rosa_config(checkpoint), model.rosa_config, f"checkpoint {p} (model.init_from)",
                 model.config.num_hidden_layers, BRANCH_FIELDS)
    train_state = checkpoint.get("rosa_train_state") or {}
    state = checkpoint["state_dict"]
    state = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or missing:
        raise RuntimeError(f"model.init_from={path!r} does not match the model: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
    if not train_state:
        return None
    return bool(train_state.get("backbone_trained", train_state.get("stage") == "B"))
