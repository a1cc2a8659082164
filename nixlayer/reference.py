"""Image names and tags, checked against the distribution reference grammar.

Source: the distribution project's ``reference/regexp.go`` grammar (as used by Docker, podman
and skopeo): a name is an optional domain (``host[:port]``) and one or more ``/``-separated
lowercase path components; a tag is ``[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}``; a whole name is at
most 255 characters.
"""

from __future__ import annotations

import re

from nixlayer.errors import NixlayerError

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*|\[[0-9a-fA-F:.]+\])(?::[0-9]{{1,5}})?"
HOST = re.compile(rf"^{_DOMAIN}$")
"""A registry host: DNS name, IPv4 or bracketed IPv6 address, optional port."""
REPOSITORY = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
"""A repository path: lowercase components joined by ``/``."""
TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_NAME = re.compile(rf"^(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*$")
NAME_MAX = 255


def check_name(name: str) -> str:
    """Return ``name`` (for example ``registry:5000/team/app``) if it is a valid image name.

    Raises NixlayerError saying what is allowed: lowercase letters, digits and separators
    (``.``, ``_``, ``__``, ``-``) in ``/``-separated components, an optional ``host[:port]/``
    prefix (a first component with a ``.`` or ``:``, or ``localhost``; ``UPPER/app`` is a
    path, which podman refuses), at most 255 characters once container engines add their
    prefix to a name without a host (``docker.io/library/``).
    """
    if not name:
        raise NixlayerError("image name is empty: give a name such as 'app' or 'registry:5000/team/app'")
    first, slash, _ = name.partition("/")
    # A first component is a host only with a '.' or ':', or as 'localhost' (as podman and
    # Docker tell them apart); otherwise it is a path component, lowercase.
    host = slash and ("." in first or ":" in first or first == "localhost" or first.startswith("["))
    # Without a host, engines name the image in full (Docker ``docker.io/library/app``, podman
    # ``localhost/app``), and the full name is what must fit.
    full = name if host else ("docker.io/" if slash else "docker.io/library/") + name
    if len(full) > NAME_MAX:
        raise NixlayerError(f"image name is {len(name)} characters long, {len(full)} as container engines name it"
                            f" ({full[:len(full) - len(name)]}...); at most {NAME_MAX} are allowed")
    if not _NAME.match(name) or (slash and not host and not REPOSITORY.match(first)):
        raise NixlayerError(
            f"invalid image name {name!r}: use lowercase letters, digits and separators . _ __ -"
            " in /-separated components, optionally after host[:port]/"
        )
    return name


def check_tag(tag: str) -> str:
    """Return ``tag`` if it is a valid tag: ``[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}``.

    Raises NixlayerError saying what is allowed.
    """
    if not TAG.match(tag):
        shown = tag if len(tag) <= 40 else tag[:40] + "..."
        raise NixlayerError(
            f"invalid tag {shown!r} ({len(tag)} characters): a tag is 1 to 128 letters, digits,"
            " '_', '.' or '-', and does not start with '.' or '-'"
        )
    return tag


_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)?(.*)$", re.S)
# A digest at the end, after a repository path: an algorithm, then whatever follows its colon
# up to the end without a '/' or '@' (a malformed digest, such as @sha256:abc, is then refused as
# a digest rather than shown as credentials; with no '/' before it, as in user@localhost:5000,
# the '@' ends credentials).
_DIGEST_SUFFIX = re.compile(r"/[^@]*(@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[^/@]*)$")


def without_credentials(text: str) -> tuple[str, bool]:
    """``text`` (an image reference, ``docker://`` or not) fit to show, and whether it had
    credentials in it: a user name or password (``user:password@host/...``) becomes ``***``.

    Every ``@`` but a digest's at the end, after a ``/`` (``@sha256:...``), is taken for the end of
    credentials, so nothing typed before the last such ``@`` is ever shown, whatever it holds
    (a ``/`` or an ``@`` in a password included).
    """
    scheme, rest = _SCHEME.match(text).groups()
    digest = _DIGEST_SUFFIX.search(rest)
    body, suffix = (rest[: digest.start(1)], rest[digest.start(1):]) if digest else (rest, "")
    at = body.rfind("@")
    if at < 0:
        return text, False
    return f"{scheme or ''}***{body[at:]}{suffix}", True

