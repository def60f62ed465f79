"""TOML files: parsing with errors that name the file, line and key; the one flattening of settings tables."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from bench.base.errors import UserError

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]


def load_toml_text(path: Path) -> tuple[dict[str, Any], str]:
    """Parse a TOML file; a syntax error names the file, the line and the key on that line."""
    if not path.is_file():
        raise UserError(f"'{path}' does not exist: pass an existing TOML file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"'{path}' is not UTF-8 text: pass a TOML file") from None
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        lines = text.splitlines()
        m = re.search(r"line (\d+)", msg)
        if m:
            line_no = int(m.group(1))
        else:  # "at end of document": an unclosed array or string, so name the last line written
            line_no = max((i for i, line in enumerate(lines, 1) if line.strip()), default=0)
        where = ""
        if 0 < line_no <= len(lines):
            key = re.match(r"\s*\[*\s*([\w.\-\"']+)", lines[line_no - 1])
            where = f" line {line_no}" + (f" (key '{key.group(1).strip(chr(34))}')" if key else "")
        raise UserError(f"'{path}'{where} is not valid TOML: {msg}: fix the file") from None


def key_line(text: str, key: str) -> str:
    """' line N' where `key = ...` is written in the TOML text, else ''."""
    leaf = key.rsplit(".", 1)[-1]
    for i, line in enumerate(text.splitlines(), 1):
        if re.match(rf"\s*\"?{re.escape(leaf)}\"?\s*=", line):
            return f" line {i}"
    return ""


def flatten_settings(data: dict[str, Any]) -> dict[str, Any]:
    """Top-level keys stay, [ALGO] tables become ALGO.key, a [run] table is merged (as in --config files)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and key == "run":
            flat.update(value)
        elif isinstance(value, dict):
            for sub, v in value.items():
                flat[f"{key}.{sub}"] = v
        else:
            flat[key] = value
    return flat
