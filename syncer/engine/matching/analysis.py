"""What a filter's text says, read from its parse tree: the problems that refuse it and
the conjuncts that pin a value or bound a number.

The evaluating engine (`cel`, common-expression-language) exposes no syntax tree, so the
text is also parsed by cel-python's grammar (`celpy.celparser`, lark, with positions).
The two parsers agree on CEL; where they might not, the property test of the matcher
(brute-force evaluation by the engine against the index built from this tree) would
show a lost match. Literal values are read by the engine itself (`cel.evaluate` of the
literal's text), so a pinned value is exactly what the engine compares with.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path as FilePath

import cel
import celpy.celparser
from celpy.celparser import CELParseError, CELParser
from lark import Lark, Token, Tree
from lark.exceptions import LarkError, UnexpectedToken

from syncer.errors import FilterProblem

VARIABLES = ("doc", "old", "op", "key", "position")
DOCUMENT_VARIABLES = ("doc", "old")
JSON_TYPES = frozenset({"json", "jsonb"})

MAX_LENGTH = 2_000
"""Characters of filter text: evaluation time grows with the expression's size, and no
engine can interrupt a running evaluation."""
MAX_DEPTH = 12
"""Nested sub-expressions (parentheses, call arguments, list elements)."""
MAX_LIST_SIZE = 100
"""Elements of one list literal (`in [...]`): more belongs in several subscriptions."""
MAX_REGEX_LENGTH = 200
"""Characters of a `matches()` pattern. The engine's regex (Rust `regex`, RE2 semantics)
runs in linear time, so only the automaton's size needs a bound."""

GLOBAL_FUNCTIONS = frozenset(
    {"has", "size", "int", "uint", "double", "string", "timestamp", "duration"}
)
METHODS = frozenset({"startsWith", "endsWith", "contains", "matches", "size"})
COMPREHENSIONS = frozenset({"all", "exists", "exists_one", "map", "filter"})

Scalar = bool | int | float | str | None
Path = tuple[str, ...]

_PASS_THROUGH = frozenset(
    {"expr", "conditionalor", "conditionaland", "relation", "addition", "multiplication"}
)
_WRAPPERS = frozenset({"unary", "member", "primary", "paren_expr"})
_CHECKED = frozenset(
    {"ident", "dot_ident", "dot_ident_arg", "member_object", "ident_arg", "member_dot_arg"}
    | {"list_lit", "map_lit"}
)
"""The nodes `_check` looks at."""
_READS = frozenset({"member_dot", "member_index"})
"""The nodes `_read` looks at."""


@functools.cache
def _parser() -> CELParser:
    """cel-python's parser, built on first use: building its tables takes a fifth of a
    second, which a process that never compiles a filter need not pay."""
    return CELParser()


@functools.cache
def _unpositioned_parser() -> Lark:
    """The same grammar and options as cel-python's parser but for the nodes' positions
    (`propagate_positions`), which only a problem's message needs: it parses twice as
    fast, and a worker loading 100,000 live subscriptions parses thousands of texts.
    The tokens keep their positions either way."""
    grammar = (FilePath(celpy.celparser.__file__).parent / "cel.lark").read_text()
    return Lark(
        grammar,
        parser="lalr",
        start="expr",
        g_regex_flags=re.M,
        lexer_callbacks={"IDENT": CELParser.ambiguous_literals},
        propagate_positions=False,
        maybe_placeholders=False,
        priority="invert",
    )


@dataclass(frozen=True, slots=True)
class Pin:
    """A top-level conjunct `path == literal` or `path in [literals]`: the filter can
    only match a change whose value at `path` equals one of `values`."""

    path: Path
    values: tuple[Scalar, ...]


@dataclass(frozen=True, slots=True)
class RangePin:
    """A top-level conjunct `path > number` (`<`, `<=`, `>=`; or the literal on the left,
    read here as `path <operator> bound`): the filter can only match a change whose value
    at `path` is a number on that side of `bound`."""

    path: Path
    operator: str
    """One of "<", "<=", ">", ">=", as in `path <operator> bound`."""
    bound: int | float


@dataclass(frozen=True, slots=True)
class FieldRead:
    """A field read straight off doc or old (`doc.total`: `column` "total"), or one level
    below such a field (`doc.meta.region`: `below` "region"). Kept, rather than the parse
    tree, to check the fields of each sync subscription registering the same text."""

    column: str
    position: int
    below: str | None = None
    below_position: int = 0


