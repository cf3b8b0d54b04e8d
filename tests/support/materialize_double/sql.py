"""The few statements the Materialize double understands: a tokenizer and a parser.

Parsing is strict where Materialize is (clause order of SUBSCRIBE, option names)
and says so with the SQLSTATE Materialize uses; statements the double does not
serve at all are a 42601 syntax error that names the statement.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass


class SqlError(Exception):
    """An error the server reports to the client as an ErrorResponse."""

    def __init__(self, sqlstate: str, message: str, *, detail: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message
        self.detail = detail


@dataclass(frozen=True)
class Token:
    kind: str  # ident (unquoted, lower-cased), qident, string, number, param, op
    value: str
    start: int
    end: int


_TOKEN = re.compile(
    r"""
    (?P<ws>\s+|--[^\n]*|/\*.*?\*/)
    |(?P<qident>"(?:[^"]|"")*")
    |(?P<string>'(?:[^']|'')*')
    |(?P<param>\$\d+)
    |(?P<number>(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)
    |(?P<ident>[A-Za-z_][A-Za-z0-9_$]*)
    |(?P<op>::|\S)
    """,
    re.VERBOSE | re.DOTALL,
)


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    for match in _TOKEN.finditer(text):
        kind = match.lastgroup or "op"
        raw = match.group()
        if kind == "ws":
            continue
        if kind == "op" and raw in ("'", '"'):
            what = "quoted string" if raw == "'" else "quoted identifier"
            raise SqlError("42601", f"unterminated {what}")
        if kind == "qident":
            value = raw[1:-1].replace('""', '"')
        elif kind == "string":
            value = raw[1:-1].replace("''", "'")
        elif kind == "ident":
            value = raw.lower()
        else:
            value = raw
        tokens.append(Token(kind, value, match.start(), match.end()))
    return tokens


def split_statements(text: str) -> list[tuple[str, list[Token]]]:
    """Statements of a simple query: (text without the `;`, tokens), empty ones left out."""
    statements: list[tuple[str, list[Token]]] = []
    current: list[Token] = []
    for token in [*tokenize(text), Token("op", ";", len(text), len(text))]:
        if token.kind == "op" and token.value == ";":
            if current:
                statements.append((text[current[0].start : current[-1].end], current))
            current = []
        else:
            current.append(token)
    return statements


def first_keyword(tokens: Sequence[Token]) -> str:
    return tokens[0].value.upper() if tokens and tokens[0].kind == "ident" else ""


# -- statements --------------------------------------------------------------------------


@dataclass(frozen=True)
class Begin:
    pass


@dataclass(frozen=True)
class Commit:
    pass


@dataclass(frozen=True)
class Rollback:
    pass


@dataclass(frozen=True)
class SetVar:
    name: str  # lower-cased; "cluster", "timezone", "transaction", ...
    value: str | None  # None: DEFAULT / RESET


@dataclass(frozen=True)
class Show:
    name: str


@dataclass(frozen=True)
class ShowColumns:
    """`SHOW COLUMNS FROM <relation>` (no LIKE or WHERE)."""

    name: tuple[str, ...]


@dataclass(frozen=True)
class Select:
    """`SELECT <number>`, `SELECT mz_version()`, `SELECT version()` or `SELECT mz_now()`."""

    function: str | None  # mz_version, version, mz_now; None for a literal
    literal: str | None
    alias: str | None


@dataclass(frozen=True)
class SelectRows:
    """`SELECT * FROM <relation | (query) [AS alias]> [AS OF <t>] [WHERE c = v AND ...]`:
    a one-off read of the relation (a trace's row by its key)."""

    name: tuple[str, ...] | None  # a relation name, or None for `(query)`
    query_identifiers: frozenset[str]
    query_from: str | None
    equals: tuple[tuple[str, str | None], ...]  # (column, value as text), ANDed
    as_of: int | None


@dataclass(frozen=True)
class Subscribe:
    name: tuple[str, ...] | None  # a relation name, or None for `(query)`
    query_identifiers: frozenset[str]  # of the `(query)`
    query_from: str | None  # the name after FROM in the `(query)`, for errors
    keys: tuple[str, ...] | None  # ENVELOPE UPSERT (KEY (...))
    progress: bool
    snapshot: bool
    as_of: int | None
    as_of_at_least: bool


@dataclass(frozen=True)
class Declare:
    cursor: str
    subscribe: Subscribe


@dataclass(frozen=True)
class Fetch:
    cursor: str
    count: int | None  # None: ALL
    timeout: float | None  # seconds; None: wait for a row


@dataclass(frozen=True)
class Close:
    cursor: str | None  # None: CLOSE ALL


@dataclass(frozen=True)
class Deallocate:
    name: str | None  # None: DEALLOCATE ALL


Statement = (
    Begin
    | Commit
    | Rollback
    | SetVar
    | Show
    | ShowColumns
    | Select
    | SelectRows
    | Declare
    | Fetch
    | Close
    | Deallocate
)


def parse(text: str, tokens: Sequence[Token], params: Sequence[str | None] | None) -> Statement:
    """One statement. `params` None means "not bound yet" (Parse): any $n is accepted."""
    return _Parser(text, tokens, params).statement()


# -- the parser --------------------------------------------------------------------------

_INTERVAL = re.compile(
    r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(us|microseconds?|ms|milliseconds?|s|secs?|seconds?"
    r"|m|mins?|minutes?|h|hours?|d|days?)?\s*$",
    re.IGNORECASE,
)
_UNIT_SECONDS = {"u": 1e-6, "ms": 1e-3, "mi": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def interval_seconds(value: str) -> float:
    match = _INTERVAL.match(value)
    if not match:
        raise SqlError("22007", f'invalid input syntax for type interval: "{value}"')
    unit = (match.group(2) or "s").lower()
    if unit.startswith(("us", "micro")):
        key = "u"
    elif unit.startswith("milli") or unit == "ms":
        key = "ms"
    elif unit.startswith("min") or unit == "m":
        key = "m"
    else:
        key = unit[0]
    return float(match.group(1)) * _UNIT_SECONDS[key]


class _Parser:
    def __init__(
        self, text: str, tokens: Sequence[Token], params: Sequence[str | None] | None
    ) -> None:
        self.text = text
        self.tokens = list(tokens)
        self.params = params
        self.i = 0

    # -- helpers ---------------------------------------------------------------------

    def peek(self, offset: int = 0) -> Token | None:
        j = self.i + offset
        return self.tokens[j] if j < len(self.tokens) else None

    def at_kw(self, *words: str) -> bool:
        for offset, word in enumerate(words):
            token = self.peek(offset)
            if token is None or token.kind != "ident" or token.value != word:
                return False
        return True

    def accept_kw(self, *words: str) -> bool:
        if self.at_kw(*words):
            self.i += len(words)
            return True
        return False

    def expect_kw(self, *words: str) -> None:
        if not self.accept_kw(*words):
            raise self.error(" ".join(words).upper())

    def accept_op(self, op: str) -> bool:
        token = self.peek()
        if token is not None and token.kind == "op" and token.value == op:
            self.i += 1
            return True
        return False

    def expect_op(self, op: str) -> None:
        if not self.accept_op(op):
            raise self.error(op)

    def identifier(self) -> str:
        token = self.peek()
        if token is None or token.kind not in ("ident", "qident"):
            raise self.error("identifier")
        self.i += 1
        return token.value

    def expect_end(self) -> None:
        if self.peek() is not None:
            raise self.error("end of statement")

    def error(self, expected: str) -> SqlError:
        token = self.peek()
        if token is None:
            found = "EOF"
        elif token.kind == "ident":
            found = f'identifier "{token.value}"'
        elif token.kind == "string":
            found = f"string literal '{token.value}'"
        else:
            found = f"{token.kind} {self.text[token.start : token.end]!s}"
        return SqlError("42601", f"Expected {expected}, found {found}")

    def unsupported(self) -> SqlError:
        return SqlError(
            "42601",
            f'syntax error: the Materialize test double does not support "{self.text}"',
        )

    def literal(self) -> str:
        """A number, a string, or a bound parameter, as text."""
        token = self.peek()
        if token is None:
            raise self.error("a literal")
        if token.kind in ("number", "string"):
            self.i += 1
            return token.value
        if token.kind == "param":
            self.i += 1
            index = int(token.value[1:]) - 1
            if self.params is None:
                return "0"  # Parse: bound later
            if index < 0 or index >= len(self.params) or self.params[index] is None:
                raise SqlError("42P02", f"there is no parameter {token.value}")
            return str(self.params[index])
        raise self.error("a literal")

    # -- statements ------------------------------------------------------------------

    def statement(self) -> Statement:
        keyword = self.peek()
        word = keyword.value if keyword is not None and keyword.kind == "ident" else ""
        handler = {
            "begin": self.begin,
            "start": self.begin,
            "commit": self.commit,
            "end": self.commit,
            "rollback": self.rollback,
            "abort": self.rollback,
            "set": self.set_var,
            "reset": self.reset_var,
            "show": self.show,
            "select": self.select,
            "declare": self.declare,
            "fetch": self.fetch,
            "close": self.close,
            "deallocate": self.deallocate,
        }.get(word)
        if handler is None:
            raise self.unsupported()
        return handler()

    def begin(self) -> Statement:
        if not (self.accept_kw("begin") or self.accept_kw("start", "transaction")):
            raise self.unsupported()
        return Begin()  # isolation level and access mode are accepted and ignored

    def commit(self) -> Statement:
        self.i += 1
        self.accept_kw("work") or self.accept_kw("transaction")
        self.expect_end()
        return Commit()

    def rollback(self) -> Statement:
        self.i += 1
        self.accept_kw("work") or self.accept_kw("transaction")
        if self.at_kw("to"):
            raise SqlError("0A000", "savepoints are not supported by the Materialize test double")
        self.expect_end()
        return Rollback()

    def set_var(self) -> Statement:
        self.expect_kw("set")
        self.accept_kw("session") or self.accept_kw("local")
        if self.accept_kw("transaction") or self.accept_kw("characteristics"):
            return SetVar("transaction", None)  # accepted, ignored
        if self.accept_kw("time", "zone"):
            name = "timezone"
        else:
            name = self.identifier()
            while self.accept_op("."):
                name += "." + self.identifier()
            name = name.lower()
            if not (self.accept_op("=") or self.accept_kw("to")):
                raise self.error("= or TO")
        values: list[str] = []
        while True:
            token = self.peek()
            if token is None:
                raise self.error("a value")
            if token.kind == "ident" and token.value == "default" and not values:
                self.i += 1
                self.expect_end()
                return SetVar(name, None)
            sign = "-" if self.accept_op("-") else ""
            token = self.peek()
            if token is None or token.kind not in ("ident", "qident", "string", "number"):
                raise self.error("a value")
            self.i += 1
            values.append(sign + token.value)
            if not self.accept_op(","):
                break
        self.expect_end()
        return SetVar(name, ", ".join(values))

    def reset_var(self) -> Statement:
        self.expect_kw("reset")
        name = self.identifier().lower()
        self.expect_end()
        return SetVar(name, None)

    def show(self) -> Statement:
        self.expect_kw("show")
        if self.at_kw("columns", "from") or self.at_kw("columns", "in"):
            self.i += 2
            parts = [self.identifier()]
            while self.accept_op("."):
                parts.append(self.identifier())
            if self.at_kw("like") or self.at_kw("where"):
                raise self.unsupported()
            self.expect_end()
            return ShowColumns(tuple(parts))
        words: list[str] = []
        while (token := self.peek()) is not None:
            if token.kind == "op" and token.value == ".":
                words.append(".")
            elif token.kind in ("ident", "qident"):
                words.append(token.value)
            else:
                raise self.error("a configuration parameter")
            self.i += 1
        name = " ".join(words).replace(" . ", ".")
        aliases = {"transaction isolation level": "transaction_isolation", "time zone": "timezone"}
        name = aliases.get(name, name)
        if not name:
            raise self.error("a configuration parameter")
        return Show(name)

    def select(self) -> Statement:
        self.expect_kw("select")
        token = self.peek()
        if token is not None and token.kind == "op" and token.value == "*":
            return self.select_rows()
        function: str | None = None
        literal: str | None = None
        if token is not None and token.kind == "number":
            literal = token.value
            self.i += 1
        elif token is not None and token.kind == "ident":
            if self.accept_kw("pg_catalog") or self.accept_kw("mz_catalog"):
                self.expect_op(".")
            name = self.identifier()
            if name not in ("mz_version", "version", "mz_now"):
                raise self.unsupported()
            self.expect_op("(")
            self.expect_op(")")
            function = name
        else:
            raise self.unsupported()
        alias = self.identifier() if self.accept_kw("as") else None
        if self.peek() is not None:
            raise self.unsupported()
        return Select(function, literal, alias)

    def declare(self) -> Statement:
        self.expect_kw("declare")
        cursor = self.identifier()
        self.accept_kw("no", "scroll")
        self.expect_kw("cursor")
        if self.at_kw("with", "hold"):
            raise SqlError("0A000", "WITH HOLD is unsupported for cursors")
        self.accept_kw("without", "hold")
        self.expect_kw("for")
        if not self.at_kw("subscribe"):
            raise SqlError(
                "42601",
                "syntax error: the Materialize test double declares cursors only FOR "
                f'SUBSCRIBE: "{self.text}"',
            )
        return Declare(cursor, self.subscribe())

    def subscribe(self) -> Subscribe:
        self.expect_kw("subscribe")
        self.accept_kw("to")
        name, identifiers, query_from = self.target()
        keys: tuple[str, ...] | None = None
        if self.accept_kw("envelope"):
            if self.at_kw("debezium"):
                raise SqlError("0A000", "ENVELOPE DEBEZIUM is not supported by the test double")
            self.expect_kw("upsert")
            self.expect_op("(")
            self.expect_kw("key")
            self.expect_op("(")
            key_list = [self.identifier()]
            while self.accept_op(","):
                key_list.append(self.identifier())
            self.expect_op(")")
            self.expect_op(")")
            keys = tuple(key_list)
        if self.at_kw("within"):
            raise SqlError("0A000", "WITHIN TIMESTAMP ORDER BY is not supported by the test double")
        progress, snapshot = False, True
        if self.accept_kw("with"):
            self.expect_op("(")
            while True:
                option = self.peek()
                if (
                    option is None
                    or option.kind != "ident"
                    or option.value
                    not in (
                        "progress",
                        "snapshot",
                    )
                ):
                    raise self.error("one of PROGRESS or SNAPSHOT")
                self.i += 1
                value = self.option_bool()
                if option.value == "progress":
                    progress = value
                else:
                    snapshot = value
                if not self.accept_op(","):
                    break
            self.expect_op(")")
        as_of, at_least = self.as_of()
        if self.at_kw("up", "to"):
            raise SqlError("0A000", "UP TO is not supported by the Materialize test double")
        self.expect_end()
        return Subscribe(name, identifiers, query_from, keys, progress, snapshot, as_of, at_least)

    def target(self) -> tuple[tuple[str, ...] | None, frozenset[str], str | None]:
        """A relation name, or `(query)`: (name or None, the query's identifiers, the
        name after its FROM)."""
        if not self.accept_op("("):
            parts = [self.identifier()]
            while self.accept_op("."):
                parts.append(self.identifier())
            return tuple(parts), frozenset(), None
        start, depth = self.i, 1
        while depth:
            token = self.peek()
            if token is None:
                raise self.error(")")
            if token.kind == "op" and token.value in "()":
                depth += 1 if token.value == "(" else -1
            self.i += 1
        query = self.tokens[start : self.i - 1]
        identifiers = frozenset(t.value for t in query if t.kind in ("ident", "qident"))
        query_from = None
        for before, after in itertools.pairwise(query):
            if before.kind == "ident" and before.value == "from" and query_from is None:
                if after.kind in ("ident", "qident"):
                    query_from = after.value
        return None, identifiers, query_from

    def select_rows(self) -> SelectRows:
        self.expect_op("*")
        self.expect_kw("from")
        name, identifiers, query_from = self.target()
        if self.at_kw("as") and not self.at_kw("as", "of"):
            self.expect_kw("as")
            self.identifier()  # the alias: only the relation's own columns are named
        as_of, _ = self.as_of()
        equals: list[tuple[str, str | None]] = []
        if self.accept_kw("where"):
            while True:
                column = self.identifier()
                self.expect_op("=")
                equals.append((column, self.literal()))
                if not self.accept_kw("and"):
                    break
        if as_of is None:
            as_of, _ = self.as_of()
        self.expect_end()
        return SelectRows(name, identifiers, query_from, tuple(equals), as_of)

    def as_of(self) -> tuple[int | None, bool]:
        """`AS OF [AT LEAST] <t>[::type]`, if there: (t, at least), else (None, False)."""
        if not self.accept_kw("as", "of"):
            return None, False
        at_least = self.accept_kw("at", "least")
        text = self.literal()
        if self.accept_op("::"):
            self.identifier()
        try:
            return int(text), at_least
        except ValueError:
            raise SqlError(
                "22P02", f'invalid input syntax for type mz_timestamp: "{text}"'
            ) from None

    def option_bool(self) -> bool:
        """`[=] true|false|on|off|'true'|...`; no value at all means true."""
        explicit = self.accept_op("=")
        token = self.peek()
        if token is None or (token.kind == "op" and token.value in ",)"):
            if explicit:
                raise self.error("a value")
            return True
        self.i += 1
        word = token.value.lower()
        if word in ("true", "on", "t", "1"):
            return True
        if word in ("false", "off", "f", "0"):
            return False
        raise SqlError("22023", f"invalid value for a boolean option: {token.value!r}")

    def fetch(self) -> Statement:
        self.expect_kw("fetch")
        self.accept_kw("forward")
        count: int | None = 1
        token = self.peek()
        if self.accept_kw("all"):
            count = None
        elif self.accept_kw("next"):
            count = 1
        elif token is not None and token.kind == "number":
            if not token.value.isdigit():
                raise SqlError("42601", f"invalid FETCH count: {token.value}")
            count = int(token.value)
            self.i += 1
        self.accept_kw("from") or self.accept_kw("in")
        cursor = self.identifier()
        timeout: float | None = None
        if self.accept_kw("with"):
            self.expect_op("(")
            if not self.accept_kw("timeout"):
                raise self.error("TIMEOUT")
            self.accept_op("=")
            timeout = interval_seconds(self.literal())
            self.expect_op(")")
        self.expect_end()
        return Fetch(cursor, count, timeout)

    def close(self) -> Statement:
        self.expect_kw("close")
        cursor = None if self.accept_kw("all") else self.identifier()
        self.expect_end()
        return Close(cursor)

    def deallocate(self) -> Statement:
        self.expect_kw("deallocate")
        self.accept_kw("prepare")
        name = None if self.accept_kw("all") else self.identifier()
        self.expect_end()
        return Deallocate(name)
