"""Metadata queries (``bank query``, ``fit --query``, ``discover --query``, :meth:`FilterBank.query`): a small
language of its own that can select rows and do nothing else.

The grammar (keywords as in Python; ``&``, ``|`` and ``~`` are accepted for ``and``, ``or`` and ``not``, as pandas
accepts them)::

    query      := or
    or         := and ( ("or" | "|") and )*
    and        := not ( ("and" | "&") not )*
    not        := ("not" | "~") not | "(" query ")" | comparison
    comparison := operand ( OP operand )+            OP: == != < <= > >=  (chains such as 1 <= stage < 3)
                | operand ("in" | "not in") list
    operand    := COLUMN | NUMBER | STRING | "True" | "False" | "(" operand ")"
    list       := "[" [ literal ( "," literal )* [","] ] "]"  or the same in "(" ")"

A query is parsed into a tree before anything is evaluated, and the tree holds only column names, literals,
comparisons and ``and`` / ``or`` / ``not``: there is no attribute access, call, indexing, arithmetic or ``@`` name,
so a query can never run code (pandas' own ``query`` resolves ``@name`` to Python objects and calls methods). A
query must be a condition: a bare column (``kernel_size``) or literal is refused, as is a comparison without a
column. Columns are compared with literals or columns of the same kind (numbers with numbers, text with text).
Comparisons follow pandas / numpy: a missing number (NaN) is unequal to everything.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from masterkey.errors import MasterkeyError

__all__ = ["MAX_QUERY_LENGTH", "Query", "evaluate", "parse"]

#: Longer queries are refused (a real one is a line); so are deeper nestings of parentheses and ``not``.
MAX_QUERY_LENGTH = 10_000
MAX_DEPTH = 64

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)
      | (?P<string>'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*")
      | (?P<name>[A-Za-z_][A-Za-z_0-9]*)
      | (?P<op>==|!=|<=|>=|<|>|\(|\)|\[|\]|,|&|\||~|-)
    )""",
    re.VERBOSE,
)
_COMPARISONS = {
    "==": np.equal,
    "!=": np.not_equal,
    "<": np.less,
    "<=": np.less_equal,
    ">": np.greater,
    ">=": np.greater_equal,
}
_KEYWORDS = {"and", "or", "not", "in", "True", "False"}


@dataclass(frozen=True)
class Column:
    name: str


@dataclass(frozen=True)
class Literal:
    value: Any  # int, float, str or bool


@dataclass(frozen=True)
class Compare:
    operands: tuple[Column | Literal, ...]
    ops: tuple[str, ...]


@dataclass(frozen=True)
class In:
    column: Column
    values: tuple[Any, ...]
    negated: bool


@dataclass(frozen=True)
class BoolOp:
    op: str  # "and" | "or"
    parts: tuple[Node, ...]


@dataclass(frozen=True)
class Not:
    part: Node


Node = Compare | In | BoolOp | Not


class QueryError(MasterkeyError):
    """A query that is not in the grammar, names a column the table lacks, or compares things of different kinds."""


