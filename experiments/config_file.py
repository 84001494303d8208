"""`--config=FILE` flags whose unknown `--config.<field>=...` overrides fail in one line naming the field and file.

ml_collections' `config_flags` reports an override of a field the config does not have as a chained
`KeyError`/`AttributeError` (`"'nonexistent'"`) from deep inside absl's flag parsing, and, when `--config` itself
is not given, already while the entry point's module is imported. `define_config_file` checks every override
against the config file first and exits with one line instead:

    --config.nonexistent=1: experiments/configs/test.py has no field 'nonexistent' (its fields: data, eval, ...)
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from typing import Any, Optional, Sequence

from absl import flags
from ml_collections import config_flags


def define_config_file(name: str, default: Optional[str], help_string: str, *,
                       argv: Optional[Sequence[str]] = None,
                       flag_values: flags.FlagValues = flags.FLAGS) -> flags.FlagHolder:
    """`config_flags.DEFINE_config_file`, after checking `argv`'s overrides of flag `name` (default `sys.argv`).

    Raises:
      SystemExit: an override names a field the config file does not have; the message is one line naming the
        override, the missing field, the file and the fields that exist where it was looked for.
    """
    argv = sys.argv if argv is None else list(argv)
    problem = unknown_override(argv, name, default)
    if problem is not None:
        raise SystemExit(f"FATAL Flags parsing error: {problem}")
    return config_flags.DEFINE_config_file(name, default, help_string, flag_values=flag_values, sys_argv=argv)


def unknown_override(argv: Sequence[str], name: str, default: Optional[str]) -> Optional[str]:
    """The first override `--<name>.a.b=...` in `argv` whose path is not in the config file, in words, or None.

    The file is `--<name>`'s value in `argv` (`path` or `path:argument`, as ml_collections reads it), else
    `default`; without either, or without overrides, there is nothing to check.
    """
    fields = [m.group(2) for m in (re.match(rf"^-{{1,2}}(no)?{re.escape(name)}\.([^=]+)", arg) for arg in argv) if m]
    spec = _config_spec(argv, name) or default
    if not fields or not spec:
        return None
    path, _, argument = spec.partition(":")
    if not os.path.isfile(path):
        return None  # ml_collections reports a missing file itself
    config = _load(path, argument)
    for field in fields:
        node = config
        parts = field.split(".")
        for depth, part in enumerate(parts):
            where = "at the top level" if depth == 0 else f"in {name}.{'.'.join(parts[:depth])}"
            if isinstance(node, (list, tuple)) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            elif hasattr(node, "keys") and part in node:
                node = node[part]
            elif hasattr(node, "keys"):
                return (f"--{name}.{field}: {path} has no field {part!r} {where} (its fields: "
                        f"{', '.join(sorted(node.keys()))})")
            else:
                return f"--{name}.{field}: {path} has no field {part!r} {where}, which is a {type(node).__name__}"
    return None


def _config_spec(argv: Sequence[str], name: str) -> Optional[str]:
    """`--<name>`'s value in `argv` (`--name=value` or `--name value`), or None."""
    for i, arg in enumerate(argv):
        m = re.match(rf"^-{{1,2}}{re.escape(name)}(=(.*))?$", arg)
        if m:
            return m.group(2) if m.group(1) is not None else (argv[i + 1] if i + 1 < len(argv) else None)
    return None


def _load(path: str, argument: str) -> Any:
    """`get_config()` of the Python file `path` (with `argument` when one was given after a colon)."""
    spec = importlib.util.spec_from_file_location("_checked_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(argument) if argument else module.get_config()
