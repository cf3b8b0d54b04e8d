"""Declarative subscriptions files: read, check, and turn into specs for `apply`.

A file is JSON, or YAML (by a .yaml/.yml extension; sniffed for any other name)::

    subscriptions:
      - name: orders
        source: {kind: postgres, dsn: env:SOURCE_DATABASE_URL, relation: public.orders}
        index: {name: orders}        # adopt: true lets searchsync own an index it did not create
        snapshot: index
        batch: {max_size: 1000, max_age_ms: 5000}
        backpressure: {pause_at: 5000, resume_at: 2500}
      - name: orders-search
        source:
          kind: materialize
          dsn: env:MATERIALIZE_URL
          relation: SELECT order_id, status FROM orders_search_source_mv  # or a view's name
          key: [order_id]            # required: a view has no primary key
          cluster: serving           # optional: the connection's default
          envelope: upsert           # optional: diff (default) or upsert
        index: {name: orders}
      - name: books                  # documents posted to the API: no database is read
        source: {kind: push}
        index: {name: books}

pydantic checks the shape and the types; the values are checked by the model's own
validators (`services.validate_config`), so a file and the admin accept the same things.
A file with any error is rejected whole: `DeclarationError.problems` lists every error,
each naming the subscription and the field, in the file's terms (`source.relation`).
"""

from __future__ import annotations

import difflib
import enum
import json
import math
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

import yaml
from django.core.exceptions import ValidationError
from django.core.validators import slug_re
from pydantic import BaseModel, ConfigDict, Field
from pydantic import ValidationError as PydanticValidationError

from syncer.errors import DeclarationError, Problem
from syncer.models import Subscription
from syncer.operations.subscriptions import CONFIG_FIELDS, SubscriptionSpec, validate_config
from syncer.sources import kinds
from syncer.text import redact
from syncer.validators import text_problem

# Where each declared model field lives in a file.
FIELD_PATHS: dict[str, tuple[str, ...]] = {
    "name": ("name",),
    "enabled": ("enabled",),
    "source_kind": ("source", "kind"),
    "source_dsn": ("source", "dsn"),
    "relation": ("source", "relation"),
    "key_columns": ("source", "key"),
    "source_cluster": ("source", "cluster"),
    "source_envelope": ("source", "envelope"),
    "index_name": ("index", "name"),
    "index_settings": ("index", "settings"),
    "index_mappings": ("index", "mappings"),
    "adopt_index": ("index", "adopt"),
    "snapshot_mode": ("snapshot",),
    "batch_max_size": ("batch", "max_size"),
    "batch_max_age_ms": ("batch", "max_age_ms"),
    "backpressure_pause_at": ("backpressure", "pause_at"),
    "backpressure_resume_at": ("backpressure", "resume_at"),
}
FIELD_LABELS: dict[str, str] = {name: ".".join(path) for name, path in FIELD_PATHS.items()}
_FIELD_ORDER = {name: position for position, name in enumerate(FIELD_PATHS)}
# What Subscription.source_problems reads.
_SOURCE_FIELDS = {
    "source_kind",
    "source_dsn",
    "relation",
    "key_columns",
    "source_cluster",
    "source_envelope",
}
# Options only some kinds have (`Kind.options`): (key in source, model field, what it is).
_SOURCE_OPTIONS = (
    ("cluster", "source_cluster", "a cluster"),
    ("envelope", "source_envelope", "an envelope"),
)

# The sections a file has after `source`: its errors come after the source's.
_AFTER_SOURCE = frozenset({"index", "snapshot", "batch", "backpressure"})

