"""google.api.http path templates: the grammar, matching with percent-decoding, verbs and specificity."""

from __future__ import annotations

import pytest

from gateway.templates import PathDecodeError, PathTemplate, TemplateError

MATCHES: list[tuple[str, str, dict[str, str] | None]] = [
    # literals
    ("/v1/accounts", "/v1/accounts", {}),
    ("/v1/accounts", "/v1/account", None),
    ("/v1/accounts", "/v1/accounts/x", None),
    ("/v1/accounts", "/v1", None),
    ("/v1/accounts", "/V1/accounts", None),
    ("/v1/accounts", "v1/accounts", None),
    ("/v1/accounts", "", None),
    ("/v1/accounts", "/", None),
    ("/v1/accounts", "/v1/%61ccounts", {}),
    ("/v1/a:b/c", "/v1/a:b/c", {}),
    ("/v1/a:b/c", "/v1/a%3Ab/c", {}),
    # empty segments and trailing slashes never match
    ("/v1/accounts", "/v1//accounts", None),
    ("/v1/accounts", "/v1/accounts/", None),
    ("/v1/accounts", "//v1/accounts", None),
    ("/v1/{id}", "/v1/", None),
    ("/v1/{id}", "/v1//", None),
    ("/v1/{path=**}", "/v1/a//b", None),
    ("/v1/{path=**}", "/v1/a/", None),
    ("/v1/{path=**}", "/v1/", None),
    # single-segment variables: {id} == {id=*}, decoded in full
    ("/v1/accounts/{id}", "/v1/accounts/abc", {"id": "abc"}),
    ("/v1/accounts/{id=*}", "/v1/accounts/abc", {"id": "abc"}),
    ("/v1/accounts/{id}", "/v1/accounts", None),
    ("/v1/accounts/{id}", "/v1/accounts/a/b", None),
    ("/v1/accounts/{id}", "/v1/accounts/a%2Fb", {"id": "a/b"}),
    ("/v1/accounts/{id}", "/v1/accounts/a%2fb", {"id": "a/b"}),
    ("/v1/accounts/{id}", "/v1/accounts/hello%20world", {"id": "hello world"}),
    ("/v1/accounts/{id}", "/v1/accounts/a+b", {"id": "a+b"}),
    ("/v1/accounts/{id}", "/v1/accounts/caf%C3%A9", {"id": "café"}),
    ("/v1/accounts/{id}", "/v1/accounts/café", {"id": "café"}),
    ("/v1/accounts/{id}", "/v1/accounts/%25", {"id": "%"}),
    ("/v1/accounts/{id}", "/v1/accounts/%2525", {"id": "%25"}),
    ("/v1/accounts/{id}", "/v1/accounts/%7Bx%7D", {"id": "{x}"}),
    ("/v1/{x=foo}", "/v1/foo", {"x": "foo"}),
    ("/v1/{x=foo}", "/v1/bar", None),
    ("/v1/{a}/{b}", "/v1/x/y", {"a": "x", "b": "y"}),
    ("/{a}", "/x", {"a": "x"}),
    # nested field paths
    ("/v1/{a.b.c}", "/v1/x", {"a.b.c": "x"}),
    ("/v1/{account.id}/plans/{plan_id}", "/v1/7/plans/p", {"account.id": "7", "plan_id": "p"}),
    # multi-segment variables: the value includes the literals, %2F stays encoded
    ("/v1/{name=accounts/*}", "/v1/accounts/123", {"name": "accounts/123"}),
    ("/v1/{name=accounts/*}", "/v1/plans/123", None),
    ("/v1/{name=accounts/*}", "/v1/accounts", None),
    ("/v1/{name=accounts/*}", "/v1/accounts/1/2", None),
    ("/v1/{name=accounts/*}", "/v1/accounts/a%2Fb", {"name": "accounts/a%2Fb"}),
    ("/v1/{name=accounts/*}", "/v1/accounts/a%20b", {"name": "accounts/a b"}),
    ("/v1/{name=accounts/*}", "/v1/%61ccounts/1", {"name": "accounts/1"}),
    ("/v1/{name=accounts/*/invoices/*}", "/v1/accounts/1/invoices/2", {"name": "accounts/1/invoices/2"}),
    ("/v1/{name=accounts/*/invoices/*}", "/v1/accounts/1/invoices", None),
    ("/v1/{name=accounts/*/invoices/*}", "/v1/accounts/1/credits/2", None),
    ("/v1/{name=accounts/*}/invoices", "/v1/accounts/1/invoices", {"name": "accounts/1"}),
    (
        "/v1/{parent=accounts/*}/invoices/{id}",
        "/v1/accounts/1/invoices/x",
        {"parent": "accounts/1", "id": "x"},
    ),
    # unbound wildcards
    ("/v1/*/invoices", "/v1/acc/invoices", {}),
    ("/v1/*/invoices", "/v1/invoices", None),
    ("/v1/**", "/v1", {}),
    ("/v1/**", "/v1/a/b/c", {}),
    ("/**", "/", {}),
    ("/**", "/a/b", {}),
    # ** captures
    ("/v1/{path=**}", "/v1", {"path": ""}),
    ("/v1/{path=**}", "/v1/a", {"path": "a"}),
    ("/v1/{path=**}", "/v1/a/b/c", {"path": "a/b/c"}),
    ("/v1/{path=**}", "/v1/a%2Fb/c%20d", {"path": "a%2Fb/c d"}),
    ("/v1/{path=**}", "/v1/a%2fb", {"path": "a%2fb"}),
    ("/v1/{path=**}", "/v1/a%252Fb", {"path": "a%2Fb"}),
    ("/v1/{path=**}", "/v2/a", None),
    ("/{path=**}", "/", {"path": ""}),
    ("/v1/{name=files/**}", "/v1/files/a/b", {"name": "files/a/b"}),
    ("/v1/{name=files/**}", "/v1/files", {"name": "files"}),
    ("/v1/{name=files/**}", "/v1/other/a", None),
    ("/v1/{id}/{rest=**}", "/v1/x/y/z", {"id": "x", "rest": "y/z"}),
    # custom verbs
    ("/v1/accounts/{id}:undelete", "/v1/accounts/abc:undelete", {"id": "abc"}),
    ("/v1/accounts/{id}:undelete", "/v1/accounts/abc", None),
    ("/v1/accounts/{id}:undelete", "/v1/accounts/abc:delete", None),
    ("/v1/accounts/{id}:undelete", "/v1/accounts/abc:undelete/x", None),
    ("/v1/accounts/{id}:undelete", "/v1/accounts/:undelete", None),
    ("/v1/accounts/{id}:undelete", "/v1/accounts:undelete", None),
    ("/v1/accounts/{id}:undelete", "/v1/accounts/a:b:undelete", {"id": "a:b"}),
    ("/v1/accounts/{id}:undelete", "/v1/accounts/abc%3Aundelete", None),
    ("/v1/accounts/{id}:undelete", "/v1/accounts/a%2Fb:undelete", {"id": "a/b"}),
    ("/v1/accounts/{id}:undelete", "/v1/accounts/abc:un%64elete", {"id": "abc"}),
    ("/v1/accounts:search", "/v1/accounts:search", {}),
    ("/v1/accounts:search", "/v1/accounts", None),
    ("/v1/accounts:search", "/v1/accounts/:search", None),
    ("/v1/{name=accounts/*}:close", "/v1/accounts/9:close", {"name": "accounts/9"}),
    ("/v1/{name=**}:get", "/v1/a/b:get", {"name": "a/b"}),
    ("/v1/{name=**}:get", "/v1/a:b/c:get", {"name": "a:b/c"}),
    ("/v1/{name=**}:get", "/v1:get", {"name": ""}),
    ("/v1/{name=**}:get", "/v1/a/b", None),
    ("/v1/a:b:c", "/v1/a:b:c", {}),
    ("/v1/{x=a:b}", "/v1/a:b", {"x": "a:b"}),
    # no verb in the template: ':' belongs to the value (as in grpc-gateway)
    ("/v1/things/{id}", "/v1/things/a:b", {"id": "a:b"}),
    ("/v1/accounts/{id}", "/v1/accounts/abc:undelete", {"id": "abc:undelete"}),
    ("/v1/{path=**}", "/v1/a/b:c", {"path": "a/b:c"}),
    ("/v1/accounts", "/v1/accounts:search", None),
]


