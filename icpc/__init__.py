"""ICPC: input compression with positional consistency for transformer training and inference.

The public Python API, for your own training loop (imported on first use: ``import icpc`` stays cheap)::

    icpc.ICPCLoader(url, batch_size=..., seed=...)   # this rank's batches; set_epoch, state_dict, len
    icpc.LevelSchedule(...)                           # level probabilities per epoch
    icpc.plan_loss / icpc.plan_cross_entropy          # the loss of a balanced-plan batch
    icpc.build_model(spec, model_cfg, num_classes)    # a model plugin for the dataset's spec
    icpc.open_dataset(url), icpc.BATCH_FIELDS         # the dataset, the batch schema
"""

__version__ = "0.1.0"

_EXPORTS = {
    "ICPCLoader": "icpc.loader", "LevelSchedule": "icpc.schedule", "plan_loss": "icpc.loss",
    "plan_cross_entropy": "icpc.loss", "build_model": "icpc.models", "load_model": "icpc.modelio",
    "open_dataset": "icpc.dataset", "BATCH_FIELDS": "icpc.schema",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'icpc' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