def _error(text: str, message: str) -> QueryError:
    shown = repr(text) if len(text) <= 120 else repr(text[:120]) + "..."
    return QueryError(f"invalid query {shown}: {message}")


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        found = _TOKEN.match(text, pos)
        if not found or found.end() == pos:
            rest = text[pos:].lstrip()
            hint = ""
            if rest[:1] == "@":
                hint = " (@ names are not part of the query language)"
            elif rest[:1] == ".":
                hint = " (no attribute access: compare columns with literals)"
            elif rest[:1] in "+*/%":
                hint = " (no arithmetic: compare columns with literals)"
            raise _error(text, f"unexpected {rest[:20]!r} at position {len(text) - len(rest) + 1}{hint}")
        kind = found.lastgroup
        assert kind is not None
        out.append((kind, found.group(kind)))
        pos = found.end()
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokens(text)
        self.pos = 0
        self.depth = 0

    # -------------------------------------------------------------- helpers
    def peek(self, ahead: int = 0) -> tuple[str, str] | None:
        i = self.pos + ahead
        return self.tokens[i] if i < len(self.tokens) else None

    def at(self, *values: str) -> bool:
        token = self.peek()
        return token is not None and token[0] in ("op", "name") and token[1] in values

    def take(self) -> tuple[str, str]:
        token = self.peek()
        if token is None:
            raise _error(self.text, "it ends too early")
        self.pos += 1
        return token

    def expect(self, value: str) -> None:
        token = self.peek()
        if token is None or token[1] != value:
            found = "the end" if token is None else repr(token[1])
            raise _error(self.text, f"expected {value!r}, found {found}")
        self.pos += 1

    def deeper(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _error(self.text, f"nested more than {MAX_DEPTH} levels deep")

    # -------------------------------------------------------------- the grammar
    def parse(self) -> Node:
        if not self.tokens:
            raise _error(self.text, 'it is empty; give a condition such as "kernel_size == 7"')
        node = self.condition()
        token = self.peek()
        if token is not None:
            raise _error(self.text, f"unexpected {token[1]!r} after a complete condition")
        return node

    def condition(self) -> Node:
        return self.binary("or", ("or", "|"), lambda: self.binary("and", ("and", "&"), self.negation))

    def binary(self, op: str, words: tuple[str, ...], part: Callable[[], Node]) -> Node:
        parts = [part()]
        while self.at(*words):
            self.take()
            parts.append(part())
        return parts[0] if len(parts) == 1 else BoolOp(op, tuple(parts))

    def negation(self) -> Node:
        self.deeper()
        try:
            if self.at("not", "~"):
                self.take()
                return Not(self.negation())
            if self.at("(") and self._parenthesised_condition():
                self.take()
                node = self.condition()
                self.expect(")")
                return node
            return self.comparison()
        finally:
            self.depth -= 1

    def _parenthesised_condition(self) -> bool:
        """Whether the ``(`` here opens a condition (``(stage > 1)``) rather than an operand (``(stage) > 1``)."""
        depth, i = 0, self.pos
        while i < len(self.tokens):
            kind, value = self.tokens[i]
            if value == "(" and kind == "op":
                depth += 1
            elif value == ")" and kind == "op":
                depth -= 1
                if depth == 0:
                    after = self.tokens[i + 1] if i + 1 < len(self.tokens) else None
                    return after is None or after[1] not in (*_COMPARISONS, "in", "not")
            i += 1
        return True  # unbalanced: let the condition parser report it

    def comparison(self) -> Node:
        first = self.operand()
        if self.at("in") or (self.at("not") and self.peek(1) is not None and self.peek(1)[1] == "in"):
            negated = self.take()[1] == "not"
            if negated:
                self.take()
            if not isinstance(first, Column):
                raise _error(self.text, "the left side of 'in' must be a column")
            return In(first, self.literal_list(), negated)
        operands, ops = [first], []
        while self.at(*_COMPARISONS):
            ops.append(self.take()[1])
            operands.append(self.operand())
        following = self.peek()
        if following is not None and not self.at("and", "or", "&", "|", ")"):
            arithmetic = " (no arithmetic: compare columns with literals)" if following[1] == "-" else ""
            raise _error(
                self.text, f"unexpected {following[1]!r}: only comparisons joined by and / or / not{arithmetic}"
            )
        if not ops:
            what = f"the column {first.name!r}" if isinstance(first, Column) else f"the value {first.value!r}"
            raise _error(
                self.text,
                f'{what} alone is not a condition; compare it, e.g. "{getattr(first, "name", "kernel_size")} == 7"',
            )
        if not any(isinstance(o, Column) for o in operands):
            raise _error(self.text, "a comparison needs a column on one side")
        return Compare(tuple(operands), tuple(ops))

    def operand(self) -> Column | Literal:
        token = self.peek()
        if token is None:
            raise _error(self.text, "it ends where a column or value was expected")
        kind, value = token
        if kind == "op" and value == "(":
            self.deeper()
            self.take()
            inner = self.operand()
            self.expect(")")
            self.depth -= 1
            return inner
        if kind == "name" and value not in _KEYWORDS:
            self.take()
            following = self.peek()
            if following is not None and following[1] in ("(", "["):
                raise _error(self.text, f"{value}{following[1]}...: no calls or indexing, only columns and values")
            return Column(value)
        return Literal(self.literal())

    def literal(self) -> Any:
        kind, value = self.take()
        if kind == "number":
            return _number(value)
        if kind == "op" and value == "-" and self.peek() is not None and self.peek()[0] == "number":
            return -_number(self.take()[1])
        if kind == "string":
            return ast.literal_eval(value)  # a plain quoted string (the token pattern admits nothing else)
        if kind == "name" and value in ("True", "False"):
            return value == "True"
        raise _error(self.text, f"expected a column or a value, found {value!r}")

    def literal_list(self) -> tuple[Any, ...]:
        close = {"[": "]", "(": ")"}.get(self.peek()[1] if self.peek() else "")
        if close is None:
            raise _error(self.text, "'in' takes a list of values such as [3, 5]")
        self.take()
        values: list[Any] = []
        while not self.at(close):
            values.append(self.literal())
            if not self.at(close):
                self.expect(",")
        self.take()
        return tuple(values)


def _number(text: str) -> int | float:
    return float(text) if any(c in text for c in ".eE") else int(text)


@dataclass(frozen=True)
class Query:
    """A parsed query: :attr:`text` as given, :attr:`tree` its syntax tree, :attr:`columns` the columns it reads."""

    text: str
    tree: Node

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(_columns(self.tree)))

    def __str__(self) -> str:
        return self.text


