"""``shield check``'s partial-shadow warning, held to the matcher: the lint's path reasoning
(do two patterns share a path, is one inside the other) is checked on generated patterns and
paths against ``PathMatcher``, the code that matches requests."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from shield.config.lint import _patterns_overlap, _within
from shield.decide.policy import PathMatcher

SEGMENTS = st.sampled_from(["a", "b", "ab", "ba", "aab", "a.png", "x"])
GLOBS = st.sampled_from(["a", "b", "ab", "a*", "*b", "*", "a*b", "*.png", "*a*"])


@st.composite
def patterns(draw: st.DrawFn) -> str:
    segments = draw(st.lists(GLOBS, min_size=0, max_size=3))
    if draw(st.booleans()):
        segments.append("**")
    return "/" + "/".join(segments)


PATHS = st.lists(SEGMENTS, min_size=0, max_size=4).map(lambda s: "/" + "/".join(s))


def matches(pattern: str, path: str) -> bool:
    return PathMatcher([pattern], case_insensitive=False).matches(path)


@settings(max_examples=500, deadline=None)
@given(patterns(), patterns(), st.lists(PATHS, min_size=1, max_size=20))
def test_patterns_said_apart_share_no_path(first: str, second: str, paths: list[str]) -> None:
    for path in paths:
        if matches(first, path) and matches(second, path):
            assert _patterns_overlap(first, second), path


@settings(max_examples=500, deadline=None)
@given(patterns(), patterns(), st.lists(PATHS, min_size=1, max_size=20))
def test_a_pattern_said_inside_another_matches_nothing_the_other_does_not(
    inner: str, outer: str, paths: list[str]
) -> None:
    if _within(inner, outer):
        for path in paths:
            if matches(inner, path):
                assert matches(outer, path), path


def test_the_shapes_operators_write() -> None:
    assert _within("/api/login", "/api/**") and not _within("/api/**", "/api/login")
    assert _within("/api", "/api/**") and _within("/api/v1/**", "/api/**")
    assert _patterns_overlap("/files/*.png", "/files/a*") and not _within("/files/*.png", "/files/a*")
    assert not _patterns_overlap("/api/**", "/apix/**")
    assert _patterns_overlap("/api*", "/api/**")  # both match /api