MAX_BYTES = 10 * 1024 * 1024
MAX_VALUES = 200_000  # bounds YAML alias expansion ("billion laughs")
MAX_DEPTH = 64
MAX_ERRORS = 100
_SHOWN_CHARS = 60
_HINTS = {
    "name": "a slug, e.g. orders",
    "source": "a mapping with kind, dsn and relation ({kind: push} alone for a push source)",
    "source.kind": " or ".join(kinds.KINDS),
    "source.dsn": "e.g. env:SOURCE_DATABASE_URL",
    "source.relation": "e.g. public.orders",
    "source.key": "a list of column names, e.g. [order_id]",
    "source.cluster": "a cluster name, e.g. serving",
    "source.envelope": "diff or upsert",
    "index": "a mapping with at least a name",
    "index.name": "e.g. orders",
}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _Source(_Section):
    kind: str
    dsn: str = ""  # required by the model for the kinds that read a database (not push)
    relation: str = ""
    key: list[str] = Field(default_factory=list)
    cluster: str = ""
    envelope: str = ""


class _Index(_Section):
    name: str
    settings: dict[str, Any] = Field(default_factory=dict)
    mappings: dict[str, Any] = Field(default_factory=dict)
    adopt: bool = False


class _Batch(_Section):
    max_size: int = 0
    max_age_ms: int = 0


class _Backpressure(_Section):
    pause_at: int = 0
    resume_at: int = 0


class _Entry(_Section):
    name: str
    enabled: bool = True
    source: _Source
    index: _Index
    snapshot: str = ""
    batch: _Batch = Field(default_factory=_Batch)
    backpressure: _Backpressure = Field(default_factory=_Backpressure)


