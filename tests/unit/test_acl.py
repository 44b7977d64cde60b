"""Topic rules: Mosquitto's ACL syntax, MQTT matching against a reference, the coverage of
subscription filters, and the issue's examples."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.mqtt.acl import (
    READ,
    WRITE,
    AclError,
    filter_covers,
    filters_overlap,
    parse_acl,
    topic_matches,
)

levels = st.sampled_from(["a", "b", "c", "", "$SYS", "x y"])
topic_names = st.lists(levels, min_size=1, max_size=5).map("/".join)
filter_levels = st.sampled_from(["a", "b", "c", "", "+", "$SYS"])


@st.composite
def topic_filters(draw: st.DrawFn) -> str:
    parts = draw(st.lists(filter_levels, min_size=1, max_size=4))
    if draw(st.booleans()):
        parts.append("#")
    return "/".join(parts)


def reference(topic_filter: str, topic: str) -> bool:
    """MQTT matching by a regular expression (the spec's examples: 'sport/#' matches
    'sport', '+' one level, '$' topics not matched by a leading wildcard)."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    pattern = ""
    for i, level in enumerate(topic_filter.split("/")):
        sep = "/" if i else ""
        if level == "#":
            pattern += "(?:/.*)?" if i else ".*"
            break
        pattern += sep + ("[^/]*" if level == "+" else re.escape(level))
    return re.fullmatch(pattern, topic) is not None


@settings(max_examples=400, deadline=None)
@given(topic_filters(), topic_names)
def test_matching_agrees_with_the_reference(topic_filter: str, topic: str) -> None:
    assert topic_matches(topic_filter, topic) == reference(topic_filter, topic)


@st.composite
def narrowed(draw: st.DrawFn) -> tuple[str, str]:
    """A rule and a filter often inside it (wildcards of the rule made narrower)."""
    rule = draw(topic_filters())
    parts = rule.split("/")
    wanted = []
    for level in parts:
        if level == "#":
            wanted += draw(st.lists(filter_levels, max_size=2))
            if draw(st.booleans()):
                wanted.append("#")
        elif level == "+" and draw(st.booleans()):
            wanted.append(draw(levels))
        else:
            wanted.append(level)
    if not wanted or draw(st.integers(0, 4)) == 0:
        return rule, draw(topic_filters())
    return rule, "/".join(wanted)


@settings(max_examples=400, deadline=None)
@given(narrowed(), st.lists(topic_names, min_size=1, max_size=20))
def test_a_covering_rule_matches_every_topic_the_filter_does(
    pair: tuple[str, str], topics: list[str]
) -> None:
    """Soundness: a SUBSCRIBE granted by a rule never receives a topic the rule does not
    grant."""
    rule, wanted = pair
    if filter_covers(rule, wanted):
        for topic in topics:
            if reference(wanted, topic):
                assert reference(rule, topic), (rule, wanted, topic)


@settings(max_examples=400, deadline=None)
@given(topic_filters(), topic_filters(), st.lists(topic_names, min_size=1, max_size=20))
def test_overlap_is_found_whenever_a_topic_matches_both(a: str, b: str, topics: list[str]) -> None:
    """Soundness of deny for subscriptions: two filters that share a topic overlap."""
    if any(reference(a, t) and reference(b, t) for t in topics):
        assert filters_overlap(a, b), (a, b)


def test_covering_examples() -> None:
    assert filter_covers("devices/alice/#", "devices/alice/#")
    assert filter_covers("devices/alice/#", "devices/alice/+/t")
    assert filter_covers("#", "#") and filter_covers("#", "a/+")
    assert not filter_covers("devices/alice/#", "#")
    assert not filter_covers("devices/+/t", "devices/#")
    assert not filter_covers("#", "$SYS/broker")


ACL = """
# every device: its own tree, by its certificate's name
pattern readwrite devices/%u/#
topic read public/#
topic deny public/secret
user ops
topic readwrite #
"""


