"""One plugin registry class, shared by segmentation backends and fetchers.

Built-in plugins register with :meth:`Registry.register`; third-party
packages add entries to an entry-point group (``imageextract.segmenters`` or
``imageextract.fetchers``).  A plugin that fails to import is skipped with a
warning; an unknown name raises :class:`BackendNotFoundError` listing the
names that are available.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import warnings
from importlib.metadata import entry_points
from typing import Any, Callable

from .errors import BackendNotFoundError, ConfigError

logger = logging.getLogger(__name__)


class Registry:
    """Name → factory mapping with lazy entry-point discovery.

    Parameters
    ----------
    group : str
        Entry-point group scanned for third-party plugins.
    kind : str
        Human name used in error messages ("segmentation backend").
    """

    def __init__(self, group: str, kind: str) -> None:
        self.group = group
        self.kind = kind
        self._factories: dict[str, Callable[..., Any] | str] = {}
        self._discovered = False

    def register(self, name: str, target: Callable[..., Any] | str | None = None):
        """Register ``target`` (a class, a factory, or ``"module:attr"``) under ``name``.

        Usable as a decorator: ``@registry.register("classical")``.
        """
        if target is not None:
            self._factories[name] = target
            return target

        def decorator(obj):
            self._factories[name] = obj
            return obj

        return decorator

    def _discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        try:
            eps = entry_points(group=self.group)
        except Exception as err:  # pragma: no cover - broken metadata
            warnings.warn(f"could not read entry points {self.group!r}: {err}", stacklevel=3)
            return
        for ep in eps:
            # Built-ins registered in code win over the same name from metadata.
            self._factories.setdefault(ep.name, ep.value)

    def names(self) -> list[str]:
        """Sorted names of every registered plugin (loaded or not)."""
        self._discover()
        return sorted(self._factories)

    def get(self, name: str) -> Callable[..., Any]:
        """Return the factory registered as ``name``, importing it if needed."""
        self._discover()
        if name not in self._factories:
            available = ", ".join(self.names()) or "(none)"
            raise BackendNotFoundError(
                f"unknown {self.kind} {name!r}; installed: {available}"
            )
        target = self._factories[name]
        if isinstance(target, str):
            module_name, _, attr = target.partition(":")
            try:
                module = importlib.import_module(module_name)
                target = getattr(module, attr) if attr else module
            except Exception as err:
                raise BackendNotFoundError(
                    f"{self.kind} {name!r} is installed but failed to load "
                    f"({type(err).__name__}: {err})"
                ) from err
            self._factories[name] = target
        return target  # type: ignore[return-value]

    def check_options(self, name: str, options: dict[str, Any]) -> None:
        """Raise :class:`ConfigError` naming the keys of ``options`` that
        plugin ``name`` does not take, and the ones it does (a plugin taking
        ``**kwargs``, or one whose signature cannot be read, takes any)."""
        try:
            params = inspect.signature(self.get(name)).parameters.values()
        except (TypeError, ValueError):
            return
        if any(p.kind is p.VAR_KEYWORD for p in params):
            return
        known = [p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ConfigError(f"{self.kind} {name!r} has no option "
                              f"{', '.join(map(repr, unknown))}; its options: "
                              f"{', '.join(known) or 'none'}")

    def create(self, name: str, **options: Any) -> Any:
        """Instantiate plugin ``name`` with keyword ``options`` (unknown
        keys: :class:`ConfigError`, see :meth:`check_options`)."""
        self.check_options(name, options)
        return self.get(name)(**options)
