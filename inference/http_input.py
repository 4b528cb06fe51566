"""HTTP request bodies -> the raw payload a modality's compressor takes, with 4xx reasons for bad input.

Pure functions (no Ray, no Starlette): the Serve ingress calls them, the unit tests call them on
bytes. A request is either JSON (``{"data": BASE64}`` for media, ``{"text": "..."}`` for text,
optionally ``"modality"``) or a raw upload whose ``Content-Type`` names the media kind.
"""

from __future__ import annotations

import base64
import binascii
import json

from icpc.pipeline.modalities import get_modality, registry

# application/octet-stream is accepted for every medium: the modality's decoder then decides
# whether it can decode the bytes. The other raw content types are each modality's media_types.
ANY_MEDIA = "application/octet-stream"
JSON_FIELDS = {"data", "text", "modality"}


def media_types(modality: str) -> tuple[str, ...]:
    """Content-Type prefixes of raw uploads of ``modality`` (from its plugin)."""
    return get_modality(modality).media_types


def _json_field(modality: str) -> str:
    return get_modality(modality).json_field


def _sent_modality(kind: str) -> str | None:
    """The registered modality whose media types ``kind`` belongs to, if any."""
    return next((m.name for m in registry().values() if kind.startswith(m.media_types)), None)


class RequestError(Exception):
    """A request the server refuses: HTTP ``status`` and a ``reason`` that says how to fix it."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


def check_declared_length(content_length: str | None, max_bytes: int) -> None:
    """Refuse a body whose declared ``Content-Length`` is over ``max_bytes`` before reading it."""
    if content_length is None:
        return
    try:
        n = int(content_length)
    except ValueError:
        raise RequestError(400, f"Content-Length {content_length!r} is not a number") from None
    if n > max_bytes:
        raise RequestError(413, f"body of {n} bytes is over the {max_bytes} byte limit")


def media_type(content_type: str | None) -> str:
    """``"image/png; q=1"`` -> ``"image/png"`` (lower case); ``""`` when absent."""
    return (content_type or "").split(";")[0].strip().lower()


def read_payload(body: bytes, content_type: str | None, modality: str, max_bytes: int) -> bytes:
    """The raw sample in a request body: media bytes, or UTF-8 text for the text modality.

    Raises RequestError 400 (malformed JSON, bad base64, missing field), 413 (over ``max_bytes``),
    415 (a medium this model does not serve) with the reason.
    """
    if len(body) > max_bytes:
        raise RequestError(413, f"body of {len(body)} bytes is over the {max_bytes} byte limit")
    kind = media_type(content_type)
    if kind == "application/json":
        return _json_payload(body, modality, max_bytes)
    accepted = media_types(modality)
    if kind == ANY_MEDIA or (kind and kind.startswith(accepted)):
        if not body:
            raise RequestError(400, "empty body: upload the sample or send JSON")
        return body
    sent = _sent_modality(kind) if kind else None
    if sent:
        raise RequestError(415, f"this model serves {modality}, the request carries {sent} ({kind})")
    raise RequestError(415, f"unsupported Content-Type {kind or '(none)'!r}: send application/json, "
                            f"{' or '.join(t + '*' for t in accepted)} or {ANY_MEDIA}")


def _json_payload(body: bytes, modality: str, max_bytes: int) -> bytes:
    try:
        doc = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(400, f"malformed JSON: {exc}") from None
    field = _json_field(modality)
    want = '{"text": "..."}' if field == "text" else '{"data": "<base64>"}'
    if not isinstance(doc, dict):
        raise RequestError(400, f"JSON body must be an object like {want}, got {type(doc).__name__}")
    if unknown := sorted(set(doc) - JSON_FIELDS):
        raise RequestError(400, f"unknown field(s) {unknown}: send {want}")
    if "modality" in doc and doc["modality"] != modality:
        raise RequestError(415, f"this model serves {modality}, the request says modality {doc['modality']!r}")
    other = "data" if field == "text" else "text"
    if field not in doc:
        if other in doc:
            raise RequestError(415, f"this model serves {modality}: send {want}, not {other!r}")
        raise RequestError(400, f"missing field {field!r}: send {want}")
    value = doc[field]
    if not isinstance(value, str) or not value:
        raise RequestError(400, f"field {field!r} must be a non-empty string")
    if field == "text":
        payload = value.encode()
        if len(payload) > max_bytes:
            raise RequestError(413, f"text of {len(payload)} bytes is over the {max_bytes} byte limit")
        return payload
    return decode_base64(value, max_bytes)


def decode_base64(text: str, max_bytes: int) -> bytes:
    """Strict base64 (an optional ``data:...;base64,`` prefix allowed), size-checked before decoding."""
    if text.startswith("data:") and ";base64," in text[:200]:
        text = text.split(",", 1)[1]
    if len(text) // 4 * 3 > max_bytes:
        raise RequestError(413, f"base64 data decodes to about {len(text) // 4 * 3} bytes, over the "
                                f"{max_bytes} byte limit")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RequestError(400, f"bad base64 in 'data': {exc}") from None
    if not data:
        raise RequestError(400, "field 'data' decodes to no bytes")
    return data
