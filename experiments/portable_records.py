"""Rewrite records made before records traveled, so they name no machine path.

    python experiments/portable_records.py results/mini results/small results/dry-run

Records written since lorafa.paths.portable_path keep paths relative to the checkout, the
data directory, the results root or the installed packages. This rewrites older ones alike:
`weights.path` (with `relative_to`), paths in `error`, and a dry run's `config.model.path`.
Results are untouched. A config that held a machine path (dry runs only) is part of the
record's hash, so those records get the hash (and run_id suffix, folder name) of the relative
configuration, which is what a dry run computes now, on any machine. Run it again: nothing
changes. Each record.json and runs.jsonl is written in write_record's format.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lorafa.paths import REPO_ROOT, portable_path, portable_text
from lorafa.results import INDEX_NAME, RECORD_NAME, config_hash


def portable(record: dict) -> dict:
    weights = record.get("weights")
    if isinstance(weights, dict) and "path" in weights and "relative_to" not in weights:
        record["weights"] = {k: v for k, v in weights.items() if k != "path"} | portable_path(weights["path"])
    if isinstance(record.get("error"), str):
        record["error"] = portable_text(record["error"])
    model = (record.get("config") or {}).get("model")
    if isinstance(model, dict) and isinstance(model.get("path"), str) and Path(model["path"]).is_absolute():
        path = Path(model["path"])
        if REPO_ROOT in path.parents:
            model["path"] = path.relative_to(REPO_ROOT).as_posix()
            old, new = record["config_hash"], config_hash(record["config"])
            record["config_hash"] = new
            if record["run_id"].endswith(old[:8]):
                record["run_id"] = record["run_id"][:-8] + new[:8]
    return record


def rewrite_root(root: Path) -> tuple[int, dict[str, str]]:
    """Rewrite one results root; returns (records changed, {old run_id: new run_id})."""
    renamed: dict[str, str] = {}
    changed = 0
    for path in sorted((root / "runs").glob(f"*/{RECORD_NAME}")):
        before = json.loads(path.read_text())
        old_id = before["run_id"]
        after = portable(json.loads(path.read_text()))
        if after == before:
            continue
        changed += 1
        text = json.dumps(after, indent=2, allow_nan=False) + "\n"
        target = path
        if after["run_id"] != old_id:
            renamed[old_id] = after["run_id"]
            target = root / "runs" / after["run_id"] / RECORD_NAME
            target.parent.mkdir(parents=True, exist_ok=True)
            path.unlink()
            for leftover in path.parent.iterdir():
                leftover.rename(target.parent / leftover.name)
            path.parent.rmdir()
        target.write_text(text)
    index = root / INDEX_NAME
    if index.exists():
        lines = [json.dumps(portable(json.loads(line)), separators=(",", ":"), allow_nan=False)
                 for line in index.read_text().splitlines() if line.strip()]
        index.write_text("\n".join(lines) + "\n")
    for table in root.glob("*.csv"):  # a summary may name runs
        data = original = table.read_bytes()
        for old, new in renamed.items():
            data = data.replace(old.encode(), new.encode())
        if data != original:
            table.write_bytes(data)
    return changed, renamed


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("roots", nargs="+", type=Path)
    for root in ap.parse_args(argv).roots:
        changed, renamed = rewrite_root(root)
        print(f"{root}: {changed} records rewritten, {len(renamed)} renamed (their configuration held a machine path)")


if __name__ == "__main__":
    main()