@dataclass(frozen=True, slots=True)
class Analysis:
    problems: tuple[FilterProblem, ...]
    """What refuses the text whatever the sync subscription."""
    reads: tuple[FieldRead, ...]
    pins: tuple[Pin, ...]
    """The top-level conjuncts that pin a value, in the order of the text."""
    pin_only: bool = False
    """The filter is its one pin and nothing else (`doc.tenant == 7`)."""
    ranges: tuple[RangePin, ...] = ()
    """The top-level conjuncts that bound a number, in the order of the text."""


def analyse(text: str) -> Analysis:
    """Parse the text and check every rule that does not depend on the fields."""
    shaped = _by_shape(text)
    if shaped is not None:
        return shaped
    if 0 < len(text) <= MAX_LENGTH and text.strip():
        # The fast parse first: a text it finds nothing wrong with is analysed exactly as
        # the positioned parse would; any problem is looked at again with the positions.
        try:
            fast: Analysis | None = _analysis(_unpositioned_parser().parse(text), [])
        except LarkError:
            fast = None  # the positioned parse below says where and why
        if fast is not None and not fast.problems:
            return fast
    tree, found = _parse(text)
    if tree is None:
        return Analysis(tuple(found), (), ())
    return _analysis(tree, found)


def _analysis(tree: Tree[Token], found: list[FilterProblem]) -> Analysis:
    nodes, depth = _nodes(tree)
    if depth > MAX_DEPTH:
        found.append(
            FilterProblem(
                None,
                f"the filter nests {depth} levels deep; at most {MAX_DEPTH} are allowed: "
                "remove parentheses or split it",
            )
        )
    reads: list[FieldRead] = []
    unknown: list[Token] = []
    bound: set[str] = set()
    for node in nodes:
        kind = node.data
        if kind in _CHECKED:
            found.extend(_check(node, unknown, bound))
        elif kind in _READS:
            read = _read(node)
            if read is not None:
                reads.append(read)
    found.extend(
        FilterProblem(
            name.start_pos,
            f"unknown variable '{name}': a filter reads doc, old, op, key and position "
            "(e.g. doc.status)",
        )
        for name in unknown
        if name not in bound  # a refused comprehension's variable: its refusal says enough
    )
    if found:
        return Analysis(_in_order(found), tuple(reads), ())
    conjuncts = _conjuncts(tree)
    pins = tuple(pin for pin in map(_pin, conjuncts) if pin is not None)
    ranges = tuple(bound for bound in map(_range, conjuncts) if bound is not None)
    return Analysis(
        (), tuple(reads), pins, pin_only=len(conjuncts) == len(pins) == 1, ranges=ranges
    )


# -- one analysis per shape -----------------------------------------------------------------
#
# 100,000 live subscriptions often differ only in a value (`doc.tenant == 4711`,
# `doc.region == "eu-7"`), and a worker starting analyses every distinct text. Texts
# that differ only in their literals' values (decimal integers, plain double-quoted
# strings) have the same tokens but for those values (each literal is one INT_LIT or
# STRING_LIT token: an LALR parse depends on the tokens' types only), so one analysis
# serves them all: the shape's, with each literal replaced by a sentinel no other
# literal can be (10**18 + its index; "\ue000" and its index). A problem-free analysis
# refers to literals only in its pins' values and, through positions, its reads' (when
# nothing is indexed with `[...]` and nothing `matches()`: there a string's value is a
# field name or a pattern), which are put back. Anything that could make this inexact
# (escapes, single quotes, triple quotes, hex, uint or 19-digit literals, a shape with
# problems) goes the ordinary way.

_SENTINEL = 10**18
_TEXT_SENTINEL = "\ue000"
_SHAPE_TOKENS = re.compile(
    r'(?<!\w)"([^"\n]*)"|"[^"\n]*"|(?<![\w.])(0|[1-9][0-9]{0,17})(?![\w.])|(")'
)
"""A plain string (its value), a prefixed string (r"...", b"...": kept), a decimal
integer, or a quote that opens no one-line string."""
_NOT_SHAPED = re.compile(r"""[\\']|\"\"\"|0[xX]|[0-9][uU]|[0-9]{19}|[\w\])]\s*\[|matches|\ue000""")


