"""Multi-process training on CPU (gloo): DDP through torchrun and the Trainer, FSDP2 on a LoRA-FA
model, and the accelerate / DeepSpeed configs under conf/accelerate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from lorafa.recipe import run
from tests.test_pipeline import ROOT, spec_for

# Model dropout off, so that one process and two see the same function; only the adapter's varies.
TINY = ["model=tiny-roberta", "model.path=null", "model.arch.hidden_size=32", "model.arch.num_hidden_layers=1",
        "model.arch.intermediate_size=64", "model.arch.hidden_dropout_prob=0.0",
        "model.arch.attention_probs_dropout_prob=0.0"]
BASE = ["task=glue/mrpc", *TINY, "logger=none", "data.max_train_samples=64", "data.max_eval_samples=16",
        "data.max_length=48", "trainer.logging_steps=1", "trainer.eval_batch_size=16"]
EQUAL = [*BASE, "method=lora_fa", "method.adapter.dropout=0.0", "trainer.max_steps=4", "trainer.lr=5e-3"]
DROPOUT = [*BASE, "method=lora_fa", "method.adapter.dropout=0.1", "trainer.max_steps=16", "trainer.batch_size=4",
           "trainer.lr=1e-2", "trainer.warmup_ratio=0.0"]


class Dump(TrainerCallback):
    """Rank 0 saves the trainable parameters and the logged training losses at the end."""

    def __init__(self, out: Path, name: str):
        self.out, self.name = out, name

    def on_train_end(self, args, state, control, model=None, **kw):
        if int(os.environ.get("RANK", 0)) == 0:
            torch.save({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad},
                       self.out / f"{self.name}.pt")
            losses = [h["loss"] for h in state.log_history if "loss" in h]
            (self.out / f"{self.name}.json").write_text(json.dumps(losses))


WORKER = """
import json
from pathlib import Path
from hydra import compose, initialize_config_dir
import tests.test_distributed as td
from tests.test_pipeline import spec_for
from lorafa.recipe import run
out = Path({out!r})
for name, overrides in json.loads({runs!r}).items():
    spec, _ = spec_for(out / "results", overrides)
    run(spec, callbacks=[td.Dump(out, name)])
"""


def torchrun(script: str, tmp_path: Path, nproc: int = 2) -> subprocess.CompletedProcess:
    path = tmp_path / "worker.py"
    path.write_text(script)
    # The import path pytest gives the tests (pyproject.toml), so the workers import tests.* and run.py.
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "experiments")]))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc_per_node={nproc}", str(path)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory):
    """One torchrun launch, 2 processes x per-device batch 4: the dropout-0 run and the dropout-0.1 run."""
    out = tmp_path_factory.mktemp("ddp")
    runs = {"equal": [*EQUAL, "trainer.batch_size=4"], "dropout": DROPOUT}
    torchrun(WORKER.format(out=str(out), runs=json.dumps(runs)), out)
    return out


def test_two_processes_train_the_same_lora_fa_adapter_as_one_with_the_same_global_batch(two_process_runs, tmp_path):
    run(spec_for(tmp_path, [*EQUAL, "trainer.batch_size=8"])[0], callbacks=[Dump(tmp_path, "one")])
    one, two = torch.load(tmp_path / "one.pt"), torch.load(two_process_runs / "equal.pt")
    assert set(one) == set(two) and any("lora_B" in n for n in one)
    for name in one:
        assert torch.allclose(one[name], two[name], atol=1e-5, rtol=0), name
    assert any(one[n].abs().max() > 1e-3 for n in one if "lora_B" in n)  # B moved off zero: it trained
    # the loss the Trainer logs is the global mean in both (not multiplied by the world size)
    assert json.loads((two_process_runs / "equal.json").read_text()) == pytest.approx(
        json.loads((tmp_path / "one.json").read_text()), abs=1e-5)


def test_two_process_lora_fa_with_dropout_learns(two_process_runs):
    losses = json.loads((two_process_runs / "dropout.json").read_text())
    assert len(losses) == 16
    assert sum(losses[-8:]) / 8 < sum(losses[:2]) / 2 - 0.03


def test_rank_zero_alone_writes_the_records(two_process_runs):
    lines = (two_process_runs / "results" / "runs.jsonl").read_text().splitlines()
    records = [json.loads(x) for x in lines]
    assert len(records) == 2 and {r["status"] for r in records} == {"ok"}
    assert {r["options"]["world_size"] for r in records} == {2}
    assert not (two_process_runs / "results" / "checkpoints").exists()


FSDP_WORKER = textwrap.dedent("""
    import torch, torch.distributed as dist
    from torch.distributed.fsdp import fully_shard
    from tests.conftest import tiny_roberta
    from lorafa import AdapterConfig, add_adapters
    from lorafa.adapters import LoraLayer

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()

    def build(dropout):
        model = tiny_roberta()
        add_adapters(model, AdapterConfig(method="lora_fa", r=4, alpha=8, dropout=dropout))
        with torch.no_grad():  # B off zero, so that the gradient through A (dx) matters too
            for module in model.modules():
                if isinstance(module, LoraLayer):
                    module.lora_B.weight.normal_(0, 0.1)
        return model.train()

    g = torch.Generator().manual_seed(1)
    ids, labels = torch.randint(3, 120, (8, 12), generator=g), torch.randint(0, 2, (8,), generator=g)
    mine = slice(4 * rank, 4 * rank + 4)
    report = {}
    for mode in ("blocks", "frozen_only"):
        for dropout in (0.0, 0.1):
            # reference: the unsharded model on this rank's half batch, gradients averaged over ranks (DDP)
            ref = build(dropout)
            torch.manual_seed(123)  # the dropout seeds LoRA-FA draws: the same in both models
            ref(input_ids=ids[mine], labels=labels[mine]).loss.backward()
            expected = {}
            for n, p in ref.named_parameters():
                if p.requires_grad:
                    dist.all_reduce(p.grad)
                    expected[n] = p.grad / world
            model = build(dropout)
            if mode == "blocks":  # FSDP's usual wrapping: every parameter sharded, adapters too
                for layer in model.roberta.encoder.layer:
                    fully_shard(layer)
                fully_shard(model)
            else:  # the paper's weight sharding: frozen base weights sharded, adapters replicated
                for module in list(model.modules()):
                    if isinstance(module, LoraLayer):
                        fully_shard(module.base_layer)
                fully_shard(model.roberta.embeddings)
            torch.manual_seed(123)
            model(input_ids=ids[mine], labels=labels[mine]).loss.backward()
            worst, sharded_frozen, sharded_trainable = 0.0, 0, 0
            for n, p in model.named_parameters():
                is_dtensor = hasattr(p, "full_tensor")
                if not p.requires_grad:
                    sharded_frozen += is_dtensor
                    continue
                sharded_trainable += is_dtensor
                grad = p.grad.full_tensor() if is_dtensor else p.grad  # FSDP reduced it already
                if not is_dtensor:  # replicated adapter: data-parallel all-reduce
                    dist.all_reduce(grad)
                    grad = grad / world
                worst = max(worst, (grad - expected[n]).abs().max().item())
            report[f"{mode}/{dropout}"] = dict(worst=worst, sharded_frozen=sharded_frozen,
                                              sharded_trainable=sharded_trainable, n=len(expected))
    if rank == 0:
        print("REPORT", __import__("json").dumps(report), flush=True)
    dist.destroy_process_group()