def load(path: str | Path) -> list[SubscriptionSpec]:
    """Read and check the file at `path`; raise DeclarationError."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as exc:
        _refuse(str(path), f"cannot read the file ({exc.strerror or exc})")
    return parse(data, filename=str(path))


def parse(text: str | bytes, *, filename: str = "<stdin>") -> list[SubscriptionSpec]:
    """Check a whole file's text; return one spec per subscription or raise DeclarationError.

    `filename` picks the format by its extension and prefixes syntax errors.
    """
    document = _load_document(text, filename)
    items, errors = _subscription_items(document, filename)
    specs: list[SubscriptionSpec] = []
    named: dict[str, list[int]] = {}
    for position, item in enumerate(items):
        label, name = _label(item, position)
        if name is not None:
            named.setdefault(name, []).append(position)
        spec, item_errors = _parse_item(item)
        errors.extend(
            Problem(label, _clean(path), _clean(message)) for path, message in item_errors
        )
        if spec is not None:
            specs.append(spec)
    for name, positions in named.items():
        if len(positions) > 1:
            where = ", ".join(f"subscriptions[{p}]" for p in positions)
            message = (
                f"declared {len(positions)} times ({where}); give each subscription a unique name"
            )
            errors.append(Problem(f"subscription '{name}'", "name", message))
    if errors:
        if len(errors) > MAX_ERRORS:
            hidden = len(errors) - MAX_ERRORS
            errors = [*errors[:MAX_ERRORS], Problem("", "", f"... and {hidden} more errors")]
        raise DeclarationError(errors)
    return specs


# -- syntax ------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
            seen.add(key)
        except TypeError:
            continue  # an unhashable key: SafeLoader reports it below
        if duplicate:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {_show(key)}", key_node.start_mark
            )
    return loader.construct_mapping(node, deep=True)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _load_document(text: str | bytes, filename: str) -> Any:
    if len(text) > MAX_BYTES:
        _refuse(filename, f"larger than {MAX_BYTES // 1024 // 1024} MiB")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            _refuse(filename, f"not UTF-8 text (bad byte at offset {exc.start}); save it as UTF-8")
    suffix = Path(filename).suffix.lower()
    if suffix in {".yaml", ".yml"}:
        document = _load_yaml(text, filename)
    elif suffix == ".json":
        document = _load_json(text, filename)
    elif text.lstrip()[:1] in {"{", "["}:
        try:
            document = _load_json(text, filename)
        except DeclarationError as json_error:
            try:
                document = _load_yaml(text, filename)
            except DeclarationError:
                raise json_error from None
    else:
        document = _load_yaml(text, filename)
    _check_size(document, filename)
    return document


def _load_yaml(text: str, filename: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)  # a SafeLoader: builds plain data only
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = ", ".join(p for p in (exc.context, exc.problem) if p) or "invalid YAML"
        _refuse(_clean(f"{filename}{where}"), _clean(problem))
    except yaml.YAMLError as exc:
        _refuse(_clean(filename), _clean(f"invalid YAML: {exc}"))
    except RecursionError:
        _refuse(filename, "nested too deeply")


def _load_json(text: str, filename: str) -> Any:
    def reject_constant(name: str) -> Any:
        raise ValueError(f"{name} is not a JSON number; use a finite number")

    def reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in pairs:
            if key in result:
                raise ValueError(f"duplicate key {_show(key)} in an object")
            result[key] = value
        return result

    try:
        return json.loads(text, object_pairs_hook=reject_duplicates, parse_constant=reject_constant)
    except json.JSONDecodeError as exc:
        _refuse(f"{filename}, line {exc.lineno}, column {exc.colno}", f"invalid JSON: {exc.msg}")
    except ValueError as exc:
        _refuse(_clean(filename), _clean(f"invalid JSON: {exc}"))
    except RecursionError:
        _refuse(filename, "nested too deeply")


def _check_size(document: Any, filename: str) -> None:
    """Refuse documents too big or too deep to check safely (aliases can make either)."""
    stack: list[tuple[Any, int]] = [(document, 0)]
    count = 0
    while stack:
        value, depth = stack.pop()
        count += 1
        if count > MAX_VALUES:
            _refuse(
                filename,
                f"more than {MAX_VALUES} values (YAML aliases count each time they are used); "
                "make the file smaller",
            )
        if depth > MAX_DEPTH:
            _refuse(filename, f"nested more than {MAX_DEPTH} levels deep")
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)


# -- structure ---------------------------------------------------------------------------


def _subscription_items(document: Any, filename: str) -> tuple[list[Any], list[Problem]]:
    shape = "the file must be a mapping with a 'subscriptions' list"
    if document is None:
        _refuse(filename, f"the file is empty; {shape}")
    if not isinstance(document, dict):
        _refuse(filename, f"{shape}, not {_type_name(document)}")
    errors = [
        Problem(_clean(filename), "", _clean(f"unknown top-level key {_show(key)}; {shape}"))
        for key in document
        if key != "subscriptions"
    ]
    items = document.get("subscriptions")
    if "subscriptions" not in document:
        raise DeclarationError([*errors, Problem(filename, "", f"no 'subscriptions' key; {shape}")])
    if not isinstance(items, list):
        message = (
            f"expected a list, got {_type_name(items)} (write `subscriptions: []` to declare none)"
        )
        raise DeclarationError([*errors, Problem(filename, "subscriptions", message)])
    return items, errors


def _refuse(where: str, message: str) -> NoReturn:
    """Refuse the file as a whole: `where` is the file (and the line, for a syntax error)."""
    raise DeclarationError([Problem(where, "", message)]) from None


def _label(item: Any, position: int) -> tuple[str, str | None]:
    """How errors name a subscription: by its name if it is valid, else by position."""
    name = item.get("name") if isinstance(item, dict) else None
    if isinstance(name, str) and len(name) <= 63 and slug_re.match(name):
        return f"subscription '{name}'", name
    return f"subscriptions[{position}]", None


def _parse_item(item: Any) -> tuple[SubscriptionSpec | None, list[tuple[str, str]]]:
    """The entry's spec, or its errors as (field path, message); the path is empty for the
    entry as a whole."""
    if not isinstance(item, dict):
        expected = f"expected a mapping with name, source and index, got {_type_name(item)}"
        return None, [("", expected)]
    errors: list[tuple[str, str]] = []
    broken: set[str] = set()  # model fields whose value cannot be checked further
    try:
        _Entry.model_validate(item)
    except PydanticValidationError as exc:
        for error in exc.errors():
            loc = tuple(error["loc"])
            errors.append(_describe_structure_error(error["type"], loc, error))
            broken.update(f for f, path in FIELD_PATHS.items() if _overlaps(loc, path))

    values: dict[str, Any] = {}
    for field, path in FIELD_PATHS.items():
        present, value = _lookup(item, path)
        if present and field not in broken:
            values[field] = value

    source = item.get("source")
    kind = kinds.named(values.get("source_kind"))
    if kind is not None and kind.reads_database and isinstance(source, dict):
        # Optional in the file's shape for push alone: missing, said as pydantic would.
        after = next(
            (i for i, (path, _) in enumerate(errors) if path.split(".")[0] in _AFTER_SOURCE),
            len(errors),
        )
        for key, field in (("relation", "relation"), ("dsn", "source_dsn")):
            if key not in source and field not in broken:
                hint = _HINTS[f"source.{key}"]
                errors.insert(after, (f"source.{key}", f"required; add it ({hint})"))
                broken.add(field)
    if kind is not None and isinstance(source, dict):
        for option, field, what in _SOURCE_OPTIONS:
            if option not in kind.options and option in source and field not in broken:
                # Said here, and the model left its default, because even an empty or
                # default value has no place in a postgres source.
                errors.append(
                    (f"source.{option}", f"only materialize sources have {what}; remove it")
                )
                values.pop(field, None)
    for field in list(values):
        problems = list(_json_problems(values[field], FIELD_LABELS[field]))
        errors.extend(problems)
        if problems:
            broken.add(field)
            del values[field]

    subscription = Subscription(**values)
    try:
        if broken:
            _validate_readable_fields(subscription, broken)
        else:
            validate_config(subscription)
    except ValidationError as exc:
        errors.extend(_describe_model_errors(exc, values))
    if errors:
        return None, errors
    return SubscriptionSpec(
        name=subscription.name,
        values={field: _plain(getattr(subscription, field)) for field in CONFIG_FIELDS},
    ), []


def _validate_readable_fields(subscription: Subscription, broken: set[str]) -> None:
    """Check what can be checked while `broken` fields are unreadable; raise ValidationError.

    The cross-field checks of Subscription.clean wait until every field can be read, except
    the source's own, which run once the source fields are all readable.
    """
    declared = {"name", *CONFIG_FIELDS}
    exclude = [
        f.name
        for f in Subscription._meta.concrete_fields
        if f.name not in declared or f.name in broken
    ]
    errors: dict[str, Any] = {}
    try:
        subscription.clean_fields(exclude=exclude)
    except ValidationError as exc:
        errors = exc.update_error_dict(errors)
    if not broken & _SOURCE_FIELDS:
        problems = subscription.source_problems()
        if problems:
            errors = ValidationError(problems).update_error_dict(errors)
    if errors:
        raise ValidationError(errors)


def _plain(value: Any) -> Any:
    """A model default such as `SnapshotMode.INDEX` as the plain value a file gives."""
    return value.value if isinstance(value, enum.Enum) else value


def _overlaps(loc: tuple[Any, ...], path: tuple[str, ...]) -> bool:
    """Whether an error at `loc` concerns the field at `path` (inside it, or a parent)."""
    n = min(len(loc), len(path))
    return loc[:n] == path[:n]


def _lookup(item: dict[str, Any], path: tuple[str, ...]) -> tuple[bool, Any]:
    value: Any = item
    for part in path:
        if not isinstance(value, dict) or part not in value:
            return False, None
        value = value[part]
    return True, value


def _json_problems(value: Any, path: str) -> Iterator[tuple[str, str]]:
    """What PostgreSQL would refuse, or its jsonb silently change, in a declared value."""
    pending: list[tuple[Any, str]] = [(value, path)]
    while pending:
        current, where = pending.pop(0)
        if isinstance(current, str):
            problem = text_problem(current)
            if problem:
                yield where, problem
        elif isinstance(current, float):
            if not math.isfinite(current):
                yield where, f"{current} is not a JSON number; use a finite number"
        elif current is None or isinstance(current, (bool, int)):
            pass
        elif isinstance(current, list):
            pending.extend((v, f"{where}[{i}]") for i, v in enumerate(current))
        elif isinstance(current, dict):
            for key, v in current.items():
                if not isinstance(key, str):
                    yield where, f"key {_show(key)} is not a string; quote it"
                elif text_problem(key):
                    yield where, f"key {_show(key)} {text_problem(key)}"
                else:
                    pending.append((v, f"{where}.{_show(key, quote=False)}"))
        else:
            yield where, f"{_type_name(current)} is not a JSON value; quote it as a string"


# -- messages ----------------------------------------------------------------------------

_EXPECTED = {
    "string_type": "a string",
    "int_type": "a whole number",
    "bool_type": "true or false",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}


def _describe_structure_error(kind: str, loc: tuple[Any, ...], error: Any) -> tuple[str, str]:
    """pydantic's error at `loc` as (field path, message)."""
    if kind == "invalid_key" or "[key]" in loc:
        key_at = loc.index("[key]") - 1 if "[key]" in loc else len(loc) - 1
        return _path(loc[:key_at]), f"key {_show(loc[key_at])} is not a string; quote it"
    path = _path(loc)
    if kind == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        where = f"{_path(loc[:-1])} takes" if len(loc) > 1 else "a subscription takes"
        message = f"unknown key; {where} {', '.join(allowed)}"
        if isinstance(loc[-1], str):
            close = difflib.get_close_matches(loc[-1], allowed, n=1)
            if close:
                message += f" (did you mean '{close[0]}'?)"
        return path, message
    if kind == "missing":
        hint = _HINTS.get(path)
        return path, "required; add it" + (f" ({hint})" if hint else "")
    if kind in _EXPECTED:
        hint = _HINTS.get(path) if kind in {"list_type", "string_type"} else None
        message = f"expected {_EXPECTED[kind]}, got {_type_name(error.get('input'))}"
        return path, message + (f" ({hint})" if hint else "")
    return path, str(error["msg"])


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    model: type[BaseModel] = _Entry
    for part in loc:
        info = model.model_fields.get(part) if isinstance(part, str) else None
        annotation = info.annotation if info else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def _describe_model_errors(
    exc: ValidationError, values: dict[str, Any]
) -> Iterator[tuple[str, str]]:
    error_dict = getattr(exc, "error_dict", None) or {"__all__": exc.error_list}
    in_file_order = sorted(error_dict.items(), key=lambda item: _FIELD_ORDER.get(item[0], 1000))
    for field, field_errors in in_file_order:
        label = FIELD_LABELS.get(field, field)
        for error in field_errors:
            message = " ".join(error.messages)
            if error.code == "invalid_choice":
                choices = getattr(Subscription._meta.get_field(field), "choices", None) or []
                value = (error.params or {}).get("value")
                message = f"{_show(value)} is not one of: {', '.join(str(c) for c, _ in choices)}"
            elif field == "name":
                message = f"{_show(values.get('name'))}: {message}"
            yield ("" if field == "__all__" else label), message