def _by_shape(text: str) -> Analysis | None:
    """The analysis of the text from its shape's, or None to analyse it on its own."""
    if len(text) > MAX_LENGTH or _NOT_SHAPED.search(text):
        return None
    parts: list[str] = []
    literals: list[int | str] = []
    moved: list[tuple[int, int]] = []
    """(where, by how many characters the sentinel is longer) of each literal replaced."""
    last = 0
    for match in _SHAPE_TOKENS.finditer(text):
        string, digits, stray = match.groups()
        if stray is not None:
            return None
        if string is None and digits is None:
            continue  # a prefixed string, kept as it is
        index = len(literals)
        if string is not None:
            sentinel = f'"{_TEXT_SENTINEL}{index}"'
            literals.append(string)
        else:
            sentinel = str(_SENTINEL + index)
            literals.append(int(digits))
        parts.append(text[last : match.start()])
        parts.append(sentinel)
        moved.append((match.start(), len(sentinel) - (match.end() - match.start())))
        last = match.end()
    if not literals:
        return None
    parts.append(text[last:])
    shape = _shape_analysis("".join(parts))
    if shape is None:
        return None

    def value(v: Scalar) -> Scalar:
        if type(v) is int and abs(v) >= _SENTINEL:
            number = literals[abs(v) - _SENTINEL]
            assert isinstance(number, int)
            return number if v > 0 else -number
        if type(v) is str and v.startswith(_TEXT_SENTINEL):
            return literals[int(v[1:])]
        return v

    def position(at: int) -> int:
        """A position in the shape's text as one in this text (never inside a literal)."""
        shift = 0
        for start, extra in moved:
            if start + shift >= at:
                break
            shift += extra
        return at - shift

    return Analysis(
        (),
        tuple(
            FieldRead(r.column, position(r.position), r.below, position(r.below_position))
            if r.below is not None
            else FieldRead(r.column, position(r.position))
            for r in shape.reads
        ),
        tuple(Pin(pin.path, tuple(map(value, pin.values))) for pin in shape.pins),
        shape.pin_only,
        tuple(
            RangePin(r.path, r.operator, value(r.bound))  # type: ignore[arg-type]
            for r in shape.ranges
        ),
    )


@functools.lru_cache(maxsize=4096)
def _shape_analysis(shape: str) -> Analysis | None:
    """A shape's analysis; None when it has problems (its texts are analysed each on
    its own: the problems' messages and positions are theirs)."""
    if not shape.strip():
        return None
    try:
        found = _analysis(_unpositioned_parser().parse(shape), [])
    except LarkError:
        return None
    return None if found.problems else found


def field_problems(reads: Iterable[FieldRead], fields: Mapping[str, str]) -> list[FilterProblem]:
    """The fields a filter reads that the sync subscription's documents do not have: a
    field read off doc or old must be a column; below a json/jsonb column any path may
    exist, below another none."""
    found: dict[int, FilterProblem] = {}
    for read in reads:
        if read.column not in fields:
            known = ", ".join(sorted(fields)) or "none"
            found[read.position] = FilterProblem(
                read.position,
                f"unknown field '{read.column}': the sync subscription's documents have {known}",
            )
        elif read.below is not None and fields[read.column].lower() not in JSON_TYPES:
            found[read.below_position] = FilterProblem(
                read.below_position,
                f"field '{read.column}' is {fields[read.column]}, not json/jsonb: it has no "
                f"field '{read.below}'",
            )
    return list(found.values())


def _in_order(problems: Iterable[FilterProblem]) -> tuple[FilterProblem, ...]:
    return tuple(
        sorted(problems, key=lambda problem: -1 if problem.position is None else problem.position)
    )


def _parse(text: str) -> tuple[Tree[Token] | None, list[FilterProblem]]:
    """The parse tree, or the syntax error's position and message."""
    if len(text) > MAX_LENGTH:
        return None, [
            FilterProblem(
                MAX_LENGTH,
                f"the filter is {len(text)} characters long; at most {MAX_LENGTH} are "
                "allowed: split it into several live subscriptions",
            )
        ]
    if not text.strip():
        return None, [FilterProblem(0, "the filter is empty; write a CEL expression")]
    try:
        return _parser().parse(text), []
    except CELParseError as error:
        return None, [_syntax_problem(text, error)]


