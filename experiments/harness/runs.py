"""Running the arms of a study: compose the real Hydra config, train, read the logged metrics back.

An arm is an experiment config plus overrides, exactly what ``python train.py experiment=<name> <overrides>``
would run; ``compose`` builds the same config without the command line, with all run outputs under one folder.
``run_pool`` runs arms in worker processes (each with its own torch threads) and respects "after" dependencies,
e.g. a stage-A arm that starts from another arm's checkpoint.
"""
from __future__ import annotations

import csv
import math
import multiprocessing as mp
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from omegaconf import DictConfig, open_dict


def compose(experiment: str, overrides: Sequence[str], output_dir: Path) -> DictConfig:
    """``conf/train.yaml`` with ``experiment=<experiment>`` and ``overrides``; outputs under ``output_dir``."""
    return compose_config("train", [f"experiment={experiment}", *overrides], output_dir)


def compose_config(config_name: str, overrides: Sequence[str], output_dir: Path) -> DictConfig:
    """``conf/<config_name>.yaml`` (``train`` or ``eval``) with ``overrides``, its ``${hydra:...}`` keys resolvable
    and its outputs under ``output_dir``: what the entry point would run, without the command line."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    from rosa_lightning.cli import CONFIG_DIR

    output_dir = Path(output_dir).resolve()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = hydra_compose(config_name=config_name, overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.runtime.cwd = str(Path(CONFIG_DIR).parent)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)  # resolves ${hydra:...} in paths
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def train_or_reuse(cfg: DictConfig, output_dir: Path) -> tuple[dict, Any, float, bool]:
    """``train(cfg)``, or, when ``output_dir`` already holds a finished run of the same length (its
    ``checkpoints/last.ckpt`` at ``trainer.max_steps``), the module rebuilt from that checkpoint.

    Returns (final metrics, the RosaLitModule, training seconds, reused). A reused run's metrics are {} and its
    seconds come from ``train_seconds.txt`` when this function trained it, else from the logged step times
    (mean ``time/step_s`` x steps).
    """
    import hydra
    import torch

    from rosa_lightning.cli import train

    output_dir = Path(output_dir)
    ckpt_path = output_dir / "checkpoints" / "last.ckpt"
    if ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if int(ckpt.get("global_step", -1)) >= int(cfg.trainer.max_steps):
            module = hydra.utils.instantiate(cfg.model)
            module.load_state_dict(ckpt["state_dict"])
            module.on_load_checkpoint(ckpt)
            seconds_file = output_dir / "train_seconds.txt"
            if seconds_file.is_file():
                seconds = float(seconds_file.read_text())
            else:
                _, step_s = curve(read_metrics(output_dir), "time/step_s")
                seconds = sum(step_s) / max(1, len(step_s)) * int(cfg.trainer.max_steps)
            return {}, module.train(), seconds, True
    clock = stopwatch()
    metrics, objects = train(cfg)
    seconds = clock()
    (output_dir / "train_seconds.txt").write_text(f"{seconds:.1f}\n")
    return metrics, objects["model"], seconds, False


def read_metrics(output_dir: Path) -> list[dict[str, float]]:
    """Rows of the CSV logger's ``metrics.csv`` under ``output_dir`` (empty cells dropped, values as floats)."""
    files = sorted(Path(output_dir).glob("csv/version_*/metrics.csv"), key=lambda f: int(f.parent.name[8:]))
    if not files:
        raise FileNotFoundError(f"no csv/version_*/metrics.csv under {output_dir} (run with logger=csv)")
    rows = []
    with open(files[-1], newline="") as f:
        for row in csv.DictReader(f):
            rows.append({k: float(v) for k, v in row.items() if v not in ("", None)})
    return rows


def curve(rows: Sequence[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of ``key`` over the logged rows, in logging order."""
    steps, values = [], []
    for row in rows:
        if key in row and math.isfinite(row[key]):
            steps.append(int(row.get("step", len(steps))))
            values.append(row[key])
    return steps, values


@dataclass
class Job:
    """One unit of work for ``run_pool``: ``fn(**kwargs)`` in a worker, started once every ``after`` job is done."""

    fn: Callable[..., Any]
    kwargs: dict = field(default_factory=dict)
    after: tuple[str, ...] = ()


def run_pool(jobs: dict[str, Job], procs: int = 1, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run ``jobs`` (name -> Job) on ``procs`` spawned worker processes (``procs=1``: in this process).

    Jobs start in the given order as soon as their dependencies are done. A failing job raises here, after the
    running ones finished. Returns name -> the job's return value.
    """
    unknown = {d for j in jobs.values() for d in j.after} - set(jobs)
    if unknown:
        raise ValueError(f"run_pool: unknown dependencies {sorted(unknown)}")
    results: dict[str, Any] = {}
    if procs <= 1:
        for name in _topological(jobs):
            t0 = time.perf_counter()
            results[name] = jobs[name].fn(**jobs[name].kwargs)
            log(f"[{name}] done in {time.perf_counter() - t0:.0f}s")
        return results
    pending = dict(jobs)
    running: dict[Any, tuple[str, float]] = {}
    with ProcessPoolExecutor(max_workers=procs, mp_context=mp.get_context("spawn")) as pool:
        while pending or running:
            for name in [n for n, j in pending.items() if set(j.after) <= set(results)]:
                if len(running) >= procs:
                    break
                job = pending.pop(name)
                running[pool.submit(job.fn, **job.kwargs)] = (name, time.perf_counter())
            if not running:
                raise RuntimeError(f"run_pool: jobs {sorted(pending)} wait on jobs that cannot finish")
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in done:
                name, t0 = running.pop(fut)
                results[name] = fut.result()
                log(f"[{name}] done in {time.perf_counter() - t0:.0f}s")
    return results


def _topological(jobs: dict[str, Job]) -> list[str]:
    order: list[str] = []
    pending = dict(jobs)
    while pending:
        ready = [n for n, j in pending.items() if set(j.after) <= set(order)]
        if not ready:
            raise RuntimeError(f"run_pool: circular dependencies among {sorted(pending)}")
        order.append(ready[0])
        pending.pop(ready[0])
    return order


def check_choices(flag: str, chosen: Sequence[str], known: Sequence[str]) -> None:
    """Exit with a message naming ``flag``, the unknown names and the valid ones, if ``chosen`` has unknown names."""
    unknown = sorted(set(chosen) - set(known))
    if unknown:
        raise SystemExit(f"{flag}: unknown {unknown}; choose from {list(known)}")


def stopwatch() -> Callable[[], float]:
    """A function returning seconds since it was created."""
    t0 = time.perf_counter()
    return lambda: time.perf_counter() - t0


def maybe_float(x: Optional[float]) -> Optional[float]:
    return None if x is None or not math.isfinite(float(x)) else float(x)
