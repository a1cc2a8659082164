"""Permission rules (``--perms``): mode and owner of the files whose names match a regex, set
while layers are written, so no root and no copy of a store path is needed.

They follow nix2container's ``perms``: a list of rules, each an object with

- ``regex`` (required): a Python regular expression searched (``re.search``) in each entry's
  name in the image, an absolute path such as ``/nix/store/HASH-app/bin/app`` or ``/tmp``;
- ``path`` (optional): a store path; the rule then applies only to that store path's files:
  in its store-path layer the names below it, in the customisation layer the entries it gives
  there (a ``copy_to_root`` path's tree, a content's directories and symlinks);
- at least one of ``mode`` (octal text such as ``"0644"`` or ``"1777"``, or a number; the
  permission bits), ``uid``, ``gid`` (numbers), ``uname``, ``gname`` (names stored in the tar).

Every rule is tried on every entry, in order: a later rule that matches overrides the fields it
sets. An id set without its name is stored without a name (numeric). Symlinks keep their mode (0777). A rule is part of the key of every layer it can touch
(:func:`rules_for`): a rule with a ``path`` touches the layers holding that store path, one
without touches every layer.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from nixlayer.errors import NixlayerError

MAX_ID = 2**32 - 1
_FIELDS = ("path", "regex", "mode", "uid", "gid", "uname", "gname")


@dataclass(frozen=True)
class PermRule:
    """One checked rule (see the module doc); ``None`` fields are left as they are."""

    regex: str
    path: str | None = None
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    uname: str | None = None
    gname: str | None = None

    def to_json(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


def _mode(value: Any, where: str) -> int:
    if isinstance(value, str) and re.fullmatch(r"0?[0-7]{3,4}", value):
        return int(value, 8)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 0o7777:
        return value
    raise NixlayerError(f"{where}: mode must be octal text such as \"0644\" (at most 7777), not {json.dumps(value)}")


def parse_perms(value: Any, store_dir: str | None = None) -> tuple[PermRule, ...]:
    """Check ``value`` (a list of rule objects, or its JSON text; ``""`` is no rules) and return
    its rules. ``store_dir``, when given, is where a rule's ``path`` must be.

    Raises NixlayerError naming the rule (``perms rule 2: ...``): not a list of objects, an
    unknown field, no regex or a bad one, a mode that is not octal, an id out of range, nothing
    to set."""
    if isinstance(value, str):
        if not value.strip():
            return ()
        try:
            value = json.loads(value)
        except ValueError as e:
            raise NixlayerError(f"perms is not valid JSON: {e}") from None
    if not isinstance(value, list):
        raise NixlayerError('perms must be a list of rules such as [{"regex": "^/tmp$", "mode": "1777"}]')
    rules = []
    for number, raw in enumerate(value, 1):
        where = f"perms rule {number}"
        if not isinstance(raw, dict):
            raise NixlayerError(f"{where}: expected an object with regex and mode, uid, gid, uname or gname")
        unknown = sorted(set(raw) - set(_FIELDS))
        if unknown:
            raise NixlayerError(f"{where}: unknown field {unknown[0]!r} (a rule has {', '.join(_FIELDS)})")
        regex = raw.get("regex")
        if not isinstance(regex, str):
            raise NixlayerError(f"{where}: no regex (a string matched against names in the image)")
        try:
            re.compile(regex)
        except re.error as e:
            raise NixlayerError(f"{where}: regex {regex!r} is not valid: {e}") from None
        path = raw.get("path")
        if path is not None and (not isinstance(path, str)
                                 or (store_dir is not None and not path.startswith(store_dir.rstrip("/") + "/"))):
            raise NixlayerError(f"{where}: path must be a store path, not {json.dumps(path)}")
        for key in ("uid", "gid"):
            id_ = raw.get(key)
            if id_ is not None and (not isinstance(id_, int) or isinstance(id_, bool) or not 0 <= id_ <= MAX_ID):
                raise NixlayerError(f"{where}: {key} must be a whole number from 0 to {MAX_ID}, not {json.dumps(id_)}")
        for key in ("uname", "gname"):
            if raw.get(key) is not None and not isinstance(raw[key], str):
                raise NixlayerError(f"{where}: {key} must be a string")
        if not any(raw.get(key) is not None for key in ("mode", "uid", "gid", "uname", "gname")):
            raise NixlayerError(f"{where}: sets nothing: give mode, uid, gid, uname or gname")
        mode = None if raw.get("mode") is None else _mode(raw["mode"], where)
        rules.append(PermRule(regex, path, mode, raw.get("uid"), raw.get("gid"), raw.get("uname"), raw.get("gname")))
    return tuple(rules)


def perms_json(rules: Sequence[PermRule]) -> str:
    """The rules as canonical JSON text (``""`` for none): what Luigi parameters carry."""
    return json.dumps([rule.to_json() for rule in rules], sort_keys=True) if rules else ""


def rules_for(rules: Sequence[PermRule], store_paths: Iterable[str]) -> tuple[PermRule, ...]:
    """The rules that can touch a layer holding ``store_paths`` (store paths, or for the
    customisation layer its contents and copy_to_root paths): rules without a ``path``, and
    those whose ``path`` is among them."""
    held = set(store_paths)
    return tuple(rule for rule in rules if rule.path is None or rule.path in held)


def perms_key(rules: Sequence[PermRule]) -> str:
    """What the rules add to a layer's key: ``""`` for none, else ``-p`` and 16 hex digits."""
    if not rules:
        return ""
    return "-p" + hashlib.sha256(perms_json(rules).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Owner:
    """What rules set on one entry: ``None`` fields are the layer's defaults."""

    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    uname: str | None = None
    gname: str | None = None


class Matcher:
    """The rules, compiled, applied to entries: :meth:`owner` of a name."""

    def __init__(self, rules: Sequence[PermRule]) -> None:
        self._rules = [(re.compile(rule.regex), rule) for rule in rules]

    def __bool__(self) -> bool:
        return bool(self._rules)

    def owner(self, name: str, source: str | None) -> Owner | None:
        """What the rules set on the entry ``name`` that comes from the store path ``source``
        (None: from none, such as a directory commands made), or None if no rule matches."""
        fields: dict[str, Any] = {}
        for pattern, rule in self._rules:
            if (rule.path is None or rule.path == source) and pattern.search(name):
                fields.update({k: v for k, v in dataclasses.asdict(rule).items()
                               if k not in ("regex", "path") and v is not None})
        # An id set without its name is numeric (no name in the tar), as the name of the old id would be wrong.
        if "uid" in fields and "uname" not in fields:
            fields["uname"] = ""
        if "gid" in fields and "gname" not in fields:
            fields["gname"] = ""
        return Owner(**fields) if fields else None
