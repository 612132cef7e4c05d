"""One small registry per plug-in kind (models, methods, metrics, devices)."""
from __future__ import annotations

import difflib
import importlib
from typing import Callable, Generic, Iterable, TypeVar

T = TypeVar("T")


class UnknownNameError(LookupError):
    """A name that no registry entry has; the message lists the accepted ones."""

    def __str__(self) -> str:
        return str(self.args[0])


class Registry(Generic[T]):
    """Maps lowercase names to factories; unknown names fail with the accepted ones.

    `plugins` names modules imported on first lookup, so that packages which
    register into this registry (baselines, lazydit) need no import by the caller.
    """

    def __init__(self, kind: str, plugins: Iterable[str] = (), base: type | None = None):
        self.kind = kind
        self.base = base
        self._entries: dict[str, T] = {}
        self._plugins = tuple(plugins)
        self._loaded = not self._plugins

    def register(self, name: str) -> Callable[[T], T]:
        key = name.lower()

        def add(entry: T) -> T:
            if key in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            if self.base is not None and not (isinstance(entry, type) and issubclass(entry, self.base)):
                raise TypeError(f"{self.kind} {name!r} must be a subclass of {self.base.__name__}; got {entry!r}")
            self._entries[key] = entry
            return entry

        return add

    def get(self, name: str) -> T:
        self._load_plugins()
        key = str(name).lower()
        if key not in self._entries:
            raise UnknownNameError(self.unknown_message(name))
        return self._entries[key]

    def unknown_message(self, name: str) -> str:
        accepted = ", ".join(self.names())
        close = difflib.get_close_matches(str(name).lower(), list(self._entries), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        return f"unknown {self.kind} {name!r}; accepted: {accepted}.{hint}"

    def names(self) -> list[str]:
        self._load_plugins()
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        self._load_plugins()
        return str(name).lower() in self._entries

    def _load_plugins(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for module in self._plugins:
            importlib.import_module(module)
