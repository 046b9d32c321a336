"""Payload encryption: with `STAGEFLOW_CODEC_KEY`, every Temporal payload is sealed.

The standard Temporal codec (samples-python `encryption/`): each payload is
serialized and sealed with AES-GCM (256-bit key, a random 96-bit nonce per
payload), and the sealed payload says so in its metadata — encoding
`binary/encrypted` and the key's id, a fingerprint of the key — so a process
with another key or none fails with a line saying which key it needs, and a
payload written before encryption was turned on still decodes. Failure messages
and stack traces are moved into an encoded (so sealed) attribute too.

Every client and worker takes its converter from `data_converter` (through
`worker.settings.connect`); the Web UI decrypts through `stageflow codec-server`.
Make a key with:

    python -c 'import base64, os; print(base64.b64encode(os.urandom(32)).decode())'
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import os
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import (
    DataConverter,
    DefaultFailureConverter,
    DefaultFailureConverterWithEncodedAttributes,
    PayloadCodec,
)

ENCODING = "binary/encrypted"
KEY_ID = "encryption-key-id"
NONCE_BYTES = 12
MAKE_A_KEY = "python -c 'import base64, os; print(base64.b64encode(os.urandom(32)).decode())'"


class PayloadKeyError(ValueError):
    """A sealed payload this process cannot open: no key, another key, or tampered."""


def parse_key(text: str) -> bytes:
    """The 32 bytes of a `STAGEFLOW_CODEC_KEY` (base64); a ValueError says how to make one."""
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != 32:
        raise ValueError(
            "STAGEFLOW_CODEC_KEY must be a base64 32-byte key (AES-256); make one with "
            + MAKE_A_KEY
        )
    return key


def key_id(key: bytes) -> str:
    """The id written beside each sealed payload: a fingerprint, not the key."""
    return "sf-" + hashlib.sha256(b"stageflow payload key\0" + key).hexdigest()[:16]


class EncryptionCodec(PayloadCodec):
    """Seals payloads with one AES-GCM key; opens those sealed with it.

    Without a key it seals nothing, and a sealed payload fails to decode with a
    line saying that STAGEFLOW_CODEC_KEY is missing (instead of the SDK's
    "unknown encoding").
    """

    def __init__(self, key: bytes | None) -> None:
        self._aead = AESGCM(key) if key is not None else None
        self.key_id = key_id(key) if key is not None else None

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        if self._aead is None or self.key_id is None:
            return list(payloads)
        return [
            Payload(
                metadata={"encoding": ENCODING.encode(), KEY_ID: self.key_id.encode()},
                data=self._seal(p.SerializeToString()),
            )
            for p in payloads
        ]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self._open(p) for p in payloads]

    def _seal(self, data: bytes) -> bytes:
        assert self._aead is not None
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, data, None)

    def _open(self, payload: Payload) -> Payload:
        if payload.metadata.get("encoding", b"").decode() != ENCODING:
            return payload  # written before encryption was turned on
        sealed_with = payload.metadata.get(KEY_ID, b"").decode() or "?"
        if self._aead is None:
            raise PayloadKeyError(
                f"this payload is encrypted (key {sealed_with}) and STAGEFLOW_CODEC_KEY "
                "is not set here: set it to the key every Stageflow process uses"
            )
        if sealed_with != self.key_id:
            raise PayloadKeyError(
                f"this payload is encrypted with key {sealed_with}, but STAGEFLOW_CODEC_KEY "
                f"here is key {self.key_id}"
            )
        data = payload.data
        try:
            opened = self._aead.decrypt(data[:NONCE_BYTES], data[NONCE_BYTES:], None)
        except InvalidTag as err:
            raise PayloadKeyError(
                f"an encrypted payload (key {sealed_with}) does not open: it was altered"
            ) from err
        return Payload.FromString(opened)


def codec_key(text: str | None) -> bytes | None:
    """The key from the setting's text, or None when encryption is off."""
    return parse_key(text) if text else None


def data_converter(key_text: str | None) -> DataConverter:
    """The converter of every Stageflow client and worker: pydantic JSON payloads,
    sealed (and failure messages with them) when a key is given."""
    key = codec_key(key_text)
    return dataclasses.replace(
        pydantic_data_converter,
        payload_codec=EncryptionCodec(key),
        failure_converter_class=(
            DefaultFailureConverterWithEncodedAttributes if key else DefaultFailureConverter
        ),
    )
