"""The pretraining loop of the tiny base models: a wall-clock budget, resumable, saved atomically.

A model pretrained for minutes on a CPU is defined by its time budget rather than a step
count, so the learning rate decays over the budget; a run can resume from its last state, and
the finished checkpoint replaces the previous one only once it is complete. No Hydra and no
file layout beyond the output folder it is given; experiments/pretrain_tiny.py is the command line.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from pretraining import Objective, evaluate


@dataclass
class PretrainConfig:
    minutes: float = 12.0
    max_steps: int | None = None  # stop earlier than the time budget (tests)
    batch_size: int = 32
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    log_every: int = 50
    checkpoint_minutes: float = 3.0  # resume state written this often
    seed: int = 0
    save_dtype: str = "float16"


@dataclass
class Progress:
    """Where a run stands: kept in resume.pt (with the weights, optimizer and random states) so a
    resumed run continues the same data order and time budget."""

    step: int = 0
    epoch: int = 0
    cursor: int = 0  # next block of this epoch's permutation
    elapsed: float = 0.0  # training seconds spent so far, over every process of the run
    init_eval: float | None = None


@dataclass
class Randomness:
    """The two random streams of the objectives (torch: MLM masks; numpy: T5 spans)."""

    gen: torch.Generator
    rng: np.random.Generator

    @classmethod
    def seeded(cls, seed: int) -> "Randomness":
        return cls(torch.Generator().manual_seed(seed), np.random.default_rng(seed))


def lr_factor(step: int, progress: float, cfg: PretrainConfig) -> float:
    """Linear warmup over steps, then cosine decay to min_lr_ratio over the *time* budget."""
    warm = min(1.0, (step + 1) / max(cfg.warmup_steps, 1))
    progress = min(max(progress, 0.0), 1.0)
    return warm * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def machine_description(threads: int) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {threads} torch thread(s), {platform.system()} {platform.release()}, torch {torch.__version__}"


def pretrain(model, tokenizer, objective: Objective, train_blocks: torch.Tensor, eval_blocks: torch.Tensor,
             out: Path, cfg: PretrainConfig, *, command: str = "", threads: int = 1, resume: bool = False,
             extra_readme: str = "", progress: bool = True, config_overrides: dict | None = None) -> dict:
    """Train ``model`` until the time budget (or max_steps) is spent, then save it to ``out``.

    Work happens in ``<out>.partial/`` (training_log.jsonl, resume.pt); the finished checkpoint
    (safetensors in ``cfg.save_dtype``, config, tokenizer, training log, README.md) is written
    there and then renamed to ``out``, so a crash never leaves a half-written checkpoint.
    With ``resume=True`` a run continues from ``<out>.partial/resume.pt`` if one exists.
    ``config_overrides`` are set on model.config before saving (e.g. the fine-tuning dropout).
    """
    out = Path(out)
    work = out.with_name(out.name + ".partial")
    torch.manual_seed(cfg.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    random = Randomness.seeded(cfg.seed)
    state = _start(work, model, optimizer, random, resume)
    if state.init_eval is None:
        state.init_eval = evaluate(model, objective, eval_blocks)
        _log(work, {"step": 0, "elapsed_s": 0.0, "eval_loss": state.init_eval, "note": "random init"})
    last_loss = _train(model, objective, optimizer, train_blocks, cfg, state, random, work, progress)
    summary = {"step": state.step, "epoch": state.epoch, "elapsed_s": round(state.elapsed, 1),
               "final_train_loss": round(last_loss, 4),
               "eval_loss": round(evaluate(model, objective, eval_blocks), 4),
               "init_eval_loss": round(state.init_eval, 4),
               "tokens": state.step * cfg.batch_size * train_blocks.shape[1], "note": "final"}
    _log(work, summary)
    n_params = _save(model, tokenizer, work, cfg.save_dtype, config_overrides)
    (work / "README.md").write_text(_readme(out.name, command, summary, cfg, n_params, objective.kind,
                                            train_blocks, eval_blocks, threads, extra_readme))
    _publish(work, out)
    summary["n_params"] = n_params
    return summary


def _start(work: Path, model, optimizer, random: Randomness, resume: bool) -> Progress:
    """A fresh ``work`` folder, or with ``resume`` the state of the run that left resume.pt there."""
    state_path = work / "resume.pt"
    if resume and state_path.is_file():
        saved = torch.load(state_path, weights_only=False)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        random.gen.set_state(saved["gen"])
        random.rng.bit_generator.state = saved["rng"]
        return Progress(**{k: saved[k] for k in ("step", "epoch", "cursor", "elapsed", "init_eval")})
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    return Progress()


def _train(model, objective: Objective, optimizer, blocks: torch.Tensor, cfg: PretrainConfig, state: Progress,
           random: Randomness, work: Path, progress: bool) -> float:
    """Optimizer steps until the time budget or max_steps is spent (``state`` advances); the mean
    training loss of the last logging window."""
    from tqdm.auto import tqdm

    budget_s = cfg.minutes * 60.0
    perm = _epoch_order(len(blocks), cfg.seed, state.epoch)
    model.train()
    before, t0 = state.elapsed, time.time()
    last_ckpt = t0
    window: list[float] = []
    last_loss = float("nan")
    bar = tqdm(total=int(budget_s), unit="s", desc=f"pretrain {work.name.removesuffix('.partial')}",
               disable=not progress, mininterval=5.0, initial=int(before))
    while True:
        elapsed = before + time.time() - t0
        if elapsed >= budget_s or (cfg.max_steps is not None and state.step >= cfg.max_steps):
            break
        if state.cursor + cfg.batch_size > len(blocks):
            state.epoch, state.cursor = state.epoch + 1, 0
            perm = _epoch_order(len(blocks), cfg.seed, state.epoch)
        batch = blocks[perm[state.cursor:state.cursor + cfg.batch_size]]
        state.cursor += cfg.batch_size
        lr = cfg.lr * lr_factor(state.step, elapsed / budget_s, cfg)
        window.append(_step(model, objective, optimizer, batch, lr, cfg.grad_clip, random))
        state.step += 1
        if state.step % cfg.log_every == 0:
            last_loss, window = sum(window) / len(window), []
            _log(work, {"step": state.step, "epoch": state.epoch, "elapsed_s": round(elapsed, 1),
                        "loss": round(last_loss, 4), "lr": lr,
                        "tokens": state.step * cfg.batch_size * blocks.shape[1]})
            bar.set_postfix(step=state.step, loss=f"{last_loss:.3f}", refresh=False)
        bar.update(int(elapsed) - bar.n)
        if time.time() - last_ckpt >= cfg.checkpoint_minutes * 60:
            state.elapsed = before + time.time() - t0
            _save_resume_state(work / "resume.pt", model, optimizer, state, random)
            last_ckpt = time.time()
    bar.close()
    state.elapsed = before + time.time() - t0
    return sum(window) / len(window) if window else last_loss


def _epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The block order of one epoch, a function of (seed, epoch) alone so a resumed run keeps it."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + epoch))


def _step(model, objective: Objective, optimizer, batch: torch.Tensor, lr: float, grad_clip: float,
          random: Randomness) -> float:
    """One optimizer step at learning rate ``lr``; the batch's loss."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss = objective.loss(model, batch, generator=random.gen, rng=random.rng)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return loss.item()


