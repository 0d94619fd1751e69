"""musicfs config files for tests and benchmarks."""
from __future__ import annotations

from pathlib import Path


def toml_config(origins: list[tuple[str, Path]], cache_dir: Path, log_file: Path, **sections) -> str:
    lines = ["[cache]", f'dir = "{cache_dir}"', f'max_size = "{sections.pop("max_size", "1G")}"',
             "[log]", f'file = "{log_file}"', f'level = "{sections.pop("level", "debug")}"']
    sections.setdefault("layout", {"mode": "paths"})   # tag-view tests pass layout={...}
    for section, values in sections.items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            lines.append(f"{key} = {value!r}" if not isinstance(value, str) else f'{key} = "{value}"')
    for name, path in origins:
        lines += ["[[origins]]", f'name = "{name}"', 'type = "local"', f'path = "{path}"']
    return "\n".join(lines) + "\n"


def origin_toml(table: dict) -> str:
    """One [[origins]] table of a config file, from the dict an origin_table() gives."""
    return "[[origins]]\n" + "".join(f'{k} = "{v}"\n' if isinstance(v, str) else f"{k} = {v!r}\n"
                                     for k, v in table.items())


# The tag view in a test's sections (conftest.make_config defaults to the paths layout).
