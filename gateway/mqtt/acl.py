"""Topic rules in Mosquitto's ACL file syntax, bound to the certificate (sans-IO, pure).

    # comment
    topic [read|write|readwrite|deny] <topic>        applies to every device
    user <username>                                  the lines after it apply to that user
    topic [read|write|readwrite|deny] <topic>
    pattern [read|write|readwrite|deny] <topic>      every device; %c its client id, %u its
                                                     user name (here: the certificate's)

As Mosquitto 2: a ``deny`` line wins over any grant that matches; otherwise access is
granted if a line of the device's user (or a general ``topic``/``pattern`` line) grants it,
and ``default`` decides when nothing matches. A SUBSCRIBE is refused if its filter could
receive any topic a deny line names. A ``%c``/``%u`` substitution containing ``+``,
``#`` or ``/`` never matches (a device cannot widen its own rule by its name). Topics
are matched as MQTT matches them: ``+`` one level, ``#`` the rest (and the parent level),
and a topic starting with ``$`` is not matched by a filter starting with a wildcard.

A SUBSCRIBE's topic filter is granted read if the rule's filter covers every topic it could
match (``devices/alice/#`` covers ``devices/alice/+/t``; ``#`` covers nothing narrower
than itself but ``#``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import attrs

READ = 1
WRITE = 2
# A SUBSCRIBE filter whose deliveries are judged one by one (acl_read_mode = delivery): a
# deny line refuses it only if it names every topic the filter can match.
READ_DELIVERED = 4
ACCESS = {"read": READ, "write": WRITE, "readwrite": READ | WRITE, "deny": 0}


class AclError(ValueError):
    """A line of the ACL file that cannot be used: ``line`` (1-based) and why."""

    def __init__(self, line: int, why: str) -> None:
        super().__init__(f"line {line}: {why}")
        self.line = line
        self.why = why


@attrs.frozen
class Rule:
    line: int
    access: int  # READ | WRITE, or 0 for deny
    topic: str
    pattern: bool  # %c / %u to be substituted
    user: str | None  # None: every device


@attrs.frozen
class Acl:
    rules: tuple[Rule, ...]
    default_allow: bool = False
    # The rules by their topic's first level (shared by every device): literal first
    # levels, wildcard first levels, and patterns whose first level is filled in per device.
    by_first: dict[str, tuple[Rule, ...]] = attrs.field(eq=False, factory=dict)
    wild_first: tuple[Rule, ...] = attrs.field(eq=False, default=())
    dynamic_first: tuple[Rule, ...] = attrs.field(eq=False, default=())

    @classmethod
    def of(cls, rules: tuple[Rule, ...], default_allow: bool = False) -> Acl:
        by_first: dict[str, list[Rule]] = {}
        wild, dynamic = [], []
        for rule in rules:
            first = rule.topic.split("/", 1)[0]
            if rule.pattern and ("%u" in first or "%c" in first):
                dynamic.append(rule)
            elif first in ("+", "#"):
                wild.append(rule)
            else:
                by_first.setdefault(first, []).append(rule)
        return cls(
            rules,
            default_allow,
            {k: tuple(v) for k, v in by_first.items()},
            tuple(wild),
            tuple(dynamic),
        )

    def allows(self, access: int, topic: str, username: str, client_id: str) -> bool:
        """Whether a device may publish (WRITE) to ``topic`` or subscribe (READ) to the
        topic filter ``topic`` (see ``DeviceRules.decide``)."""
        return DeviceRules(self, username, client_id).decide(access, topic)


_DECISIONS_KEPT = 256  # per device: the topics it used last


class DeviceRules:
    """The rules as they apply to one device, its decisions remembered (a device uses few
    topics). Holds nothing per rule: the index is the Acl's, patterns are filled in as
    they are met."""

    __slots__ = ("acl", "username", "client_id", "_decisions", "_permitted")

    def __init__(self, acl: Acl, username: str, client_id: str) -> None:
        self.acl = acl
        self.username = username
        self.client_id = client_id
        self._decisions: dict[tuple[int, str], bool] = {}
        self._permitted: set[bytes] = set()  # PUBLISH topics (as sent) allowed before

    def known(self, topic: bytes) -> bool:
        """Whether the PUBLISH topic ``topic`` (its UTF-8 bytes) was allowed before: the
        relay's fast path. False: decide it the full way."""
        return topic in self._permitted

    def remember(self, topic: bytes) -> None:
        if len(self._permitted) >= _DECISIONS_KEPT:
            self._permitted.clear()
        self._permitted.add(topic)

    def allows(self, access: int, topic: str) -> bool:
        key = (access, topic)
        known = self._decisions.get(key)
        if known is None:
            known = self.decide(access, topic)
            if len(self._decisions) >= _DECISIONS_KEPT:
                self._decisions.clear()
            self._decisions[key] = known
        return known

    def decide(self, access: int, topic: str) -> bool:
        """A matching deny line refuses; else a matching line that grants the access
        allows; else a matching line (for the other access) refuses; else the default."""
        return self._decide(access, topic)[0]

    def rule_of(self, access: int, topic: str) -> str:
        """Which line decided (for the log and the counters): ``line N`` of the deny line
        or of the first line that matched, else ``default``."""
        return self._decide(access, topic)[1]

    def _decide(self, access: int, topic: str) -> tuple[bool, str]:
        acl = self.acl
        first = topic.split("/", 1)[0]
        candidates: Iterable[Rule]
        read = access in (READ, READ_DELIVERED)
        if read and first in ("+", "#"):
            candidates = acl.rules  # a wildcard filter may meet any rule
        else:
            candidates = itertools.chain(
                acl.by_first.get(first, ()), acl.wild_first, acl.dynamic_first
            )
        granted = False
        matched: str | None = None  # the first line that matched
        for rule in candidates:
            if rule.user is not None and rule.user != self.username:
                continue
            target = rule.topic
            if rule.pattern:
                substituted = _substitute(target, self.username, self.client_id)
                if substituted is None:
                    continue
                target = substituted
            if rule.access == 0:
                # A subscription is refused if it could receive any topic a deny line
                # names (the gateway does not filter the broker's deliveries).
                if access == READ:
                    hit = filters_overlap(target, topic)
                elif access == READ_DELIVERED:
                    hit = filter_covers(target, topic)
                else:
                    hit = topic_matches(target, topic)
                if hit:
                    return False, f"line {rule.line}"  # deny wins
                continue
            if read:
                covered = filter_covers(target, topic)
            else:
                covered = topic_matches(target, topic)
            if not covered:
                continue
            if matched is None:
                matched = f"line {rule.line}"
            if rule.access & (READ if read else access):
                granted = True
        if granted:
            return True, matched or "default"
        if matched is not None:
            return False, matched
        return acl.default_allow, "default"