def _syntax_problem(text: str, error: CELParseError) -> FilterProblem:
    cause = error.__context__  # celpy re-raises lark's error, which says what was found
    position = _offset(text, error.line, error.column) if error.line and error.column else None
    if isinstance(cause, UnexpectedToken) and cause.token.type == "$END":
        return FilterProblem(
            len(text), "syntax error: the filter ends too early (an operand or a ')' is missing)"
        )
    if isinstance(cause, UnexpectedToken):
        return FilterProblem(position, f"syntax error: unexpected '{cause.token}' here")
    found = text[position] if position is not None and position < len(text) else ""
    hints = {
        "=": "; compare with ==",
        '"': ": a string is not closed",
        "'": ": a string is not closed",
        "&": "; 'and' is &&",
        "|": "; 'or' is ||",
    }
    return FilterProblem(
        position, f"syntax error: unexpected character '{found}'{hints.get(found, '')}"
    )


# -- validation ---------------------------------------------------------------------------


def _check(node: Tree[Token], unknown: list[Token], bound: set[str]) -> Iterator[FilterProblem]:
    """The rules one node breaks; names that are not variables go to `unknown`, the
    variables comprehensions bind to `bound`."""
    kind = node.data
    if kind == "ident":
        name = _token(node, 0)
        if name not in VARIABLES:
            unknown.append(name)
    elif kind in ("dot_ident", "dot_ident_arg"):
        yield FilterProblem(
            _start(node), "a leading '.' names a global; start with doc, old, op, key or position"
        )
    elif kind == "member_object":
        yield FilterProblem(_start(node), "message construction (Name{...}) is not supported")
    elif kind == "ident_arg":
        name = _token(node, 0)
        if name in COMPREHENSIONS or name not in GLOBAL_FUNCTIONS:
            yield _function_problem(name)
    elif kind == "member_dot_arg":
        name = _token(node, 1)
        if name in COMPREHENSIONS:
            bound.update(_bound_variable(node))
        if name not in METHODS:
            yield _function_problem(name)
        elif name == "matches":
            yield from _check_pattern(node, name)
    elif kind in ("list_lit", "map_lit"):
        size = _size(node)
        if size > MAX_LIST_SIZE:
            yield FilterProblem(
                _start(node),
                f"this literal has {size} elements; at most {MAX_LIST_SIZE} are allowed: "
                "split the filter into several live subscriptions",
            )


def _bound_variable(node: Tree[Token]) -> Iterator[str]:
    arguments = _arguments(node)
    variable = _unwrap(arguments[0]) if arguments else None
    if variable is not None and variable.data == "ident":
        yield str(_token(variable, 0))


def _function_problem(name: Token) -> FilterProblem:
    if name in COMPREHENSIONS:
        return FilterProblem(
            name.start_pos,
            f"'{name}' is a comprehension macro, not allowed: its cost grows with the data; "
            "compare the fields directly or use `in [...]`",
        )
    if name in METHODS and name not in GLOBAL_FUNCTIONS:
        return FilterProblem(name.start_pos, f"'{name}' is a method: write value.{name}(...)")
    allowed = ", ".join(sorted(GLOBAL_FUNCTIONS | METHODS))
    return FilterProblem(name.start_pos, f"function '{name}' is not allowed; use one of {allowed}")


def _check_pattern(node: Tree[Token], name: Token) -> Iterator[FilterProblem]:
    arguments = _arguments(node)
    literal = _literal_token(arguments[0]) if len(arguments) == 1 else None
    if literal is None or not literal.type.endswith("STRING_LIT"):
        yield FilterProblem(
            name.start_pos, "matches() takes one string literal, the pattern: matches('^eu-')"
        )
        return
    pattern = cel.evaluate(literal.value)
    if len(pattern) > MAX_REGEX_LENGTH:
        yield FilterProblem(
            literal.start_pos,
            f"the pattern is {len(pattern)} characters long; at most {MAX_REGEX_LENGTH} "
            "are allowed",
        )
        return
    try:  # the engine's own regex compiler says whether it accepts the pattern
        cel.evaluate(f'"".matches({literal.value})')
    except (RuntimeError, ValueError) as error:
        reason = str(error).split("error:")[-1].strip().splitlines()[0]
        reason = reason.split(". Check function arguments")[0]
        yield FilterProblem(literal.start_pos, f"invalid regular expression: {reason}")


