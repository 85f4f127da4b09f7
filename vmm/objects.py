"""QEMU user-creatable objects a daemon holds: TLS credentials and authorization lists.

Created with `--object` at start, in QEMU's syntax (``tls-creds-x509,id=tls0,dir=DIR,
endpoint=server,verify-peer=on``, a doubled comma for a literal one, or a JSON object as QEMU
accepts for `authz-list` rules), or with QMP `object-add` / `object-del`. Migrations name them
through the parameters `tls-creds` and `tls-authz`.

Types: `tls-creds-x509` (dir, endpoint server|client, or livemig's x-any for a daemon that sends
and receives, verify-peer), `authz-simple` (identity),
`authz-list` (policy allow|deny, rules: [{match, policy, format exact|glob}]).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal

from migration import CommandRefusedError, ParameterError
from netio import (
    AuthzList,
    AuthzRule,
    AuthzSimple,
    FileAddress,
    NetIOError,
    TcpAddress,
    TlsClient,
    TlsCredsX509,
    TlsServer,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

    from migration import MigrationParameters
    from netio import Authz, MigrationAddress
    from netio.authz import Policy

UserObject = TlsCredsX509 | AuthzSimple | AuthzList
QOM_TYPES: Final = ("tls-creds-x509", "authz-simple", "authz-list")
MAX_OBJECTS: Final = 64


class ObjectRegistry:
    """The objects of one daemon, by id."""

    def __init__(self) -> None:
        self._objects: dict[str, UserObject] = {}

    def add(self, props: Mapping[str, object]) -> UserObject:
        """`object-add`: make and keep an object (credentials are checked now).

        Raises:
            ParameterError: an unknown type, a missing or bad property, unusable credentials.
            CommandRefusedError: the id is taken.
        """
        values = dict(props)
        qom_type, object_id = _text(values, "qom-type"), _text(values, "id")
        if object_id in self._objects:
            msg = f"an object with id '{object_id}' already exists"
            raise CommandRefusedError(msg)
        if len(self._objects) >= MAX_OBJECTS:
            msg = f"at most {MAX_OBJECTS} objects"
            raise CommandRefusedError(msg)
        made = _make(qom_type, object_id, values)
        self._objects[object_id] = made
        return made

    def delete(self, object_id: str) -> None:
        """`object-del`.

        Raises:
            CommandRefusedError: no such object.
        """
        if self._objects.pop(object_id, None) is None:
            msg = f"object '{object_id}' not found"
            raise CommandRefusedError(msg)

    def tls_creds(self, object_id: str, endpoint: Literal["server", "client"]) -> TlsCredsX509:
        """The credentials `tls-creds` names, for this end (QEMU's messages).

        Raises:
            CommandRefusedError: no such credentials, or they are for the other end.
        """
        creds = self._objects.get(object_id)
        if not isinstance(creds, TlsCredsX509):
            msg = f"No TLS credentials with id '{object_id}'"
            raise CommandRefusedError(msg)
        if creds.endpoint not in (endpoint, "x-any"):
            msg = f"Expecting TLS credentials with a {endpoint} endpoint ('{object_id}')"
            raise CommandRefusedError(msg)
        return creds.for_endpoint(endpoint)

    def authz(self, object_id: str) -> Authz:
        """The authorization object `tls-authz` names.

        Raises:
            CommandRefusedError: there is none of that id.
        """
        found = self._objects.get(object_id)
        if not isinstance(found, AuthzSimple | AuthzList):
            msg = f"No authorization object with id '{object_id}'"
            raise CommandRefusedError(msg)
        return found


def tls_client_for(
    params: MigrationParameters, objects: ObjectRegistry, address: MigrationAddress
) -> TlsClient | None:
    """How an outgoing migration secures its channels (None: `tls-creds` is empty).

    The server must be named `tls-hostname`, or else the host of the URI (QEMU).

    Raises:
        CommandRefusedError: the credentials are missing or for a server, the URI is a file,
            or it is a unix socket and `tls-hostname` is empty.
    """
    if not params.tls_creds:
        return None
    creds = objects.tls_creds(params.tls_creds, "client")
    if isinstance(address, FileAddress):
        msg = f"TLS (tls-creds '{params.tls_creds}') cannot be used with {address}"
        raise CommandRefusedError(msg)
    hostname = params.tls_hostname or (address.host if isinstance(address, TcpAddress) else "")
    if not hostname:
        msg = f"TLS to {address} needs tls-hostname: the name in the destination's certificate"
        raise CommandRefusedError(msg)
    return TlsClient(creds=creds, hostname=hostname)


def tls_server_for(params: MigrationParameters, objects: ObjectRegistry) -> TlsServer | None:
    """How a destination secures the channels it accepts now (None: `tls-creds` is empty).

    Raises:
        CommandRefusedError: the credentials or the authorization object are missing, or the
            credentials are for a client.
    """
    if not params.tls_creds:
        return None
    creds = objects.tls_creds(params.tls_creds, "server")
    authz = objects.authz(params.tls_authz) if params.tls_authz else None
    return TlsServer(creds=creds, authz=authz)


def parse_object_option(text: str) -> dict[str, object]:
    """`--object`: QEMU's ``type,key=value,...`` (``,,`` is a comma) or a JSON object.

    Raises:
        ParameterError: it parses as neither.
    """
    if text.lstrip().startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            msg = f"--object: invalid JSON: {exc}"
            raise ParameterError(msg) from exc
        if not isinstance(value, dict):
            raise ParameterError("--object: a JSON object is expected")
        return value
    parts = _split_commas(text)
    props: dict[str, object] = {"qom-type": parts[0]}
    for part in parts[1:]:
        key, sep, value = part.partition("=")
        if not sep or not key:
            msg = f"--object: expected KEY=VALUE, got {part!r}"
            raise ParameterError(msg)
        props[key] = value
    return props


def _split_commas(text: str) -> list[str]:
    parts, current, index = [], [], 0
    while index < len(text):
        char = text[index]
        if char == ",":
            if text[index + 1 : index + 2] == ",":
                current.append(",")
                index += 2
                continue
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
        index += 1
    parts.append("".join(current))
    return parts


def _make(qom_type: str, object_id: str, values: dict[str, object]) -> UserObject:
    known = {"qom-type", "id"}
    if qom_type == "tls-creds-x509":
        made: UserObject = _tls_creds(object_id, values)
        known |= {"dir", "endpoint", "verify-peer"}
    elif qom_type == "authz-simple":
        made = AuthzSimple(id=object_id, identity=_text(values, "identity"))
        known |= {"identity"}
    elif qom_type == "authz-list":
        made = _authz_list(object_id, values)
        known |= {"policy", "rules"}
    else:
        msg = f"invalid object type: {qom_type} (expected one of {', '.join(QOM_TYPES)})"
        raise ParameterError(msg)
    extra = sorted(set(values) - known)
    if extra:
        msg = f"Property '{qom_type}.{extra[0]}' not found"
        raise ParameterError(msg)
    return made


def _tls_creds(object_id: str, values: Mapping[str, object]) -> TlsCredsX509:
    endpoint = _text(values, "endpoint", "client")
    if endpoint not in ("server", "client", "x-any"):
        msg = f"Parameter 'endpoint' does not accept value '{endpoint}' (server, client, x-any)"
        raise ParameterError(msg)
    creds = TlsCredsX509(
        id=object_id,
        dir=Path(_text(values, "dir")),
        endpoint=endpoint,  # type: ignore[arg-type]
        verify_peer=_flag(values, "verify-peer", default=True),
    )
    ends = ("server", "client") if endpoint == "x-any" else (endpoint,)
    try:
        for end in ends:  # QEMU loads the files when the object is made
            creds.for_endpoint(end).context()  # type: ignore[arg-type]
    except NetIOError as exc:
        raise ParameterError(str(exc)) from exc
    return creds


def _authz_list(object_id: str, values: Mapping[str, object]) -> AuthzList:
    policy = _policy(values.get("policy", "deny"), "policy")
    raw_rules = values.get("rules", [])
    if not isinstance(raw_rules, list):
        raise ParameterError("Parameter 'rules' expects a list of {match, policy, format}")
    rules = []
    for index, rule in enumerate(raw_rules):
        if not isinstance(rule, dict):
            msg = f"Parameter 'rules[{index}]' expects an object"
            raise ParameterError(msg)
        match_format = rule.get("format", "exact")
        if match_format not in ("exact", "glob"):
            msg = f"Parameter 'rules[{index}].format' expects exact or glob"
            raise ParameterError(msg)
        rules.append(
            AuthzRule(
                match=_text(rule, "match"),
                policy=_policy(rule.get("policy"), f"rules[{index}].policy"),
                format=match_format,
            )
        )
    return AuthzList(id=object_id, policy=policy, rules=tuple(rules))


def _policy(value: object, name: str) -> Policy:
    if value == "allow":
        return "allow"
    if value == "deny":
        return "deny"
    msg = f"Parameter '{name}' expects allow or deny"
    raise ParameterError(msg)


def _text(values: Mapping[str, object], name: str, default: str | None = None) -> str:
    value = values.get(name, default)
    if not isinstance(value, str) or not value:
        msg = (
            f"Parameter '{name}' is missing"
            if value is None
            else f"Parameter '{name}' expects a string"
        )
        raise ParameterError(msg)
    return value


def _flag(values: Mapping[str, object], name: str, *, default: bool) -> bool:
    value = values.get(name, default)
    if isinstance(value, bool):
        return value
    if value in ("on", "yes", "true"):
        return True
    if value in ("off", "no", "false"):
        return False
    msg = f"Parameter '{name}' expects on or off"
    raise ParameterError(msg)