def _log(work: Path, record: dict) -> None:
    with (work / "training_log.jsonl").open("a") as f:
        f.write(json.dumps(record) + "\n")


def _save_resume_state(path: Path, model, optimizer, state: Progress, random: Randomness) -> None:
    """resume.pt, written atomically: a crash while saving keeps the previous one."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), **asdict(state),
                "gen": random.gen.get_state(), "rng": random.rng.bit_generator.state}, tmp)
    os.replace(tmp, path)


def _save(model, tokenizer, work: Path, dtype: str, config_overrides: dict | None) -> int:
    """The checkpoint into ``work`` (resume.pt removed); its number of parameters.

    Half precision keeps the three checkpoints within the 20 MB budget.
    """
    for key, value in (config_overrides or {}).items():
        setattr(model.config, key, value)
    model.to(getattr(torch, dtype))
    model.save_pretrained(str(work))
    tokenizer.save_pretrained(str(work))
    (work / "resume.pt").unlink(missing_ok=True)
    return sum(p.numel() for p in model.parameters())


def _publish(work: Path, out: Path) -> None:
    """Rename the finished ``work`` folder to ``out``; the previous checkpoint is removed only after."""
    old = out.with_name(out.name + ".old")
    if out.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(out, old)
    os.replace(work, out)
    if old.exists():
        shutil.rmtree(old)


def _readme(name, command, s, cfg, n_params, kind, train_blocks, eval_blocks, threads, extra) -> str:
    objective = {"mlm": "masked LM (15% of positions; 80/10/10 mask/random/keep)",
                 "span": "T5 span corruption (noise density 0.15, mean span 3, sentinels <extra_id_i>)",
                 "clm": "causal LM (next-token prediction)"}[kind]
    return f"""# {name}

A tiny base model for the mini scale of lorafa, pretrained by `experiments/pretrain_tiny.py`
with the {objective} objective on `iter_corpus()` of `experiments/corpus.py` (WikiText-2, Tiny Shakespeare
and the unlabeled sentences of the task training files), packed into {train_blocks.shape[1]}-token blocks.
The last 10% of the WikiText-2 test lines are held out from pretraining and used for the eval loss.

Regenerate (`make base-models` runs the same script):

```
{command}
```

| | |
|---|---|
| parameters | {n_params:,} (saved as {cfg.save_dtype} safetensors) |
| wall time | {s['elapsed_s'] / 60:.1f} min ({s['elapsed_s']} s) |
| steps | {s['step']:,} (batch {cfg.batch_size} x {train_blocks.shape[1]} tokens; {s['tokens']:,} tokens; {s['epoch'] + 1} pass(es) over {len(train_blocks):,} blocks) |
| optimizer | AdamW lr {cfg.lr:g}, betas (0.9, 0.98), weight decay {cfg.weight_decay:g}, {cfg.warmup_steps} warmup steps, cosine decay to {cfg.min_lr_ratio:g}x over the time budget, grad clip {cfg.grad_clip:g} |
| final train loss | {s['final_train_loss']} (mean of the last logging window) |
| held-out loss | {s['eval_loss']} ({len(eval_blocks)} blocks of held-out WikiText-2 test lines; random init: {s['init_eval_loss']}) |
| machine | {machine_description(threads)} |
| date | {time.strftime('%Y-%m-%d %H:%M %Z')} |

`training_log.jsonl` has the loss every {cfg.log_every} steps. Load with `from_pretrained` like any hub
model (the config's dtype is {cfg.save_dtype}; lorafa loads in float32 by default).
{extra}"""