def parse_acl(text: str, default_allow: bool = False) -> Acl:
    """The rules of an ACL file; AclError names the first bad line."""
    rules = []
    user: str | None = None
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        word, _, rest = stripped.partition(" ")
        rest = rest.strip()
        if word == "user":
            if not rest:
                raise AclError(number, "'user' needs a user name")
            user = rest
            continue
        if word not in ("topic", "pattern"):
            raise AclError(number, f"unknown directive {word!r} (topic, pattern, user)")
        access_word, _, topic = rest.partition(" ")
        if access_word in ACCESS:
            topic = topic.strip()
            access = ACCESS[access_word]
        else:
            topic, access = rest, READ | WRITE
        if not topic:
            raise AclError(number, f"'{word}' needs a topic")
        why = filter_problem(topic)
        if why:
            raise AclError(number, f"topic {topic!r}: {why}")
        pattern = word == "pattern"
        rules.append(Rule(number, access, topic, pattern, None if pattern else user))
    return Acl.of(tuple(rules), default_allow)


def _substitute(topic: str, username: str, client_id: str) -> str | None:
    """The pattern for this device; None if a value it needs is empty or holds ``+``,
    ``#`` or ``/`` (a device must not widen its own rule by its name)."""
    for token, value in (("%u", username), ("%c", client_id)):
        if token in topic and (not value or any(c in value for c in "+#/")):
            return None
    return topic.replace("%u", username).replace("%c", client_id)


def filter_problem(topic_filter: str) -> str:
    """Why ``topic_filter`` is not a valid MQTT topic filter ("" if it is)."""
    if not topic_filter:
        return "empty"
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return "'#' must be a whole last level"
        if "+" in level and level != "+":
            return "'+' must be a whole level"
    return ""


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Whether the topic filter matches the topic name (MQTT 3.1.1 4.7, MQTT 5 4.7)."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    f_levels = topic_filter.split("/")
    t_levels = topic.split("/")
    for i, level in enumerate(f_levels):
        if level == "#":
            return True
        if i >= len(t_levels):
            return False
        if level != "+" and level != t_levels[i]:
            return False
    return len(f_levels) == len(t_levels)


def filters_overlap(a: str, b: str) -> bool:
    """Whether some topic name matches both filters."""
    if (a.startswith("$") and b[:1] in ("+", "#")) or (b.startswith("$") and a[:1] in ("+", "#")):
        return False
    la, lb = a.split("/"), b.split("/")
    i = 0
    while True:
        if (i < len(la) and la[i] == "#") or (i < len(lb) and lb[i] == "#"):
            return True
        if i == len(la) or i == len(lb):
            return len(la) == len(lb)
        if la[i] != "+" and lb[i] != "+" and la[i] != lb[i]:
            return False
        i += 1


def filter_covers(rule: str, wanted: str) -> bool:
    """Whether every topic the filter ``wanted`` can match is matched by ``rule``."""
    if rule[:1] in ("+", "#") and wanted.startswith("$"):
        return False  # a wildcard first level never matches a $-topic
    r_levels = rule.split("/")
    w_levels = wanted.split("/")
    for i, level in enumerate(r_levels):
        if level == "#":
            return True
        if i >= len(w_levels):
            return False
        w = w_levels[i]
        if w == "#":
            return False  # the wanted filter reaches further than this rule
        if level == "+":
            continue
        if w == "+" or w != level:
            return False
    return len(r_levels) == len(w_levels)
