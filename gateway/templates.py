"""google.api.http path templates: parsing, matching and specificity.

Grammar (google/api/http.proto)::

    Template  = "/" Segments [ Verb ] ;
    Segments  = Segment { "/" Segment } ;
    Segment   = "*" | "**" | LITERAL | Variable ;
    Variable  = "{" FieldPath [ "=" Segments ] "}" ;
    FieldPath = IDENT { "." IDENT } ;
    Verb      = ":" LITERAL ;

Decisions, each pinned by tests/unit/test_templates.py:

* Verb. In a template the verb starts at the last ':' that follows the last '/' and the last '}'.
  A verb may not contain ':'. On matching, a template with a verb splits the raw last path segment at
  its LAST ':' (an encoded ``%3A`` never splits). A template without a verb keeps ':' as part of the
  segment, so ``/v1/things/{id}`` matches ``/v1/things/a:b`` with id ``a:b`` (grpc-gateway does the
  same: it appends the verb back to the last component). So ``/v1/accounts/abc:undelete`` also matches
  ``/v1/accounts/{id}``; the router must try verb templates first (``specificity`` ranks them first).
* Empty segments never match: ``/v1//accounts`` and ``/v1/accounts/`` (trailing slash) match neither
  ``/v1/accounts`` nor ``/v1/{id}``; ``/`` is the only path with zero segments. No redirects here.
* Percent-decoding. A variable whose template is one segment (``{id}``, ``{id=*}``) is decoded in
  full, ``%2F`` included. A variable spanning several segments or ``**`` (``{name=accounts/*}``,
  ``{path=**}``) is the raw matched segments joined with '/' and decoded except ``%2F``/``%2f``,
  which stay as written. Literal segments compare equal to their percent-decoded request segment.
  Values are UTF-8. A path with a malformed escape (``%zz``, ``%4``) or escapes that are not UTF-8
  raises ``PathDecodeError`` from every template, whether or not it would otherwise match, so the
  gateway can answer 400 regardless of route order.
* ``**`` matches zero or more segments, may appear once, and only as the last segment (before the
  verb). ``/v1/{path=**}`` matches ``/v1`` with path ``""``.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import unquote_to_bytes

__all__ = ["PathDecodeError", "PathTemplate", "TemplateError"]

# Segment kinds; their values are also the per-segment specificity ranks.
_MANY: Final = 0  # "**"
_ONE: Final = 1  # "*"
_LIT: Final = 2  # literal
_END: Final = 3  # end of template: beats a "**" that matched nothing

_LITERAL_CHARS: Final = frozenset(string.ascii_letters + string.digits + "-._~!$&'()+,;:@")
_IDENT: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BAD_ESCAPE: Final = re.compile(r"%(?![0-9A-Fa-f]{2})")
_SLASH_ESCAPE: Final = re.compile(r"(%2[Ff])")


class TemplateError(ValueError):
    """A path template that does not follow the grammar; names the problem and the 0-based position."""

    def __init__(self, problem: str, position: int, template: str) -> None:
        super().__init__(f"{problem} at position {position} in path template {template!r}")
        self.problem = problem
        self.position = position
        self.template = template


class PathDecodeError(ValueError):
    """A request path with an invalid percent-escape or non-UTF-8 bytes; the gateway answers 400."""


def _check_escapes(path: str) -> None:
    bad = _BAD_ESCAPE.search(path)
    if bad is not None:
        raise PathDecodeError(f"invalid percent-escape at position {bad.start()}")
    try:
        unquote_to_bytes(path).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PathDecodeError("its percent-escapes are not valid UTF-8") from exc


def _decode(raw: str) -> str:
    """Decode every escape; the caller has validated the whole path already."""
    return unquote_to_bytes(raw).decode("utf-8") if "%" in raw else raw


def _decode_keep_slash(raw: str) -> str:
    if "%" not in raw:
        return raw
    parts = _SLASH_ESCAPE.split(raw)  # odd indexes are the %2F/%2f separators themselves
    return "".join(part if i % 2 else _decode(part) for i, part in enumerate(parts))


@dataclass(frozen=True)
class _Var:
    name: str
    start: int  # first template segment index
    stop: int | None  # one past the last; None when the variable ends in "**"
    multi: bool  # spans several segments or "**": keep %2F encoded
    position: int


@dataclass(frozen=True)
class PathTemplate:
    """A parsed template; build with ``PathTemplate.parse``.

    ``specificity`` is a tuple key, larger = more specific, so a router picks
    ``max(candidates, key=lambda t: t.specificity)`` (or sorts with ``reverse=True``). It compares:
    1. templates with a verb before templates without one;
    2. then segment by segment, left to right: literal > ``*``/single variable > ``**``;
    3. where one template ends and the other continues with ``**``, the one that ended wins.
    A variable's segments rank by their own templates: ``{name=accounts/*}`` ranks as ``accounts/*``.
    """

    text: str
    verb: str | None
    variables: tuple[str, ...]
    specificity: tuple[int, ...] = field(repr=False, compare=False)
    _segments: tuple[tuple[int, str], ...] = field(repr=False, compare=False)
    _vars: tuple[_Var, ...] = field(repr=False, compare=False)

    @classmethod
    def parse(cls, text: str) -> PathTemplate:
        return _Parser(text).parse()

    def __str__(self) -> str:
        return self.text

    def match(self, path: str) -> dict[str, str] | None:
        """Match a raw (percent-encoded) URL path without query string; {field_path: value} or None.

        Raises ``PathDecodeError`` when the path holds a malformed escape.
        """
        if not path.startswith("/"):
            return None
        if "%" in path:
            _check_escapes(path)
        segs = path[1:].split("/") if len(path) > 1 else []
        if self.verb is not None:
            if not segs:
                return None
            head, colon, verb = segs[-1].rpartition(":")
            if not colon or (verb != self.verb and _decode(verb) != self.verb):
                return None
            segs[-1] = head
        if "" in segs:
            return None
        tmpl = self._segments
        fixed = len(tmpl) - 1 if tmpl and tmpl[-1][0] == _MANY else len(tmpl)
        if len(segs) < fixed or (fixed == len(tmpl) and len(segs) != fixed):
            return None
        for i in range(fixed):
            kind, lit = tmpl[i]
            if kind == _LIT and segs[i] != lit and ("%" not in segs[i] or _decode(segs[i]) != lit):
                return None
        out: dict[str, str] = {}
        for var in self._vars:
            if var.multi:
                out[var.name] = _decode_keep_slash("/".join(segs[var.start : var.stop]))
            else:
                out[var.name] = _decode(segs[var.start])
        return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 1
        self.end = len(text)
        self.segments: list[tuple[int, str]] = []
        self.positions: list[int] = []
        self.vars: list[_Var] = []

    def fail(self, problem: str, position: int) -> TemplateError:
        return TemplateError(problem, position, self.text)

    def parse(self) -> PathTemplate:
        text = self.text
        if not text.startswith("/"):
            raise self.fail("path template must start with '/'", 0)
        verb: str | None = None
        colon = text.rfind(":")
        if colon > text.rfind("/") and colon > text.rfind("}"):
            verb, self.end = text[colon + 1 :], colon
            if not verb:
                raise self.fail("empty verb after ':'", colon)
            for offset, char in enumerate(verb):
                if char not in _LITERAL_CHARS:
                    raise self.fail(f"invalid character {char!r} in verb", colon + 1 + offset)
        while True:
            if self.pos < self.end and text[self.pos] == "{":
                self.variable()
            else:
                self.plain(in_var=False)
            if self.pos == self.end:
                break
            if text[self.pos] != "/":
                raise self.fail(f"expected '/' but found {text[self.pos]!r}", self.pos)
            self.pos += 1
        self.check()
        ranks = tuple(kind for kind, _ in self.segments)
        return PathTemplate(
            text=text,
            verb=verb,
            variables=tuple(v.name for v in self.vars),
            specificity=(int(verb is not None), *ranks, _END),
            _segments=tuple(self.segments),
            _vars=tuple(self.vars),
        )

    def plain(self, *, in_var: bool) -> None:
        """One "*", "**" or LITERAL segment, up to the next '/' (or '}' inside a variable)."""
        text, start = self.text, self.pos
        stops = "/}" if in_var else "/"
        while self.pos < self.end and text[self.pos] not in stops:
            self.pos += 1
        piece = text[start : self.pos]
        self.positions.append(start)
        if piece in ("*", "**"):
            self.segments.append((_ONE if piece == "*" else _MANY, ""))
            return
        if not piece:
            raise self.fail("empty segment", start)
        for offset, char in enumerate(piece):
            if char in _LITERAL_CHARS:
                continue
            at = start + offset
            if char == "{":
                raise self.fail("nested variables are not allowed" if in_var else "unexpected '{'", at)
            if char == "}":
                raise self.fail("unbalanced '}'", at)
            if char == "*":
                raise self.fail("'*' and '**' must be whole segments", at)
            raise self.fail(f"invalid character {char!r} in literal", at)
        self.segments.append((_LIT, piece))

    def variable(self) -> None:
        text, opened = self.text, self.pos
        self.pos += 1
        while self.pos < self.end and text[self.pos] not in "=}":
            self.pos += 1
        if self.pos == self.end:
            raise self.fail("unterminated variable", opened)
        name = text[opened + 1 : self.pos]
        if not name:
            raise self.fail("empty field path", opened + 1)
        at = opened + 1
        for ident in name.split("."):
            if not _IDENT.fullmatch(ident):
                raise self.fail(f"invalid identifier {ident!r} in field path {name!r}", at)
            at += len(ident) + 1
        first = len(self.segments)
        if text[self.pos] == "=":
            self.pos += 1
            if self.pos < self.end and text[self.pos] == "}":
                raise self.fail(f"empty template for variable {name!r}", self.pos)
            while True:
                self.plain(in_var=True)
                if self.pos == self.end:
                    raise self.fail("unterminated variable", opened)
                if text[self.pos] == "}":
                    break
                self.pos += 1  # the '/'
        else:
            self.positions.append(opened)
            self.segments.append((_ONE, ""))
        self.pos += 1  # the '}'
        kinds = [kind for kind, _ in self.segments[first:]]
        multi = len(kinds) > 1 or _MANY in kinds
        stop = None if _MANY in kinds else len(self.segments)
        self.vars.append(_Var(name, first, stop, multi, opened))

    def check(self) -> None:
        many = [i for i, (kind, _) in enumerate(self.segments) if kind == _MANY]
        if len(many) > 1:
            raise self.fail("at most one '**' is allowed", self.positions[many[1]])
        if many and many[0] != len(self.segments) - 1:
            raise self.fail("'**' must be the last segment", self.positions[many[0]])
        seen: dict[str, _Var] = {}
        for var in self.vars:
            if var.name in seen:
                raise self.fail(f"duplicate variable {var.name!r}", var.position)
            for other in seen:
                if var.name.startswith(other + ".") or other.startswith(var.name + "."):
                    raise self.fail(f"field path {var.name!r} overlaps {other!r}", var.position)
            seen[var.name] = var


def template_shape(text: str) -> str:
    """The template with its variables' names left out: `/v1/accounts/{}` for `/v1/accounts/{account.id}`.

    OpenAPI 3.1 holds two paths that differ only in their parameter names to be the same
    path, so templates of one shape must name their variables alike in an OpenAPI document.
    """
    return re.sub(r"\{[^}=]*", "{", text)


def parameter_names(templates: list[PathTemplate]) -> list[dict[str, str]]:
    """OpenAPI names for the variables of each template ({field path: name}), agreed per shape.

    A name is the last segment of its field path (`account.id` -> `id`), or the whole path
    with `_` for `.` where two variables of one template would share it. Every later template
    of a shape takes the names of the first one, position by position, so
    `/v1/accounts/{id}` and `/v1/accounts/{account.id}` are both `/v1/accounts/{id}`.
    """
    first: dict[str, list[str]] = {}
    named: list[dict[str, str]] = []
    for template in templates:
        shape = template_shape(template.text)
        if shape not in first:
            last = [name.rsplit(".", 1)[-1] for name in template.variables]
            first[shape] = [
                short if last.count(short) == 1 else name.replace(".", "_")
                for short, name in zip(last, template.variables, strict=True)
            ]
        named.append(dict(zip(template.variables, first[shape], strict=True)))
    return named
