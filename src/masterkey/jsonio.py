"""JSON in and out, strictly: the one writer of every JSON text masterkey produces (files, ``--json`` on stdout,
``metrics.jsonl`` rows, ``run.json``, bank manifests, key-set metadata) and the one parser of JSON it reads.

Writing: the result is always strict JSON (RFC 8259), which ``JSON.parse``, ``jq`` and a strict Python parse
accept. Non-finite numbers (NaN, +-Infinity), which JSON cannot hold, are written as ``null``; when the document is
an object, its field ``"nonfinite_values"`` then records what each such ``null`` was, by JSON Pointer
(``{"/overall/mean_cos2": "NaN"}``), so no meaning is lost and :func:`loads` restores them. numpy and torch
scalars and arrays and paths are converted; anything else is a bug and raises ``TypeError`` (the final
``json.dumps`` runs with ``allow_nan=False``, so a NaN can never slip through silently).

Reading: :func:`loads` refuses documents nested deeper than :data:`MAX_DEPTH` (Python's parser would raise
``RecursionError``) with one clear line, before parsing.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import PurePath
from typing import Any

from masterkey.errors import MasterkeyError

__all__ = ["MAX_DEPTH", "NONFINITE_FIELD", "dumps", "dumps_line", "loads", "strict"]

#: The field of a written object that says which ``null`` values were non-finite numbers, and which.
NONFINITE_FIELD = "nonfinite_values"
#: JSON nested deeper than this is refused when read (masterkey writes at most a handful of levels).
MAX_DEPTH = 100
_NAMES = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _nonfinite_name(x: float) -> str:
    return "NaN" if math.isnan(x) else "Infinity" if x > 0 else "-Infinity"


def _pointer(parts: tuple[str, ...]) -> str:
    return "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in parts)


def _key(k: Any) -> str:
    if isinstance(k, str):
        return k
    if isinstance(k, bool) or k is None:
        return json.dumps(k)
    if hasattr(k, "item") and not hasattr(k, "__len__"):  # numpy scalar keys
        k = k.item()
    if isinstance(k, (int, float)):
        return json.dumps(k) if not isinstance(k, float) or math.isfinite(k) else _nonfinite_name(k)
    raise TypeError(f"JSON object keys must be text or numbers, not {type(k).__name__}")


def strict(obj: Any) -> tuple[Any, dict[str, str]]:
    """``obj`` as plain JSON values (dict / list / str / int / float / bool / None) with every non-finite number
    replaced by ``None``, and the JSON Pointers of the replaced values with what they were."""
    found: dict[str, str] = {}

    def walk(x: Any, at: tuple[str, ...]) -> Any:
        if x is None or isinstance(x, (str, bool)):
            return x
        if isinstance(x, int):
            return int(x)
        if isinstance(x, float):
            if math.isfinite(x):
                return float(x)
            found[_pointer(at)] = _nonfinite_name(x)
            return None
        if isinstance(x, dict):
            out = {}
            for k, v in x.items():
                key = _key(k)
                out[key] = walk(v, (*at, key))
            return out
        if isinstance(x, (list, tuple)):
            return [walk(v, (*at, str(i))) for i, v in enumerate(x)]
        if isinstance(x, PurePath):
            return str(x)
        if hasattr(x, "tolist"):  # numpy / torch scalars and arrays (a 0-d array or scalar gives a number)
            return walk(x.tolist(), at)
        if hasattr(x, "item"):
            return walk(x.item(), at)
        if isinstance(x, (set, frozenset)):
            return walk(sorted(x, key=repr), at)
        raise TypeError(f"not JSON serialisable: {type(x).__name__} at {_pointer(at) or '/'}")

    return walk(obj, ()), found


def _prepare(obj: Any) -> Any:
    value, found = strict(obj)
    if found and isinstance(value, dict):
        if NONFINITE_FIELD in value:
            raise TypeError(f"the field {NONFINITE_FIELD!r} is reserved for the JSON writer")
        value[NONFINITE_FIELD] = found
    return value


def dumps(
    obj: Any,
    *,
    indent: int | None = 2,
    sort_keys: bool = False,
    ensure_ascii: bool = True,
    separators: tuple[str, str] | None = None,
) -> str:
    """Strict JSON text of ``obj`` (see the module's rules), indented by ``indent`` (``None``: one line)."""
    return json.dumps(
        _prepare(obj), indent=indent, sort_keys=sort_keys, allow_nan=False, separators=separators,
        ensure_ascii=ensure_ascii,
    )  # fmt: skip


def dumps_line(obj: Any) -> str:
    """One strict JSON line (for ``.jsonl`` files), without the newline."""
    return json.dumps(_prepare(obj), allow_nan=False)


_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def depth(data: bytes | str) -> int:
    """How deeply the arrays and objects of a JSON text nest (brackets inside strings do not count)."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if raw.count(b"[") + raw.count(b"{") <= MAX_DEPTH:
        return raw.count(b"[") + raw.count(b"{")  # an upper bound, cheap, and enough to know it is shallow
    import numpy as np

    deepest = level = 0
    brackets = np.frombuffer(_STRING.sub(b"", raw).translate(None, _NOT_BRACKETS), dtype=np.uint8)
    for start in range(0, len(brackets), 1 << 22):  # bounded memory: 16 MiB of running levels at a time
        # '[' (0x5B) and '{' (0x7B) have bit 0x02 set and open; ']' (0x5D) and '}' (0x7D) close
        steps = np.where(brackets[start : start + (1 << 22)] & 0x02, 1, -1).astype(np.int32)
        levels = np.cumsum(steps, dtype=np.int32) + level
        deepest, level = max(deepest, int(levels.max())), int(levels[-1])
    return deepest


def loads(data: bytes | str, where: Any = "JSON", *, restore: bool = True) -> Any:
    """Parse a JSON text, refusing nesting deeper than :data:`MAX_DEPTH`; raise :class:`MasterkeyError` naming
    ``where`` (a file) for a text that is not JSON. ``NaN`` / ``Infinity`` of older, non-strict files are
    accepted. With ``restore`` the non-finite values recorded by :func:`dumps` come back (and their record goes)."""
    found = depth(data)
    if found > MAX_DEPTH:
        raise MasterkeyError(f"{where}: JSON nested more than {MAX_DEPTH} levels deep (corrupt or not masterkey's)")
    try:
        value = json.loads(data)
    except RecursionError:
        raise MasterkeyError(f"{where}: JSON nested too deeply to read (corrupt or not masterkey's)") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise MasterkeyError(f"{where}: not valid JSON ({str(exc).splitlines()[0][:100]})") from None
    if restore:
        _restore(value)
    return value


def _restore(value: Any) -> None:
    """Put the non-finite numbers :func:`dumps` recorded back in place (a malformed record is left as it is)."""
    if not isinstance(value, dict) or not isinstance(value.get(NONFINITE_FIELD), dict):
        return
    record = value[NONFINITE_FIELD]
    targets = []
    for pointer, name in record.items():
        if name not in _NAMES or not isinstance(pointer, str) or not pointer.startswith("/"):
            return
        parts = [p.replace("~1", "/").replace("~0", "~") for p in pointer[1:].split("/")]
        parent: Any = value
        for part in parts[:-1]:
            parent = _child(parent, part)
            if parent is None:
                return
        last = parts[-1]
        if isinstance(parent, list):
            if not last.isdigit() or int(last) >= len(parent):
                return
            last = int(last)
        elif not isinstance(parent, dict) or last not in parent:
            return
        if parent[last] is not None:
            return
        targets.append((parent, last, _NAMES[name]))
    for parent, last, number in targets:
        parent[last] = number
    del value[NONFINITE_FIELD]


def _child(node: Any, part: str) -> Any:
    if isinstance(node, dict):
        return node.get(part)
    if isinstance(node, list) and part.isdigit() and int(part) < len(node):
        return node[int(part)]
    return None