def _columns(node: Node) -> Iterable[str]:
    if isinstance(node, Compare):
        yield from (o.name for o in node.operands if isinstance(o, Column))
    elif isinstance(node, In):
        yield node.column.name
    elif isinstance(node, BoolOp):
        for part in node.parts:
            yield from _columns(part)
    else:
        yield from _columns(node.part)


def parse(text: str | Query) -> Query:
    """Parse ``text`` (see the module's grammar) without evaluating anything; raise :class:`MasterkeyError` naming
    the query and the problem when it is not in the grammar."""
    if isinstance(text, Query):
        return text
    if not isinstance(text, str):
        raise QueryError(f"a query is text, not {type(text).__name__}")
    if len(text) > MAX_QUERY_LENGTH:
        raise QueryError(f"invalid query: {len(text):,} characters, more than {MAX_QUERY_LENGTH:,}")
    return Query(text, _Parser(text).parse())


def evaluate(query: str | Query, columns: Mapping[str, Any] | Any, n_rows: int | None = None) -> np.ndarray:
    """The boolean row mask of ``query`` over a table: ``columns`` maps column names to equal-length arrays (a
    pandas DataFrame does). Raises :class:`MasterkeyError` for an unknown column or a comparison of a text column
    with a number."""
    query = parse(query)
    names = list(columns.keys())
    if n_rows is None:
        n_rows = len(columns[names[0]]) if names else 0
    cache: dict[str, np.ndarray] = {}

    def column(name: str) -> np.ndarray:
        if name not in cache:
            if name not in names:
                known = ", ".join(names)
                raise _error(query.text, f"no column {name!r} (the columns are: {known})")
            values = columns[name]
            cache[name] = values.to_numpy() if hasattr(values, "to_numpy") else np.asarray(values)
        return cache[name]

    def text_kind(value: Any) -> bool:
        if isinstance(value, np.ndarray):
            return value.dtype.kind in "OUS"
        return isinstance(value, str)

    def operand(o: Column | Literal) -> Any:
        return column(o.name) if isinstance(o, Column) else o.value

    def check_kinds(a: Column | Literal, b: Column | Literal, x: Any, y: Any) -> None:
        if text_kind(x) == text_kind(y):
            return
        col, other = (a, b) if isinstance(a, Column) else (b, a)
        kind = "text" if text_kind(column(col.name)) else "numbers"
        if isinstance(other, Column):
            raise _error(query.text, f"{col.name} holds {kind} but {other.name} does not; they cannot be compared")
        wanted = "quoted text such as 'name'" if kind == "text" else "a number"
        raise _error(query.text, f"{col.name} holds {kind}; compare it with {wanted}, not {other.value!r}")

    def mask(node: Node) -> np.ndarray:
        if isinstance(node, Compare):
            out = np.ones(n_rows, dtype=bool)
            for a, op, b in zip(node.operands, node.ops, node.operands[1:], strict=False):
                x, y = operand(a), operand(b)
                check_kinds(a, b, x, y)
                out &= np.broadcast_to(np.asarray(_COMPARISONS[op](x, y), dtype=bool), (n_rows,))
            return out
        if isinstance(node, In):
            values = column(node.column.name)
            for v in node.values:
                check_kinds(node.column, Literal(v), values, v)
            found = np.zeros(n_rows, dtype=bool)
            for v in dict.fromkeys(node.values):
                found |= np.asarray(values == v, dtype=bool)
            return ~found if node.negated else found
        if isinstance(node, BoolOp):
            parts = [mask(p) for p in node.parts]
            return np.logical_and.reduce(parts) if node.op == "and" else np.logical_or.reduce(parts)
        return ~mask(node.part)

    return np.asarray(mask(query.tree), dtype=bool)