""")


def test_fsdp2_sharded_lora_fa_gradients_equal_the_unsharded_ones(tmp_path):
    """torch's FSDP2 (fully_shard) runs on CPU with gloo; accelerate does not (its FSDP mode is for
    accelerator devices only, and falls back to DDP on CPU), so the Trainer path is checked on GPUs."""
    from torch.distributed.fsdp import fully_shard  # noqa: F401 - skip cleanly where torch lacks FSDP2

    proc = torchrun(FSDP_WORKER, tmp_path)
    report = json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("REPORT"))[len("REPORT"):])
    for key, r in report.items():
        assert r["worst"] < 1e-6, (key, r)  # LoRA-FA's saved x·Aᵀ, A, B and seed survive resharding
        assert r["sharded_frozen"] > 0
    assert report["blocks/0.1"]["sharded_trainable"] == report["blocks/0.1"]["n"]
    assert report["frozen_only/0.1"]["sharded_trainable"] == 0  # adapters stay whole, as in the paper


# ----------------------------------------------------------------------------- configs

def test_accelerate_configs_parse_and_name_their_mode():
    from accelerate.commands.config.config_args import ClusterConfig
    from accelerate.utils import DistributedType

    modes = {"ddp": DistributedType.MULTI_GPU, "fsdp": DistributedType.FSDP,
             "deepspeed_zero3": DistributedType.DEEPSPEED}
    for name, mode in modes.items():
        config = ClusterConfig.from_yaml_file(str(ROOT / "conf" / "accelerate" / f"{name}.yaml"))
        assert config.distributed_type == mode and config.num_processes >= 1
    fsdp = ClusterConfig.from_yaml_file(str(ROOT / "conf" / "accelerate" / "fsdp.yaml")).fsdp_config
    assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_reshard_after_forward"] is True
    ds = ClusterConfig.from_yaml_file(str(ROOT / "conf" / "accelerate" / "deepspeed_zero3.yaml")).deepspeed_config
    assert (ROOT / ds["deepspeed_config_file"]).is_file()


def _auto_keys(node, prefix=""):
    for key, value in node.items():
        if isinstance(value, dict):
            yield from _auto_keys(value, f"{prefix}{key}.")
        elif value == "auto":
            yield prefix + key


def test_deepspeed_zero3_config_shards_base_weights_and_keeps_adapters_whole():
    """Validated without DeepSpeed (it builds against CUDA): ZeRO stage 3, every "auto" one the
    Trainer fills in, and a persistence threshold between the largest adapter and the smallest
    base weight of the paper's models, so adapters are never partitioned or re-gathered."""
    import transformers.integrations.deepspeed as hf_ds
    from accelerate.utils.deepspeed import HfDeepSpeedConfig

    path = ROOT / "conf" / "accelerate" / "deepspeed_zero3.json"
    config = HfDeepSpeedConfig(str(path))
    assert config.is_zero3() and not config.is_offload()
    filled_by_trainer = Path(hf_ds.__file__).read_text()
    for key in _auto_keys(json.loads(path.read_text())):
        assert f'"{key}"' in filled_by_trainer, f"{key}: 'auto' that transformers' Trainer does not fill"
    threshold = config.get_value("zero_optimization.stage3_param_persistence_threshold")
    largest_adapter = 11008 * 64  # B of LLaMA-7B's MLP at r=64 (the paper's ZeRO setting, Table 5)
    smallest_base = 4096 * 4096  # LLaMA-7B's attention projections: every base weight gets sharded
    assert largest_adapter < threshold < smallest_base