def _path(loc: Sequence[Any]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + _show(part, quote=False)
    return text or "(top)"


# bool before int: True is an int to isinstance.
_TYPE_NAMES: tuple[tuple[type, str], ...] = (
    (type(None), "null"),
    (bool, "true/false"),
    (int, "a number"),
    (float, "a decimal number"),
    (str, "a string"),
    (list, "a list"),
    (dict, "a mapping"),
)


def _type_name(value: Any) -> str:
    """A value's type as a subscriptions file's author knows it."""
    for kind, name in _TYPE_NAMES:
        if isinstance(value, kind):
            return name
    return f"a {type(value).__name__}"


def _show(value: Any, *, quote: bool = True) -> str:
    """A value fit for a one-line message: short, with control characters escaped."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) > _SHOWN_CHARS:
        text = text[:_SHOWN_CHARS] + "…"
    text = _escape(text)
    return f"'{text}'" if quote and isinstance(value, str) else text


_LONG_QUOTED = re.compile(f"'([^']{{{_SHOWN_CHARS + 1},}})'")


def _clean(message: str) -> str:
    """Hide passwords, shorten long quoted values and escape control characters."""
    message = _LONG_QUOTED.sub(lambda m: f"'{m.group(1)[:_SHOWN_CHARS]}…'", redact(message))
    return _escape(message)


def _escape(text: str) -> str:
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)