@pytest.mark.parametrize(("template", "path", "expected"), MATCHES)
def test_match(template: str, path: str, expected: dict[str, str] | None) -> None:
    assert PathTemplate.parse(template).match(path) == expected


@pytest.mark.parametrize(
    ("template", "path"),
    [
        ("/v1/accounts/{id}", "/v1/accounts/%zz"),
        ("/v1/accounts/{id}", "/v1/accounts/%4"),
        ("/v1/accounts/{id}", "/v1/accounts/abc%"),
        ("/v1/accounts/{id}", "/v1/accounts/%%41"),
        ("/v1/accounts/{id}", "/v1/accounts/%FF"),
        ("/v1/accounts/{id}", "/v1/accounts/%C3"),
        ("/v1/{path=**}", "/v1/a/%G0/b"),
        ("/v1/accounts", "/v1/%zzccounts"),
        ("/v1/accounts/{id}:undelete", "/v1/accounts/a:%zz"),
        # raised even when the path could never match this template: the answer is 400, not 404
        ("/v1/accounts", "/other/path/%zz"),
    ],
)
def test_invalid_escapes_raise(template: str, path: str) -> None:
    with pytest.raises(PathDecodeError, match=r"percent-escape|UTF-8"):
        PathTemplate.parse(template).match(path)


