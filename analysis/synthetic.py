"""Synthetic run records for every table and figure: for tests and for previewing layouts.

    python -m analysis.synthetic DIR   # writes DIR/synthetic/runs.jsonl; then
    python -m analysis.figures --root DIR --scale synthetic

The numbers are made up (deterministic), shaped like the paper's; never mix them with real results.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from lorafa.memory.report import GIB
from lorafa.results import RunRecord, write_record


def _memory(batch, method, *, weights=13.5, act_per_sample=3.4, flash=False, layers_frac=1.0, r=64):
    """A toy LLaMA2-7B-like memory model (bytes): LoRA stores X in every adapted layer, LoRA-FA only XA."""
    act = act_per_sample * batch * (0.75 if flash else 1.0)
    lora_x = 0.25 * act_per_sample * batch * layers_frac if method == "lora" else 0.0
    states = 0.16 * r / 64 * (2 if method == "lora" else 1)
    return (weights + states + act + lora_x) * GIB


def _glue(add, rng) -> None:
    """Table 2 and Figure 4: GLUE on roberta-base, 2 lrs x 3 seeds; fig4 with eval histories."""
    glue = {"glue/mrpc": ("accuracy", 0.89), "glue/cola": ("mcc", 0.62), "glue/qnli": ("accuracy", 0.92),
            "glue/rte": ("accuracy", 0.77), "glue/sst2": ("accuracy", 0.94), "glue/stsb": ("pearson", 0.90),
            "glue/mnli": (None, 0.87), "glue/qqp": ("accuracy", 0.90)}
    tps = {"full_ft": 124_647_170, "prompt_tuning": 1_200_000, "lora": 2_400_000, "lora_fa": 1_800_000}
    for method, shift in (("full_ft", 0.0), ("prompt_tuning", -0.2), ("lora", -0.003), ("lora_fa", 0.0)):
        for task, (key, level) in glue.items():
            for lr, bonus in ((1e-4, 0.0), (5e-4, -0.02)):
                for s in range(3):
                    v = float(np.clip(level + shift + bonus + rng.normal(0, 0.004), 0, 1))
                    m = {"accuracy_matched": v, "accuracy_mismatched": v - 0.002} if key is None else {key: v}
                    add(experiment="table2", model="roberta-base", task=task, method=method, r=8, alpha=16,
                        lr=lr, seed=s, metrics=m, trainable_params=tps[method])
    for method, speed in (("full_ft", 12.0), ("lora", 8.0), ("lora_fa", 8.5)):
        for task, key, level in (("glue/cola", "mcc", 0.62), ("glue/sst2", "accuracy", 0.94)):
            for s in range(2):
                hist = [{"step": t, "epoch": t / 40, key: float(level * (1 - np.exp(-t / speed)) + rng.normal(0, 0.01))}
                        for t in range(0, 81, 5)]
                add(experiment="fig4", model="roberta-base", task=task, method=method, r=8, lr=4e-4, seed=s,
                    metrics={key: hist[-1][key]}, eval_history=hist)


def _t5_and_llama(add, rng) -> None:
    """Tables 3 and 4: T5 on WMT16 En-Ro, LLaMA-7B on MMLU."""
    # Table 3: T5 on WMT16
    for model, scale in (("t5-small", 27.0), ("t5-base", 33.0)):
        for method, tp in (("full_ft", 60e6), ("lora", 0.4e6), ("lora_fa", 0.2e6)):
            for lr in (1e-4, 1e-3):
                add(experiment="table3", model=model, task="wmt16_en_ro", method=method, r=8, lr=lr, seed=0,
                    metrics={"bleu": scale + rng.normal(0, 0.3) - (lr == 1e-3), "rougeL": scale + 12.5},
                    trainable_params=int(tp))

    # Table 4: LLaMA-7B MMLU; the base model is task "mmlu"
    add(experiment="table4", model="llama-7b", task="mmlu", method="base", metrics={"mmlu_accuracy": 0.351})
    for data, gain in (("alpaca", 0.02), ("flanv2", 0.09)):
        for method, tp in (("full_ft", 6426.3e6), ("lora_qv", 16.8e6), ("lora", 152.5e6), ("lora_fa", 83e6)):
            add(experiment="table4", model="llama-7b", task=data, method=method, r=64, lr=2e-4, seed=0,
                metrics={"mmlu_accuracy": 0.351 + gain * (0.3 if method == "lora_qv" else 1)},
                trainable_params=int(tp))


def _table5(add, rng) -> None:
    """Table 5: peak memory, simulated; LLaMA full_ft runs out of memory."""
    for model, base in (("roberta-base", 9.0), ("t5-small", 30.0), ("llama-7b", 60.0)):
        for method, factor in (("full_ft", 1.05), ("lora", 1.0), ("lora_fa", 0.78)):
            status = "oom" if model == "llama-7b" and method == "full_ft" else "ok"
            add(experiment="table5", model=model, task="memory", method=method,
                r=None if method == "full_ft" else (64 if model == "llama-7b" else 8), batch_size=16,
                status=status, peak_memory_bytes=None if status == "oom" else int(base * factor * GIB),
                memory_source="simulated", error="CUDA out of memory" if status == "oom" else None)


def _sensitivity(add, rng) -> None:
    """Tables 6 and 7: lr sweeps on MRPC."""
    lrs = [1e-5, 3e-5, 5e-5, 1e-4, 3e-4, 5e-4, 1e-3]
    for init, best in (("kaiming_uniform", 5e-5), ("all_one", 3e-4), ("std_normal", 5e-5)):
        for lr in lrs:
            for s in range(2):
                acc = 0.90 - 0.04 * abs(np.log10(lr / best)) + rng.normal(0, 0.002)
                add(experiment="table6", model="roberta-base", task="glue/mrpc", method="lora_fa", r=8, alpha=16,
                    lr=lr, init_a=init, seed=s, metrics={"accuracy": float(acc)},
                    status="diverged" if lr == 1e-3 and init == "all_one" else "ok")
    for alpha in (1, 8, 32, 128):
        best = 3e-3 / alpha ** 0.5
        for lr in lrs:
            acc = 0.73 + 0.17 * min(alpha, 32) / 32 - 0.05 * abs(np.log10(lr / best))
            add(experiment="table7", model="roberta-base", task="glue/mrpc", method="lora_fa", r=8, alpha=alpha,
                lr=lr, seed=0, metrics={"accuracy": float(acc)})


def _figure2(add, rng) -> None:
    """Figure 2: memory (simulated, LLaMA2-7B)."""
    for method in ("lora", "lora_fa"):
        for opt, options in (("none", {}), ("flash", {"attn_implementation": "flash_attention_2"}),
                             ("qlora", {"quantization": "nf4"}), ("zero", {"zero_shards": 8})):
            for b in (1, 2, 4, 8, 16, 32):
                mem = _memory(b, method, flash=opt == "flash", weights={"qlora": 4.0, "zero": 1.7}.get(opt, 13.5))
                status = "oom" if mem > 80 * GIB else "ok"
                add(experiment="fig2a", model="llama2-7b", task="memory", method=method, r=64, batch_size=b,
                    seq_len=1024, status=status, peak_memory_bytes=None if status == "oom" else int(mem),
                    memory_source="simulated", options=options)
        for n in (32, 64, 128, 224):
            mem = _memory(8, method, layers_frac=n / 224, act_per_sample=3.0)
            add(experiment="fig2b", model="llama2-7b", task="memory", method=method, r=64, batch_size=8,
                seq_len=1024, status="oom" if mem > 40 * GIB else "ok",
                peak_memory_bytes=int(mem) if mem <= 40 * GIB else None, memory_source="simulated",
                options={"num_adapted_layers": n})
        for r in (1, 2, 4, 8, 16, 32, 64, 128):
            add(experiment="fig2c", model="llama-7b", task="memory", method=method, r=r, batch_size=32,
                seq_len=128, peak_memory_bytes=int(_memory(4, method, r=r)), memory_source="simulated")


def _figures_3_5_6(add, rng) -> None:
    """Figures 3, 5 and 6."""
    # Figure 3: breakdown
    for method, act in (("lora", 55.58), ("lora_fa", 42.48)):
        parts = {"weights": 13.5 * GIB, "gradients": 0.3 * GIB * (2 if method == "lora" else 1),
                 "optimizer_states": 1.2 * GIB * (2 if method == "lora" else 1), "activations": act * GIB,
                 "other": 1.5 * GIB}
        add(experiment="fig3", model="llama2-7b", task="memory", method=method, r=64, batch_size=16, seq_len=1024,
            memory_breakdown={k: int(v) for k, v in parts.items()}, peak_memory_bytes=int(sum(parts.values())),
            memory_source="simulated")
    # Figure 5: memory and speed vs batch size
    for method, options in (("lora", {}), ("lora_fa", {}), ("lora_fa", {"attn_implementation": "flash_attention_2"})):
        for b in (1, 2, 4, 8, 16, 32):
            flash = bool(options)
            step = (0.3 + 0.1 * b) * (0.8 if flash else 1.0) * (0.97 if method == "lora_fa" else 1.0)
            add(experiment="fig5", model="llama2-7b", task="memory", method=method, r=64, batch_size=b,
                seq_len=1024, peak_memory_bytes=int(_memory(b, method, flash=flash, act_per_sample=1.0)),
                memory_source="simulated", step_time_s=step, tokens_per_s=b * 1024 / step, options=options)
    # Figure 6: rank x lr grid on MRPC
    for method in ("lora", "lora_fa"):
        for r in (1, 2, 4, 8, 16, 32):
            for lr in (5e-5, 1e-4, 5e-4, 1e-3, 5e-3):
                diverged = r * lr > 0.05
                acc = 0.90 - 0.05 * abs(np.log10(r * lr / 4e-3)) - (0.01 if method == "lora_fa" and r < 2 else 0)
                if method == "lora" and r == 32 and lr == 5e-5:
                    continue  # a cell not run
                add(experiment="fig6", model="roberta-base", task="glue/mrpc", method=method, r=r, lr=lr, seed=0,
                    status="diverged" if diverged else "ok", metrics={} if diverged else {"accuracy": float(acc)})


def records(seed: int = 0) -> list[RunRecord]:
    rng = np.random.default_rng(seed)
    out: list[RunRecord] = []

    def add(**kw):
        out.append(RunRecord(run_id=f"syn{len(out):04d}", scale="synthetic", **kw))

    # one random stream, drawn in this order, so the records are the same on every call
    _glue(add, rng)
    _t5_and_llama(add, rng)
    _table5(add, rng)
    _sensitivity(add, rng)
    _figure2(add, rng)
    _figures_3_5_6(add, rng)
    return out


def write(root: Path, seed: int = 0) -> Path:
    for rec in records(seed):
        write_record(rec, root)
    return root


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "synthetic-results") / "synthetic"
    print(f"wrote {len(records())} records to {write(target)}")
