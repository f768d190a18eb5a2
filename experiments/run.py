"""One training run (or, with -m, a sweep) from the Hydra config in conf/.

    python experiments/run.py task=glue/mrpc method=lora_fa scale=mini logger=none
    python experiments/run.py -m experiment=table7
    python experiments/run.py -m experiment=table2 dry_run=true    # rehearsal: random weights, one step (make dry-run)

The whole config is validated and turned into plain lorafa objects before any model is
built; the library never sees Hydra.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

ROOT = Path(__file__).resolve().parent.parent

from lorafa.paths import results_dir
from lorafa.recipe import EXIT_PREEMPTED, run
from lorafa.spec import RunSpec
from lorafa.training import TrainingInterrupted
from config_groups import check_group_choices

CONF = ROOT / "conf"
OmegaConf.register_new_resolver("mul", lambda a, b: a * b, replace=True)
OmegaConf.register_new_resolver("coalesce", lambda value, default: default if value is None else value, replace=True)
GROUPS = ("task", "method", "model", "trainer", "logger", "scale", "experiment")


def to_spec(cfg: DictConfig) -> RunSpec:
    """The Hydra config as plain lorafa objects, every field checked (each class checks its own)."""
    return RunSpec.from_config(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True))


def rehearse(spec: RunSpec, cfg: DictConfig) -> RunSpec:
    """dry_run=true: the same run with random weights, one step, under results/dry-run
    (lorafa.dryrun says what changes and why)."""
    from lorafa.dryrun import rehearsal_spec

    spec, notes = rehearsal_spec(spec, cfg.results_dir or results_dir() / "dry-run")
    print("[dry-run] " + "\n[dry-run] ".join(notes), flush=True)
    return spec


def _export_slurm_ranks() -> None:
    """hydra/launcher=slurm with several GPUs starts one task per GPU: give torch its RANK,
    WORLD_SIZE, LOCAL_RANK and MASTER_ADDR/PORT from SLURM (torchrun/accelerate set their own)."""
    if "RANK" in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) <= 1:
        return
    try:
        import submitit

        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    except Exception:  # noqa: BLE001 - not a submitit job: a plain srun leaves the ranks to torchrun
        pass


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    try:
        spec = to_spec(cfg)
        if cfg.dry_run:
            spec = rehearse(spec, cfg)
    except ValueError as err:
        print(f"[lorafa] config error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    _export_slurm_ranks()
    try:
        run(spec, force=cfg.force)
    except TrainingInterrupted:
        # SIGTERM (SLURM's preemption notice): checkpointed, no record; the sweep stops here and
        # its rerun (or SLURM's requeue) resumes this run and skips the finished ones.
        sys.stdout.flush()
        os._exit(EXIT_PREEMPTED)
    except ValueError as err:  # bad input found by the run: unwritable or full results directory, a malformed data row
        print(f"[lorafa] error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    try:
        check_group_choices(CONF, GROUPS, sys.argv[1:])
    except ValueError as err:
        print(f"[lorafa] config error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    main()
