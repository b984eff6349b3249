"""Name -> object registries, so that methods plug in by name without if/elif dispatch."""

from __future__ import annotations

import difflib
from typing import Any, Callable, ClassVar, Generic, Iterator, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """A name that is not registered; the message lists the allowed names."""

    def __str__(self) -> str:
        return str(self.args[0])


class Registry(Generic[T]):
    """A named collection of entries of one kind (scorers, allocations, readers, metrics...)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers its target under `name`; a name can be taken only once."""

        def decorator(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = entry
            return entry

        return decorator

    def get(self, name: str) -> T:
        """The entry called `name`, or an error naming the allowed names and the closest one."""
        if name not in self._entries:
            raise UnknownNameError(self.unknown_message(name))
        return self._entries[name]

    def unknown_message(self, name: object) -> str:
        allowed = ", ".join(self.names())
        close = difflib.get_close_matches(str(name), self.names(), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"unknown {self.kind} {name!r} (allowed: {allowed}){hint}"

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


class Configurable:
    """A registered entry with hyper-parameters settable from params.yaml.

    `hyperparameters` maps each accepted name to its default; the config validation reads it and
    checks values against the default's type.
    """

    hyperparameters: ClassVar[dict[str, Any]] = {}

    def __init__(self, **hyper: Any) -> None:
        unknown = sorted(set(hyper) - set(self.hyperparameters))
        if unknown:
            allowed = ", ".join(sorted(self.hyperparameters)) or "none"
            raise ValueError(f"unknown hyper-parameter {unknown[0]!r} (allowed: {allowed})")
        self.hyper = {**self.hyperparameters, **hyper}
