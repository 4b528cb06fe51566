"""The modality registry: one plugin module per modality, looked up by name.

A plugin module defines a ``Modality`` (``base.py``) and registers it. The built-in ones are
listed in ``BUILTIN`` (adding one is a new module and one line here). A modality outside this
package is a module named in the ``ICPC_MODALITIES`` environment variable (comma-separated;
torchrun ranks inherit it, and the compress job and the Serve app forward it to their Ray
workers) or an entry point in the group ``icpc.modalities`` of an installed package; its import
calls ``register``.
"""

from __future__ import annotations

import importlib
import os

from icpc.pipeline.modalities.base import Compressed, Modality

__all__ = ["BUILTIN", "Compressed", "Modality", "PLUGINS_ENV", "get_modality", "register", "registry"]

# name -> module defining ``MODALITY``
BUILTIN = {
    "image": "icpc.pipeline.modalities.image",
    "text": "icpc.pipeline.modalities.text",
    "video": "icpc.pipeline.modalities.video",
    "audio": "icpc.pipeline.modalities.audio",
}
PLUGINS_ENV = "ICPC_MODALITIES"
ENTRY_POINT_GROUP = "icpc.modalities"

_REGISTRY: dict[str, Modality] = {}
_loaded = False


def register(modality: Modality) -> Modality:
    """Add ``modality`` under its name (a plugin module calls this when imported)."""
    known = _REGISTRY.get(modality.name)
    if known is not None and known is not modality and known.compress is not modality.compress:
        raise ValueError(f"modality {modality.name!r} is registered twice (by {known.compress.__module__} "
                         f"and {modality.compress.__module__})")
    _REGISTRY[modality.name] = modality
    return modality


def registry() -> dict[str, Modality]:
    """Every modality: the built-in ones, then plugins from ``ICPC_MODALITIES`` and entry points."""
    global _loaded
    if not _loaded:
        _loaded = True
        for module in BUILTIN.values():
            register(importlib.import_module(module).MODALITY)
        for module in filter(None, (m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(","))):
            try:
                importlib.import_module(module)
            except ImportError as exc:
                raise ValueError(f"{PLUGINS_ENV} names {module!r}, which cannot be imported: {exc}") from None
        from importlib.metadata import entry_points

        for ep in entry_points(group=ENTRY_POINT_GROUP):
            ep.load()
    return _REGISTRY


def get_modality(name: str) -> Modality:
    modalities = registry()
    if name not in modalities:
        raise ValueError(f"modality {name!r} is not available; choose one of {sorted(modalities)} "
                         f"(a plugin module must be named in {PLUGINS_ENV} or an 'icpc.modalities' entry point)")
    return modalities[name]


def plugin_env() -> dict[str, str]:
    """Environment variables that give a Ray worker the same plugins as this process."""
    value = os.environ.get(PLUGINS_ENV, "")
    return {PLUGINS_ENV: value} if value else {}
