"""Docker image references: the grammar of ``distribution/reference``, checked without I/O.

``VAST_TEMPLATE_IMAGE`` is sent to Vast as the instance's image; a string the registry cannot
resolve (``https://docker.io/foo:1``, ``Foo/Bar``) would rent a GPU that never boots. The
grammar, as ``github.com/distribution/reference`` (the Docker CLI's parser) defines it::

    reference        := name [ ":" tag ] [ "@" digest ]
    name             := [ domain "/" ] path                  (at most 255 characters)
    domain           := host [ ":" port ]
    host             := domain-name | "[" IPv6address "]"
    domain-name      := domain-component [ "." domain-component ]*
    domain-component := /[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]/
    port             := /[0-9]+/
    path             := path-component [ "/" path-component ]*
    path-component   := /[a-z0-9]+/ [ separator /[a-z0-9]+/ ]*
    separator        := /[_.]|__|[-]+/
    tag              := /[\\w][\\w.-]{0,127}/
    digest           := algorithm ":" hex                    (sha256: 64 hex digits, sha512: 128)

:func:`parse` splits a reference the way ``docker pull`` does (the first component is the
registry only when it has a ``.`` or ``:``, is ``localhost``, or has an upper-case letter) and
raises ``ValueError`` with the part at fault; :func:`validate` returns the reference unchanged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

NAME_MAX_CHARS: Final = 255

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = re.compile(rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*", re.ASCII)
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])"
_DOMAIN = re.compile(rf"{_HOST}(?::[0-9]+)?", re.ASCII)
_TAG = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)
_DIGEST = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}", re.ASCII)
#: hex digits of the registered digest algorithms (``opencontainers/go-digest``), lower case only
_DIGEST_HEX: Final = {"sha256": 64, "sha384": 96, "sha512": 128}
_SHAPE = "[registry[:port]/]path[:tag][@digest], e.g. ghcr.io/org/app:1.0"


@dataclass(frozen=True, slots=True)
class ImageRef:
    """A parsed reference: registry ``domain`` (None: Docker Hub), ``path``, ``tag``, ``digest``."""

    domain: str | None
    path: str
    tag: str | None = None
    digest: str | None = None


def validate(reference: str) -> str:
    """Return ``reference`` unchanged if it is a valid image reference; raise ``ValueError`` if not."""
    parse(reference)
    return reference


def parse(reference: str) -> ImageRef:
    """Split ``reference`` into its parts; raise ``ValueError`` naming the part that breaks the grammar."""
    if not reference:
        raise ValueError(f"is empty; expected {_SHAPE}")
    if "://" in reference:
        raise ValueError(f"must not have a URL scheme: {reference!r} (write {_without_scheme(reference)})")
    if not reference.isascii() or not reference.isprintable() or " " in reference:
        raise ValueError(f"{reference!r} has spaces or characters outside printable ASCII")
    rest, at, digest = reference.partition("@")
    if at:
        _check_digest(digest)
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    tag: str | None = None
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1 :]
        if not _TAG.fullmatch(tag):
            raise ValueError(f"tag {tag!r} must be 1-128 of [A-Za-z0-9_.-], not starting with '.' or '-'")
    domain, path = _split_domain(rest)
    _check_path(path)
    if len(rest) > NAME_MAX_CHARS:
        raise ValueError(f"the name is {len(rest)} characters long; at most {NAME_MAX_CHARS} are allowed")
    return ImageRef(domain, path, tag, digest if at else None)


def _split_domain(name: str) -> tuple[str | None, str]:
    first, slash, remainder = name.partition("/")
    if not slash:
        return None, name
    is_domain = "." in first or ":" in first or first == "localhost" or first != first.lower()
    if not is_domain:
        return None, name
    if not _DOMAIN.fullmatch(first):
        raise ValueError(f"registry {first!r} is not host[:port] (letters, digits, '-' and '.')")
    return first, remainder


def _check_path(path: str) -> None:
    for component in path.split("/"):
        if _PATH_COMPONENT.fullmatch(component):
            continue
        if not component:
            raise ValueError(f"path {path!r} has an empty component; expected {_SHAPE}")
        if component.lower() != component and _PATH_COMPONENT.fullmatch(component.lower()):
            raise ValueError(f"repository path {path!r} must be lower case")
        raise ValueError(
            f"path component {component!r} must be lower-case letters and digits, "
            "separated by '.', '_', '__' or dashes"
        )


def _check_digest(digest: str) -> None:
    if not _DIGEST.fullmatch(digest):
        raise ValueError(f"digest {digest!r} must be algorithm:hex, e.g. sha256:<64 hex digits>")
    algorithm, _, hex_digits = digest.partition(":")
    wanted = _DIGEST_HEX.get(algorithm)
    if wanted is not None and (len(hex_digits) != wanted or hex_digits != hex_digits.lower()):
        raise ValueError(f"digest {digest!r}: {algorithm} takes {wanted} lower-case hex digits")


def _without_scheme(reference: str) -> str:
    return reference.split("://", 1)[1] or "registry/path:tag"
