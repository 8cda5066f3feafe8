"""The one reader of the JSON files the project writes and reads back (export cards, model
and processor configs, a workdir's config.json, tables of names): damage is one line.

A truncated, emptied or bit-flipped file raises `JSONDecodeError` or `UnicodeDecodeError`
deep inside `json`; here it becomes the project's error naming the file, what it is and
the cause, at the point the file is read. Anything else keeps its traceback.
"""

from __future__ import annotations

import json
from typing import Any

from contrastive_jax import paths
from contrastive_jax.errors import DataError, InputNotFoundError


def read_json(path: str, what: str) -> dict[str, Any]:
    """The JSON object in `path` (`what` names the file in errors, e.g. "export card").
    A missing file is an InputNotFoundError; unreadable content, or a value that is not
    an object, a DataError."""
    try:
        with paths.open_file(path, "r", encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError as e:
        raise InputNotFoundError(f"missing {what} {path}") from e
    except IsADirectoryError as e:
        raise DataError(f"{what} {path} is a directory, not a JSON file") from e
    except UnicodeDecodeError as e:
        raise DataError(f"{what} {path} is damaged: not UTF-8 text (byte {e.start})") from e
    except json.JSONDecodeError as e:
        raise DataError(f"{what} {path} is damaged: {e.msg} at line {e.lineno} "
                        f"column {e.colno}") from e
    if not isinstance(data, dict):
        raise DataError(f"{what} {path} is damaged: a JSON {type(data).__name__}, "
                        "not an object")
    return data


def field(data: dict[str, Any], key: str, path: str, kind: type | tuple[type, ...] = object):
    """`data[key]` of the JSON object read from `path`, checked to be a `kind`: a key a
    damaged file lost (or changed) is a DataError naming the file and the key."""
    value = data.get(key)
    if key not in data or not isinstance(value, kind):
        found = "missing" if key not in data else f"a {type(value).__name__}"
        raise DataError(f"{path} is damaged: key {key!r} is {found}")
    return value
