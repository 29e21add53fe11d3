"""Frozen records read from and written to JSON: the machinery under spec.py.

A record is a frozen, keyword-only dataclass. `from_json` builds one from a JSON object: missing
required fields, wrong types and failed checks are BundleErrors that say where; keys the record
does not know are kept in `extra` and written back by `to_json`, so JSON written by a later version
survives a round trip through this one. A record checks itself in `__post_init__`, so one that
exists is valid, however it was made.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar

from .errors import BundleError, InputError


def require(condition: bool, message: str) -> None:
    if not condition:
        raise BundleError(message)


def _json(value):
    """A record (anything with `to_json`), tuple or mapping as plain JSON values."""
    if hasattr(value, "to_json"):
        return value.to_json()
    if isinstance(value, tuple | list):
        return [_json(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _json(v) for k, v in value.items()}
    return value


def as_tuple(value):
    """JSON lists become tuples (frozen); anything else is left for the record's checks."""
    return tuple(value) if isinstance(value, list) else value


@dataclass(frozen=True, kw_only=True)
class Record:
    """A JSON object with known fields. Keys this version does not know ride along in `extra`."""

    extra: Mapping[str, Any] = field(default_factory=dict, repr=False)

    # Fields written as null when None (bundles have always carried them); other None fields are
    # left out of the JSON.
    NULLABLE: ClassVar[frozenset[str]] = frozenset()
    # How a field's JSON value becomes the attribute (default: as it is).
    PARSE: ClassVar[Mapping[str, Callable]] = {}

    @classmethod
    def known(cls) -> list[str]:
        return [f.name for f in fields(cls) if f.name != "extra"]

    @classmethod
    def from_json(cls, data, what: str):
        """Build from a JSON object; BundleError naming `what` when it is not a valid one."""
        require(isinstance(data, dict), f"{what} must be a JSON object")
        known = cls.known()
        for f in fields(cls):
            if f.default is MISSING and f.default_factory is MISSING:
                require(f.name in data, f"{what} lacks '{f.name}'")
        values = {}
        for name in known:
            if name not in data:
                continue
            value, parse = data[name], cls.PARSE.get(name)
            if parse is not None and value is not None:
                try:
                    value = parse(value)
                except BundleError:
                    raise  # a nested record's own error, which says where
                except (InputError, TypeError, ValueError) as error:
                    msg = f"{what}.{name} is malformed: {error}"
                    raise BundleError(msg) from None
            values[name] = value
        try:
            return cls(**values, extra={k: v for k, v in data.items() if k not in known})
        except BundleError as error:
            msg = f"{what}: {error}"
            raise BundleError(msg) from None
        except (InputError, TypeError, ValueError) as error:
            msg = f"{what} is malformed: {error}"
            raise BundleError(msg) from None

    def to_json(self) -> dict:
        """Plain JSON (new objects throughout): the known fields, then `extra` as it came."""
        out = {key: _json(value) for key, value in self.extra.items()}
        for name in self.known():
            value = getattr(self, name)
            if value is not None or name in self.NULLABLE:
                out[name] = _json(value)
        return out


def numbers(value):
    """A JSON list of numbers as a tuple of floats (frozen); anything else is left to the checks."""
    return tuple(float(v) for v in value) if isinstance(value, list) else value