PARSE_ERRORS: list[tuple[str, str, int]] = [
    ("v1/accounts", "must start with '/'", 0),
    ("", "must start with '/'", 0),
    ("/", "empty segment", 1),
    ("//v1", "empty segment", 1),
    ("/v1//accounts", "empty segment", 4),
    ("/v1/", "empty segment", 4),
    ("/v1/{id", "unterminated variable", 4),
    ("/v1/{id=accounts/*", "unterminated variable", 4),
    ("/v1/{a/b}", "invalid identifier 'a/b'", 5),
    ("/v1/id}", "unbalanced '}'", 6),
    ("/v1/{id}}", "expected '/'", 8),
    ("/v1/{a={b}}", "nested variables", 7),
    ("/v1/{a=x/{b}}", "nested variables", 9),
    ("/v1/{}", "empty field path", 5),
    ("/v1/{=*}", "empty field path", 5),
    ("/v1/{1abc}", "invalid identifier '1abc'", 5),
    ("/v1/{a..b}", "invalid identifier ''", 7),
    ("/v1/{a.}", "invalid identifier ''", 7),
    ("/v1/{.a}", "invalid identifier ''", 5),
    ("/v1/{a-b}", "invalid identifier 'a-b'", 5),
    ("/v1/{a.b c}", "invalid identifier 'b c'", 7),
    ("/v1/{a{b}}", "invalid identifier 'a{b'", 5),
    ("/v1/{a=}", "empty template for variable 'a'", 7),
    ("/v1/{a=x/}", "empty segment", 9),
    ("/v1/{a=/x}", "empty segment", 7),
    ("/v1/**/x", "'**' must be the last segment", 4),
    ("/v1/{a=**}/x", "'**' must be the last segment", 7),
    ("/v1/{a=**/x}", "'**' must be the last segment", 7),
    ("/**/**", "at most one '**'", 4),
    ("/v1/{a=**}/{b=**}", "at most one '**'", 14),
    ("/v1/{a}/{a}", "duplicate variable 'a'", 8),
    ("/v1/{a.b}/{a.b=x/*}", "duplicate variable 'a.b'", 10),
    ("/v1/{a}/{a.b}", "field path 'a.b' overlaps 'a'", 8),
    ("/v1/{a.b.c}/{a.b}", "field path 'a.b' overlaps 'a.b.c'", 12),
    ("/v1/x:", "empty verb", 5),
    ("/v1/{id}:", "empty verb", 8),
    ("/v1/x:a b", "invalid character ' ' in verb", 7),
    ("/v1/x:a*", "invalid character '*' in verb", 7),
    ("/v1/a*b", "must be whole segments", 5),
    ("/v1/***", "must be whole segments", 4),
    ("/v1/a b", "invalid character ' ' in literal", 5),
    ("/v1/a%20b", "invalid character '%' in literal", 5),
    ("/v1/a?b", "invalid character '?' in literal", 5),
    ("/v1/a=b", "invalid character '=' in literal", 5),
    ("/v1/{a}b", "expected '/' but found 'b'", 7),
    ("/v1/{a=*}x", "expected '/' but found 'x'", 9),
    ("/v1/a{b}", "unexpected '{'", 5),
]