def test_the_issues_examples() -> None:
    acl = parse_acl(ACL)
    assert acl.allows(WRITE, "devices/alice/t", "alice", "c1")
    assert not acl.allows(WRITE, "devices/bob/t", "alice", "c1")
    assert acl.allows(READ, "devices/alice/#", "alice", "c1")
    assert not acl.allows(READ, "#", "alice", "c1")
    assert acl.allows(READ, "public/news", "alice", "c1")
    assert not acl.allows(WRITE, "public/news", "alice", "c1")  # read only
    assert not acl.allows(READ, "public/secret", "alice", "c1")  # deny wins
    assert not acl.allows(READ, "public/#", "alice", "c1")  # it covers public/secret
    assert acl.allows(WRITE, "anything/at/all", "ops", "c9")
    assert not acl.allows(READ, "public/secret", "ops", "c9")  # deny wins for ops too
    # A name with a wildcard or a level separator never fills a pattern.
    assert not acl.allows(WRITE, "devices/+/t", "+", "c1")
    assert not acl.allows(WRITE, "devices/a/b/t", "a/b", "c1")
    # Nothing matches: the default decides.
    assert not acl.allows(WRITE, "other", "alice", "c1")
    assert parse_acl(ACL, default_allow=True).allows(WRITE, "other", "alice", "c1")


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("topic read a/#/b\n", 1, "'#' must be a whole last level"),
        ("\n\nuser\n", 3, "needs a user name"),
        ("topik read a\n", 1, "unknown directive"),
        ("topic read\n", 1, "needs a topic"),
        ("pattern write a+b\n", 1, "'+' must be a whole level"),
    ],
)
def test_a_bad_line_is_named(text: str, line: int, words: str) -> None:
    with pytest.raises(AclError) as refused:
        parse_acl(text)
    assert refused.value.line == line and words in str(refused.value)


def naive(rules: list[tuple[int, str]], access: int, topic: str, default: bool) -> bool:
    """The rules read one by one, no index (the reference for the indexed lookup)."""
    granted = matched = False
    for rule_access, target in rules:
        if rule_access == 0:
            hit = filters_overlap(target, topic) if access == READ else topic_matches(target, topic)
            if hit:
                return False
            continue
        covered = filter_covers(target, topic) if access == READ else topic_matches(target, topic)
        if covered:
            matched = True
            granted = granted or bool(rule_access & access)
    return True if granted else (False if matched else default)


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["read", "write", "readwrite", "deny"]), topic_filters().filter(bool)
        ),
        max_size=12,
    ),
    st.sampled_from([READ, WRITE]),
    topic_filters(),
    st.booleans(),
)
def test_the_indexed_lookup_decides_as_reading_every_rule(
    lines: list[tuple[str, str]], access: int, topic: str, default: bool
) -> None:
    from gateway.mqtt.acl import ACCESS, DeviceRules

    if access == WRITE:  # a PUBLISH names a topic, not a filter
        topic = topic.replace("+", "x").replace("/#", "").replace("#", "x")
    acl = parse_acl("".join(f"topic {a} {t}\n" for a, t in lines), default_allow=default)
    rules = [(ACCESS[a], t) for a, t in lines]
    device = DeviceRules(acl, "u", "c")
    assert device.decide(access, topic) == naive(rules, access, topic, default)
    assert device.allows(access, topic) == device.decide(access, topic)


def test_the_deciding_line_is_named() -> None:
    from gateway.mqtt.acl import DeviceRules

    alice = DeviceRules(parse_acl(ACL), "alice", "c1")
    assert alice.rule_of(READ, "public/secret") == "line 5"  # the deny line
    assert alice.rule_of(WRITE, "public/news") == "line 4"  # matched, read only
    assert alice.rule_of(WRITE, "devices/bob/t") == "default"  # nothing matched
    assert alice.rule_of(WRITE, "devices/alice/t") == "line 3"
