"""Name -> implementation registries: config names map to code; unknown names list valid ones."""

from __future__ import annotations

from typing import Generic, Protocol, TypeVar

from cwa import CwaError


class Named(Protocol):
    name: str


T = TypeVar("T", bound=Named)


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}
        self._aliases: dict[str, str] = {}

    def register(self, item: T) -> T:
        if item.name in self._items:
            raise ValueError(f"{self.kind} {item.name!r} is registered twice")
        self._items[item.name] = item
        return item

    def alias(self, alias: str, name: str) -> None:
        """`alias` resolves to the item registered as `name`."""
        self._aliases[alias] = name

    def get(self, name: str) -> T:
        name = self._aliases.get(name, name)
        if name not in self._items:
            raise CwaError(f"unknown {self.kind} {name!r}; valid: {', '.join(self.names())}")
        return self._items[name]

    def items(self) -> list[T]:
        return list(self._items.values())

    def names(self) -> list[str]:
        return sorted([*self._items, *self._aliases])

    def __contains__(self, name: str) -> bool:
        return name in self._items or name in self._aliases