def _read(node: Tree[Token]) -> FieldRead | None:
    """The field a member_dot or member_index reads off doc or old, or one level below."""
    if node.data not in ("member_dot", "member_index"):
        return None
    segment = _segment(node)
    if segment is None:
        return None
    parent = _unwrap(_child(node, 0))
    if _is_document(parent):
        return FieldRead(segment[0], segment[1])
    if parent.data in ("member_dot", "member_index") and _is_document(_unwrap(_child(parent, 0))):
        column = _segment(parent)
        if column is not None:
            return FieldRead(column[0], column[1], segment[0], segment[1])
    return None


def _is_document(node: Tree[Token]) -> bool:
    return node.data == "ident" and _token(node, 0) in DOCUMENT_VARIABLES


def _nodes(tree: Tree[Token]) -> tuple[list[Tree[Token]], int]:
    """Every node, parents before children, and how deep expressions nest. Each rule
    name becomes a plain str on the way: lark's Token compares in Python, and the
    analysis compares rule names hundreds of times per filter."""
    nodes: list[Tree[Token]] = []
    deepest = 0
    stack: list[tuple[Tree[Token], int]] = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        node.data = kind = str(node.data)
        if kind == "expr":
            depth += 1
            deepest = max(deepest, depth)
        nodes.append(node)
        for child in node.children:
            if isinstance(child, Tree):
                stack.append((child, depth))
    return nodes, deepest


def _size(node: Tree[Token]) -> int:
    if not node.children:
        return 0
    inner = node.children[0]
    assert isinstance(inner, Tree)
    count = len(inner.children)
    return count // 2 if node.data == "map_lit" else count


# -- pinned conjuncts ---------------------------------------------------------------------


def _conjuncts(tree: Tree[Token]) -> list[Tree[Token]]:
    return _operands(tree, "conditionaland")


def _operands(tree: Tree[Token], operator: str) -> list[Tree[Token]]:
    """The operands of a chain of `&&` (conditionaland) or `||` (conditionalor), through
    parentheses, in the order of the text. Iterative: a 2,000-character filter may chain
    hundreds, deeper than Python's recursion allows."""
    found: list[Tree[Token]] = []
    stack = [tree]
    while stack:
        node = _unwrap(stack.pop())
        if node.data == operator and len(node.children) == 2:
            left, right = node.children
            assert isinstance(left, Tree) and isinstance(right, Tree)
            stack.extend((right, left))
        else:
            found.append(node)
    return found


def _pin(node: Tree[Token]) -> Pin | None:
    if node.data == "conditionalor" and len(node.children) == 2:
        return _pin_disjunction(node)
    if node.data != "relation" or len(node.children) != 2:
        return None
    operator, right = node.children
    assert isinstance(operator, Tree) and isinstance(right, Tree)
    left = operator.children[0]
    assert isinstance(left, Tree)
    if operator.data == "relation_eq":
        for path_side, literal_side in ((left, right), (right, left)):
            path, value = _path(path_side), _literal(literal_side)
            if path is not None and value is not _NOT_SCALAR:
                return Pin(path, (value,))  # type: ignore[arg-type]
        return None
    if operator.data == "relation_in":
        path, values = _path(left), _list(right)
        return Pin(path, values) if path is not None and values is not None else None
    return None


_RANGE_OPERATORS = {
    "relation_lt": "<",
    "relation_le": "<=",
    "relation_gt": ">",
    "relation_ge": ">=",
}
_FLIPPED = {"<": ">", "<=": ">=", ">": "<", ">=": "<="}


def _range(node: Tree[Token]) -> RangePin | None:
    """`doc.total > 500` or `500 < doc.total`, with an int or double literal."""
    if node.data != "relation" or len(node.children) != 2:
        return None
    operator, right = node.children
    assert isinstance(operator, Tree) and isinstance(right, Tree)
    symbol = _RANGE_OPERATORS.get(str(operator.data))
    if symbol is None:
        return None
    left = operator.children[0]
    assert isinstance(left, Tree)
    for path_side, literal_side, reads_as in (
        (left, right, symbol),
        (right, left, _FLIPPED[symbol]),
    ):
        path, value = _path(path_side), _literal(literal_side)
        if path is not None and type(value) in (int, float):
            return RangePin(path, reads_as, value)  # type: ignore[arg-type]
    return None


