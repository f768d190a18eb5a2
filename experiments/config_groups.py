"""What the entry points check before Hydra composes: config-group names given on the command line.

Hydra's own error for an unknown option omits nested ones (it lists `task` options but not
`glue/mrpc`), so the entry points check first and list every available name.
"""

from __future__ import annotations

from pathlib import Path


def group_names(conf: Path, group: str) -> list[str]:
    """The options of a config group, nested ones as `glue/mrpc`."""
    folder = conf / group
    return sorted(str(p.relative_to(folder).with_suffix("")) for p in folder.rglob("*.yaml"))


def check_group_choices(conf: Path, groups: tuple[str, ...], argv: list[str]) -> None:
    """Raise ValueError for a `group=name` (or `group=a,b` sweep) naming an option that does not exist."""
    for arg in argv:
        group, sep, value = arg.lstrip("+").partition("=")
        if not sep or group not in groups or "(" in value or value in ("null", ""):
            continue
        names = group_names(conf, group)
        for choice in value.split(","):
            if choice not in names:
                raise ValueError(f"{group}={choice!r} is unknown; available: {', '.join(names)}")
