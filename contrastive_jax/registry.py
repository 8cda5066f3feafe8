"""One idiom for every kind of plug-in: a literal table of named entries.

Each kind (models, losses, evaluators, source kinds, export formats) has ONE registry,
written as a literal in the module that owns that kind:

    MODELS = Registry("model", {"two_tower": ..., "one_tower": ...}, config_key="model.name")

No import-time registration calls: the table is complete when its module is imported, so
nothing depends on import order. An unknown name is a one-line ConfigError that names the
config key and the known names.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Generic, TypeVar

from contrastive_jax.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one kind of plug-in, looked up by name."""

    def __init__(self, kind: str, entries: Mapping[str, T], *, config_key: str | None = None):
        self.kind = kind
        self.config_key = config_key
        self._entries = dict(entries)

    def __getitem__(self, name: str) -> T:
        if name not in self._entries:
            where = f"config key '{self.config_key}': " if self.config_key else ""
            raise ConfigError(f"{where}unknown {self.kind} {name!r}; known: "
                              f"{', '.join(self._entries)}")
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def items(self) -> Iterator[tuple[str, T]]:
        return iter(self._entries.items())
