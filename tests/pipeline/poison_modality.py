"""A test-only plugin modality (loaded through ICPC_MODALITIES): the image modality, with inputs that kill or hang it.

An input whose bytes start with ``ICPC-ABORT`` makes the decoder call ``os.abort()`` (SIGABRT, as a
native decoder's failed assertion would), one starting with ``ICPC-HANG`` makes it sleep for an
hour; ``ICPC_TEST_DELAY_S`` slows every decode down so that fault tests can strike mid-job. Shards
hold exactly what the image modality writes for the same inputs.

The modality ``slowstart`` is the image modality with a per-process resource that takes
``WARM_UP_S`` to load (as text's teacher model does on a busy node), loaded by its first decode
or by its ``warm_up`` hook, and run in long-lived Ray actors.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time

from icpc.pipeline.modalities import register
from icpc.pipeline.modalities import image

ABORT, HANG = b"ICPC-ABORT", b"ICPC-HANG"


def decode(data: bytes, spec):
    if data.startswith(ABORT):
        os.abort()
    if data.startswith(HANG):
        time.sleep(3600)
    time.sleep(float(os.environ.get("ICPC_TEST_DELAY_S", "0")))
    return image.decode(data, spec)


def build_spec(cfg):
    return dataclasses.replace(image.build_spec(cfg), modality="poison")


MODALITY = register(dataclasses.replace(image.MODALITY, name="poison", build_spec=build_spec, decode=decode))


WARM_UP_S = 6.0


@functools.lru_cache(maxsize=1)
def slow_resource() -> bool:
    time.sleep(WARM_UP_S)
    return True


def slowstart_decode(data: bytes, spec):
    slow_resource()
    return image.decode(data, spec)


SLOWSTART = register(dataclasses.replace(
    image.MODALITY, name="slowstart", decode=slowstart_decode, needs_actors=lambda cfg: True,
    build_spec=lambda cfg: dataclasses.replace(image.build_spec(cfg), modality="slowstart"),
    warm_up=lambda spec: slow_resource()))
