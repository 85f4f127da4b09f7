"""Authorization of a TLS peer by its certificate's name: QEMU's `authz-simple` and `authz-list`.

A destination with `tls-authz` set lets a source in only if the distinguished name of the
source's (verified) client certificate is allowed. Names are written as QEMU writes them
(RFC 4514, most specific first): ``CN=source,O=livemig``.

- `AuthzSimple`: exactly one identity is allowed.
- `AuthzList`: ordered rules, each `match` (exact, or a glob with ``format: glob``) and a
  `policy` (allow or deny); the first matching rule decides, else the list's `policy`.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Literal

Policy = Literal["allow", "deny"]
MatchFormat = Literal["exact", "glob"]


@dataclass(frozen=True, kw_only=True, slots=True)
class AuthzSimple:
    """`authz-simple`: one identity."""

    id: str
    identity: str

    def is_allowed(self, identity: str) -> bool:
        """Whether `identity` is the one allowed."""
        return identity == self.identity


@dataclass(frozen=True, kw_only=True, slots=True)
class AuthzRule:
    """One rule of an `authz-list`."""

    match: str
    policy: Policy
    format: MatchFormat = "exact"

    def matches(self, identity: str) -> bool:
        """Whether the rule applies to `identity`."""
        if self.format == "glob":
            return fnmatch.fnmatchcase(identity, self.match)
        return identity == self.match


@dataclass(frozen=True, kw_only=True, slots=True)
class AuthzList:
    """`authz-list`: the first matching rule decides; none matching, `policy` does."""

    id: str
    policy: Policy = "deny"
    rules: tuple[AuthzRule, ...] = ()

    def is_allowed(self, identity: str) -> bool:
        """Whether `identity` is allowed."""
        for rule in self.rules:
            if rule.matches(identity):
                return rule.policy == "allow"
        return self.policy == "allow"


Authz = AuthzSimple | AuthzList


def distinguished_name(subject: tuple[tuple[tuple[str, str], ...], ...]) -> str:
    """A certificate subject (as `ssl` reports it) as QEMU writes it: RFC 4514, CN first.

    `ssl` gives the relative distinguished names in certificate order (country first); RFC
    4514 writes them in reverse, with OpenSSL's short attribute names.
    """
    return ",".join(
        "+".join(f"{_SHORT.get(name, name)}={_escape(value)}" for name, value in rdn)
        for rdn in reversed(subject)
    )


_SHORT = {
    "commonName": "CN",
    "countryName": "C",
    "localityName": "L",
    "stateOrProvinceName": "ST",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "domainComponent": "DC",
    "emailAddress": "emailAddress",
}


def _escape(value: str) -> str:
    out = []
    for index, char in enumerate(value):
        special = char in ',+"\\<>;=' or (char in " #" and index == 0)
        special = special or (char == " " and index == len(value) - 1)
        out.append("\\" + char if special else char)
    return "".join(out)