@pytest.mark.parametrize(("template", "problem", "position"), PARSE_ERRORS)
def test_parse_errors(template: str, problem: str, position: int) -> None:
    with pytest.raises(TemplateError) as info:
        PathTemplate.parse(template)
    assert problem in info.value.problem
    assert info.value.position == position
    assert f"at position {position}" in str(info.value)
    assert repr(template) in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("template", "verb", "variables"),
    [
        ("/v1/accounts", None, ()),
        ("/v1/accounts/{id}", None, ("id",)),
        ("/v1/accounts/{id}:undelete", "undelete", ("id",)),
        ("/v1/{name=accounts/*/invoices/*}:void", "void", ("name",)),
        ("/v1/{parent=accounts/*}/invoices/{invoice.id}", None, ("parent", "invoice.id")),
        ("/v1/{b}/{a}", None, ("b", "a")),
        ("/v1/*/x/**", None, ()),
        ("/v1/a:b/c", None, ()),
        ("/v1/a:b:c", "c", ()),
        ("/v1/{x=a:b}", None, ("x",)),
        ("/v1/{x=a:b}:c", "c", ("x",)),
    ],
)
def test_parsed_attributes(template: str, verb: str | None, variables: tuple[str, ...]) -> None:
    parsed = PathTemplate.parse(template)
    assert parsed.text == template
    assert str(parsed) == template
    assert parsed.verb == verb
    assert parsed.variables == variables


def test_templates_are_frozen_values() -> None:
    first, second = PathTemplate.parse("/v1/{id}"), PathTemplate.parse("/v1/{id}")
    assert first == second
    assert hash(first) == hash(second)
    assert first != PathTemplate.parse("/v1/{id}:x")
    with pytest.raises(AttributeError):
        first.text = "/v2"  # type: ignore[misc]


# Each pair: (more specific, less specific).
MORE_SPECIFIC: list[tuple[str, str]] = [
    ("/v1/accounts/me", "/v1/accounts/{id}"),
    ("/v1/accounts/{id}", "/v1/accounts/{path=**}"),
    ("/v1/accounts/{id}", "/v1/**"),
    ("/v1/accounts/*", "/v1/*/*"),
    ("/v1/accounts/{id}/invoices", "/v1/accounts/{path=**}"),
    ("/v1/accounts", "/v1/accounts/**"),
    ("/v1/{name=accounts/*}", "/v1/{a}/{b}"),
    ("/v1/accounts/{id}:undelete", "/v1/accounts/{id}"),
    ("/v1/{name=**}:get", "/v1/a/*"),
    ("/v1/a/{b}", "/v1/{a}/b"),
]


@pytest.mark.parametrize(("more", "less"), MORE_SPECIFIC)
def test_specificity_order(more: str, less: str) -> None:
    assert PathTemplate.parse(more).specificity > PathTemplate.parse(less).specificity


@pytest.mark.parametrize(
    ("path", "winner", "bindings"),
    [
        ("/v1/accounts/me", "/v1/accounts/me", {}),
        ("/v1/accounts/42", "/v1/accounts/{id}", {"id": "42"}),
        ("/v1/accounts/42:undelete", "/v1/accounts/{id}:undelete", {"id": "42"}),
        ("/v1/accounts", "/v1/accounts", {}),
        ("/v1/accounts/42/invoices", "/v1/{name=accounts/*}/invoices", {"name": "accounts/42"}),
        ("/v1/accounts/42/notes/a/b", "/v1/{path=**}", {"path": "accounts/42/notes/a/b"}),
    ],
)
def test_router_picks_most_specific(path: str, winner: str, bindings: dict[str, str]) -> None:
    routes = [
        PathTemplate.parse(t)
        for t in (
            "/v1/{path=**}",
            "/v1/accounts",
            "/v1/accounts/{id}",
            "/v1/accounts/me",
            "/v1/accounts/{id}:undelete",
            "/v1/{name=accounts/*}/invoices",
        )
    ]
    candidates = [(t, found) for t in routes if (found := t.match(path)) is not None]
    best, found = max(candidates, key=lambda pair: pair[0].specificity)
    assert best.text == winner
    assert found == bindings
