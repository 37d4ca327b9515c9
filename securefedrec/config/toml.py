"""Reading an experiment's TOML file: flat keys, a ``[run]`` table, or section tables.

The rule (``-`` and ``_`` are the same in every key):

- keys at the top of the file, and keys of a ``[run]`` table, are flat keys
  (:data:`~securefedrec.config.FLAT_KEYS`: ``rounds = 50``, ``server-optimizer =
  "fedyogi"``), as before the sections existed; ``[run]``'s own fields
  (``seed``, ``device``, ``eval-every``) are flat keys too;
- a section table (``[data]``, ``[federation]``, ``[model]``, ``[privacy]``,
  ``[compression]``, ``[server]``) takes its section's field names (``[model]
  name = "mf"``, ``[privacy] mode = "user"``, ``[server] lr = 0.1``) or the flat
  keys of those fields (``[privacy] dp = "user"``);
- a value may be set once in the whole file; any other table or key is an error
  naming it.

(Before the sections, a file with a ``[run]`` table ignored every other key; they
are now read, or refused.) Errors name the key as written: ``run.toml: sample-rate``,
``run.toml: [federation] sample-rate``; a TOML syntax error gives its line and column.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from securefedrec.config.sections import FLAT_KEYS, SECTIONS
from securefedrec.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["load_toml", "read_toml"]

_FLAT_TABLE = "run"
"""The table that holds flat keys (and is also the ``run`` section)."""


def _dashed(names: Any) -> str:
    return ", ".join(name.replace("_", "-") for name in names)


def _section_keys(section: str) -> dict[str, str]:
    """Key accepted in ``[section]`` -> its flat key: the section's field names and their flat keys."""
    keys = {field: flat for flat, (where, field) in FLAT_KEYS.items() if where == section}
    keys.update({flat: flat for flat, (where, _) in FLAT_KEYS.items() if where == section})
    return keys


def read_toml(path: str | Path) -> tuple[dict[str, Any], dict[str, str]]:
    """Read a config file: (value by flat key, how the file names it: ``"{path}: [model] name"``).

    Raises:
        ConfigError: the file is missing or not TOML (with its line), a table or key is unknown
            (named with its table), or a value is set twice.
    """
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: invalid TOML: {exc}") from None
    values: dict[str, Any] = {}
    labels: dict[str, str] = {}

    def put(flat: str, value: Any, label: str) -> None:
        if flat in values:
            raise ConfigError(f"{label}: sets {flat!r} a second time (also {labels[flat]})")
        values[flat] = value
        labels[flat] = label

    def flat_key(key: str, value: Any) -> None:
        name = key.replace("-", "_")
        if name not in FLAT_KEYS:
            raise ConfigError(f"{p}: unknown key {key!r}; known keys: {_dashed(sorted(FLAT_KEYS))}")
        put(name, value, f"{p}: {key}")

    for top, entry in data.items():
        if not isinstance(entry, dict):
            flat_key(top, entry)
        elif top == _FLAT_TABLE:
            for key, value in entry.items():
                flat_key(key, value)
        elif top in SECTIONS:
            accepted = _section_keys(top)
            for key, value in entry.items():
                name = key.replace("-", "_")
                if name not in accepted:
                    where = FLAT_KEYS.get(name)
                    home = f"; it belongs in [{where[0]}] (or at the top)" if where else ""
                    raise ConfigError(f"{p}: [{top}] unknown key {key!r}{home}; keys of [{top}]: "
                                      f"{_dashed(accepted)}")
                put(accepted[name], value, f"{p}: [{top}] {key}")
        else:
            raise ConfigError(f"{p}: unknown table [{top}]; tables: [{_FLAT_TABLE}] (flat keys) and the "
                              f"sections {', '.join(f'[{s}]' for s in SECTIONS if s != _FLAT_TABLE)}")
    return values, labels


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a config file (flat keys, a ``[run]`` table, or section tables): value by flat key.

    :meth:`~securefedrec.config.ExperimentConfig.from_toml` also names the keys as the file
    writes them in its errors.
    """
    return read_toml(path)[0]