def _pin_disjunction(node: Tree[Token]) -> Pin | None:
    """`doc.t == 1 || doc.t in [2, 3]`: a disjunction of pins on one path is one pin."""
    values: list[Scalar] = []
    path: Path | None = None
    for disjunct in _disjuncts(node):
        pin = _pin(disjunct)
        if pin is None or (path is not None and pin.path != path):
            return None
        path = pin.path
        values.extend(pin.values)
    return None if path is None else Pin(path, tuple(values))


def _disjuncts(tree: Tree[Token]) -> list[Tree[Token]]:
    return _operands(tree, "conditionalor")


def _path(tree: Tree[Token]) -> Path | None:
    """`doc.meta.region` as ("doc", "meta", "region"); None if not a plain field path."""
    segments: list[str] = []
    node = _unwrap(tree)
    while node.data in ("member_dot", "member_index"):
        segment = _segment(node)
        if segment is None:
            return None
        segments.append(segment[0])
        parent = node.children[0]
        assert isinstance(parent, Tree)
        node = _unwrap(parent)
    if node.data != "ident" or _token(node, 0) not in VARIABLES:
        return None
    return (str(_token(node, 0)), *reversed(segments))


class _NotScalar:
    """The type of `_NOT_SCALAR`: a literal that is no scalar (a list, a map, a call),
    told apart from the scalar `null`, which is None."""


_NOT_SCALAR = _NotScalar()


def _literal(tree: Tree[Token]) -> Scalar | _NotScalar:
    token = _literal_token(tree)
    if token is None:
        return _NOT_SCALAR
    try:
        value = cel.evaluate(token.value)
    except ValueError:  # a literal the grammar allows and the engine does not (`5.`):
        return _NOT_SCALAR  # no pin; compiling refuses the filter
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return _NOT_SCALAR  # bytes: not indexed


def _list(tree: Tree[Token]) -> tuple[Scalar, ...] | None:
    node = _unwrap(tree)
    if node.data != "list_lit":
        return None
    if not node.children:
        return ()
    exprlist = node.children[0]
    assert isinstance(exprlist, Tree)
    values = []
    for element in exprlist.children:
        assert isinstance(element, Tree)
        value = _literal(element)
        if isinstance(value, _NotScalar):
            return None
        values.append(value)
    return tuple(values)


# -- tree helpers -------------------------------------------------------------------------


def _unwrap(tree: Tree[Token]) -> Tree[Token]:
    """Down through the grammar's one-child levels to the node that means something."""
    node = tree
    while (node.data in _PASS_THROUGH and len(node.children) == 1) or node.data in _WRAPPERS:
        if len(node.children) != 1 or not isinstance(node.children[0], Tree):
            break
        node = node.children[0]
    return node


def _literal_token(tree: Tree[Token]) -> Token | None:
    node = _unwrap(tree)
    if node.data != "literal":
        return None
    token = node.children[0]
    return token if isinstance(token, Token) else None


def _segment(node: Tree[Token]) -> tuple[str, int] | None:
    """The field a member_dot (`.name`) or member_index with a string (`["name"]`) reads."""
    if node.data == "member_dot":
        token = _token(node, 1)
        return str(token), token.start_pos or 0
    index = node.children[1]
    assert isinstance(index, Tree)
    literal = _literal_token(index)
    if literal is None or not literal.type.endswith("STRING_LIT"):
        return None
    value = cel.evaluate(literal.value)
    return (value, literal.start_pos or 0) if isinstance(value, str) else None


def _arguments(node: Tree[Token]) -> list[Tree[Token]]:
    lists = [
        child for child in node.children if isinstance(child, Tree) and child.data == "exprlist"
    ]
    if not lists:
        return []
    return [child for child in lists[0].children if isinstance(child, Tree)]


def _child(node: Tree[Token], index: int) -> Tree[Token]:
    child = node.children[index]
    assert isinstance(child, Tree)
    return child


def _token(node: Tree[Token], index: int) -> Token:
    token = node.children[index]
    assert isinstance(token, Token)
    return token


def _start(node: Tree[Token]) -> int | None:
    return node.meta.start_pos if not node.meta.empty else None


def _offset(text: str, line: int, column: int) -> int:
    lines = text.split("\n")
    return sum(len(previous) + 1 for previous in lines[: line - 1]) + column - 1
