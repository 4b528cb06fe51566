"""Model plugins (DESIGN contract 6): the registry, what a plugin is given, and the built-in plugins.

    from icpc.models import build_model
    model = build_model(dataset.spec, ModelConfig(name="timm:vit_tiny_patch16_224"), num_classes=10)

See ``registry`` for the reference forms (``transformer``, ``timm:NAME``, ``hf:PATH_OR_NAME``,
``PKG.MODULE:FACTORY``, ``icpc.models`` entry points) and ``weights`` for ``model.weights``.
"""

from icpc.models.registry import (ENTRY_POINT_GROUP, ModelContext, ModelPluginError, available, build_model,
                                  plugin_record, plugin_ref, resolve)
from icpc.models.weights import read_weights

__all__ = ["ENTRY_POINT_GROUP", "ModelContext", "ModelPluginError", "available", "build_model", "plugin_record",
           "plugin_ref", "read_weights", "resolve"]
