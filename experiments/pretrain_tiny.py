"""Pretrain the tiny base models of scale=mini (RoBERTa MLM, T5 span corruption, LLaMA causal LM).

    python experiments/pretrain_tiny.py --model all --minutes 13 --threads 1 [--out models/]

Each model is built from conf/model/<name>.yaml's `arch` through lorafa.models (vocabulary and
special ids from the models/tiny-bpe tokenizer), trained with pretraining.py's objectives on
corpus.py's text for a wall-clock budget (pretrain_loop.py), and saved to <out>/<name>/ (float16
safetensors, config, tokenizer, training_log.jsonl, README.md with the exact command).
tiny-t5's tokenizer is tiny-bpe plus 32 sentinel tokens <extra_id_0..31> (ids 8192..8223),
saved with the checkpoint. The last 10% of the WikiText-2 test lines are held out from
training and give the reported eval loss.
Set `path: models/<name>` in conf/model/<name>.yaml to use a checkpoint.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

NAMES = ("tiny-roberta", "tiny-t5", "tiny-llama")
# Per-model defaults (lr, batch); all use 128-token blocks.
DEFAULTS = {"tiny-roberta": {"lr": 2e-3, "batch_size": 16},
            "tiny-t5": {"lr": 1e-3, "batch_size": 32},
            "tiny-llama": {"lr": 1e-3, "batch_size": 16}}
HELD_OUT_FRACTION = 0.1


def model_spec(name: str):
    """ModelSpec of conf/model/<name>.yaml, forced to build from `arch`: the weights are what
    pretraining makes, so its `path` (where they will be saved) is not read."""
    import dataclasses

    from lorafa.models import load_model_spec

    spec = load_model_spec(name)
    return dataclasses.replace(spec, hub_id=None, path=None, tokenizer=spec.tokenizer or "models/tiny-bpe",
                               arch=dict(spec.arch))


def build(name: str, seed: int = 0, dropout: float | None = 0.0):
    """(model with its pretraining head, tokenizer, objective, config restore) for one tiny model.

    ``dropout`` replaces every dropout rate of the arch during pretraining (short pretraining
    underfits; dropout only slows it); the returned dict holds the YAML's rates, written back into
    the config before saving so fine-tuning uses them. None keeps the YAML's rates.
    """
    import torch
    from transformers import AutoModelForMaskedLM

    from lorafa.models import load_model, load_tokenizer
    from pretraining import OBJECTIVES, Objective, add_sentinels

    spec = model_spec(name)
    spec.check_files()
    restore = {k: v for k, v in spec.arch.items() if "dropout" in k and isinstance(v, (int, float))}
    if dropout is not None:
        spec.arch.update({k: dropout for k in restore})
    tokenizer = load_tokenizer(spec)
    kind = OBJECTIVES[spec.family]
    if kind == "span":
        add_sentinels(tokenizer)  # before the model, so vocab_size covers them
    torch.manual_seed(seed)
    if spec.family == "encoder":
        # lorafa.models builds the config (vocab and special ids from the tokenizer); MLM head on it.
        config = load_model(spec, "classification", tokenizer, num_labels=2).config
        config.architectures = None
        torch.manual_seed(seed)
        model = AutoModelForMaskedLM.from_config(config)
    else:
        model = load_model(spec, "seq2seq" if spec.family == "seq2seq" else "instruction", tokenizer)
    return model, tokenizer, Objective(kind, tokenizer), restore


def corpus_split(tokenizer, objective, block: int):
    """Train blocks from the corpus minus the held-out WikiText-2 test lines; eval blocks from those."""
    from corpus import iter_corpus
    from lorafa.paths import data_dir
    from pretraining import block_layout, pack_blocks, tokenize_lines

    test = [ln.strip() for ln in (data_dir() / "text/wikitext-2/test.txt").read_text(encoding="utf-8").splitlines()
            if ln.strip()]
    held = test[int(len(test) * (1 - HELD_OUT_FRACTION)):]
    held_set = set(held)
    lines = [ln for ln in iter_corpus() if ln not in held_set]
    layout = block_layout(objective.kind, tokenizer)
    sep = tokenizer.eos_token_id
    train = pack_blocks(tokenize_lines(tokenizer, lines), block, sep, **layout)
    held_blocks = pack_blocks(tokenize_lines(tokenizer, held), block, sep, **layout)
    return train, held_blocks


def run_one(name: str, args, command: str) -> dict:
    from pretrain_loop import PretrainConfig, pretrain

    t0 = time.time()
    model, tokenizer, objective, restore = build(name, args.seed, None if args.keep_dropout else 0.0)
    train, held = corpus_split(tokenizer, objective, args.block)
    held = held[: args.eval_blocks]
    prep = time.time() - t0
    print(f"[{name}] {sum(p.numel() for p in model.parameters()):,} parameters; {len(train):,} train blocks, "
          f"{len(held)} held-out blocks of {args.block} tokens; data ready in {prep:.0f}s", flush=True)
    d = DEFAULTS[name]
    cfg = PretrainConfig(minutes=args.minutes, max_steps=args.max_steps, batch_size=args.batch_size or d["batch_size"],
                         lr=args.lr or d["lr"], warmup_steps=args.warmup_steps, log_every=args.log_every,
                         seed=args.seed, save_dtype=args.save_dtype)
    extra = ("\nDropout: none during pretraining; the saved config keeps conf/model's rates "
             f"({restore}) for fine-tuning.\n" if restore and not args.keep_dropout else "")
    if objective.kind == "span":
        extra += ("\nTokenizer: models/tiny-bpe plus 32 sentinel tokens `<extra_id_0>`..`<extra_id_31>` "
                 "(ids 8192-8223, added as special tokens), saved here; the model's vocabulary covers them.\n")
    summary = pretrain(model, tokenizer, objective, train, held, args.out / name, cfg, command=command,
                       threads=args.threads, resume=args.resume, config_overrides=restore, extra_readme=extra,
                       progress=not args.no_progress)
    print(f"[{name}] done: {summary}", flush=True)
    return summary


def check_order(path: Path, block: int, eval_blocks: int) -> dict:
    import torch
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from pretraining import Objective, word_order_check

    if not (path / "config.json").is_file():
        raise SystemExit(f"--check-order: no checkpoint at {path} (expected {path / 'config.json'})")
    model = AutoModelForMaskedLM.from_pretrained(str(path), dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    _, held = corpus_split(tokenizer, Objective("mlm", tokenizer), block)
    result = word_order_check(model, tokenizer, held[:eval_blocks])
    print(f"{path}: held-out MLM loss {result['loss']:.4f}; with the unmasked context shuffled "
          f"{result['shuffled_context_loss']:.4f} ({len(held[:eval_blocks])} blocks of {block} tokens)")
    return result


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=NAMES + ("all",), default="all")
    ap.add_argument("--minutes", type=float, default=13.0, help="wall-clock training budget per model")
    ap.add_argument("--out", type=Path, default=ROOT / "models")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--block", type=int, default=128, help="tokens per packed block")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--warmup-steps", type=int, default=100)
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--max-steps", type=int, default=None, help="stop earlier than --minutes")
    ap.add_argument("--eval-blocks", type=int, default=128)
    ap.add_argument("--save-dtype", choices=("float16", "bfloat16", "float32"), default="float16")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resume", action="store_true", help="continue from <out>/<name>.partial/resume.pt if present")
    ap.add_argument("--keep-dropout", action="store_true", help="pretrain with the YAML's dropout (default: none)")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--check-order", type=Path, metavar="DIR",
                    help="train nothing: print a tiny-roberta checkpoint's held-out MLM loss as is and with the "
                         "unmasked context shuffled (equal losses: the model reads a bag of words)")
    args = ap.parse_args(argv)
    if args.check_order:
        return check_order(args.check_order, args.block, args.eval_blocks)
    if args.minutes <= 0:
        raise ValueError(f"--minutes={args.minutes} must be positive")
    if args.threads < 1:
        raise ValueError(f"--threads={args.threads} must be >= 1")
    os.environ.setdefault("RAYON_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    try:
        out_arg = os.path.relpath(args.out, ROOT)
    except ValueError:
        out_arg = str(args.out)
    command = "python experiments/pretrain_tiny.py " + " ".join(
        shlex.quote(a) for a in ([*(argv if argv is not None else sys.argv[1:])]))
    names = NAMES if args.model == "all" else (args.model,)
    for name in names:
        run_one(name, args, command.replace(f"--model {args.model}", f"--model {name}") if args.model == "all"
                else command)
    print(f"checkpoints under {out_arg}/: " + ", ".join(names))


if __name__ == "__main__":
    main()
