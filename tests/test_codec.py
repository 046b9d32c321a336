"""Payload encryption (worker/codec.py) and the Web UI's codec server
(starter/codec_server.py): the codec's round trip and its refusals, a release run
end to end with STAGEFLOW_CODEC_KEY on every process, and the codec server
opening a payload of that release over HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from typing import Any

import httpx
import pytest
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload
from temporalio.api.failure.v1 import Failure
from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from starter.releases import ReleaseRef, release_status, settled
from tests.conftest import Stack, wait_for
from tests.readable import histories_text
from worker.codec import ENCODING, KEY_ID, EncryptionCodec, PayloadKeyError, data_converter, key_id
from worker.devserver import free_port
from workflows.agent_api import TaskProgress
from workflows.release import ReleaseStatus, StageStatus

KEY = base64.b64encode(bytes(range(32))).decode()
OTHER_KEY = base64.b64encode(bytes(range(1, 33))).decode()


def plain(text: str) -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=json.dumps(text).encode())


async def test_codec_round_trip_seals_each_payload_with_a_fresh_nonce() -> None:
    codec = EncryptionCodec(base64.b64decode(KEY))
    sealed = await codec.encode([plain("deploy 1.2.3"), plain("deploy 1.2.3")])
    assert [p.metadata["encoding"].decode() for p in sealed] == [ENCODING, ENCODING]
    assert sealed[0].metadata[KEY_ID].decode() == key_id(base64.b64decode(KEY))
    assert sealed[0].data != sealed[1].data and b"deploy" not in sealed[0].data
    assert await codec.decode(sealed) == [plain("deploy 1.2.3"), plain("deploy 1.2.3")]
    # Written before encryption was turned on: still read.
    assert await codec.decode([plain("old")]) == [plain("old")]


async def test_a_sealed_payload_fails_clearly_without_the_key_with_another_or_altered() -> None:
    sealed = await EncryptionCodec(base64.b64decode(KEY)).encode([plain("x")])
    with pytest.raises(PayloadKeyError, match="STAGEFLOW_CODEC_KEY is not set here"):
        await EncryptionCodec(None).decode(sealed)
    with pytest.raises(PayloadKeyError, match="encrypted with key sf-.* but STAGEFLOW_CODEC_KEY"):
        await EncryptionCodec(base64.b64decode(OTHER_KEY)).decode(sealed)
    altered = Payload()
    altered.CopyFrom(sealed[0])
    altered.data = altered.data[:-1] + bytes([altered.data[-1] ^ 1])
    with pytest.raises(PayloadKeyError, match="altered"):
        await EncryptionCodec(base64.b64decode(KEY)).decode([altered])
    # Without a key nothing is sealed.
    assert await EncryptionCodec(None).encode([plain("x")]) == [plain("x")]


async def test_the_data_converter_round_trips_models_and_refuses_a_bad_key() -> None:
    converter = data_converter(KEY)
    progress = TaskProgress(bytes=3, last_lines=["a"], log_path="/l")
    (payload,) = await converter.encode([progress])
    assert payload.metadata["encoding"].decode() == ENCODING
    assert await converter.decode([payload], [TaskProgress]) == [progress]
    # Failure messages and stack traces travel sealed too.
    failure = Failure()
    await converter.encode_failure(ApplicationError("deploy to db-7 failed", type="X"), failure)
    assert failure.message == "Encoded failure" and b"db-7" not in failure.SerializeToString()
    decoded = await converter.decode_failure(failure)
    assert isinstance(decoded, ApplicationError) and decoded.message == "deploy to db-7 failed"
    with pytest.raises(ValueError, match="base64 32-byte key"):
        data_converter(base64.b64encode(b"too short").decode())
    with pytest.raises(ValueError, match="make one with"):
        data_converter("not base64!")


PIPELINE = """
    name: sealed-{suffix}
    variables:
      TARGET: target-{suffix}-value
    stages:
      - name: dev
        pool: POOL
        tasks:
          - name: deploy
            script: echo "deploying to $TARGET"
"""


async def sealed_release(stack: Stack) -> tuple[ReleaseRef, ReleaseStatus, Client, str]:
    """A release created and run with STAGEFLOW_CODEC_KEY on the API, the control worker
    and the agent; a client with the key watches it settle. The URL of that API."""
    await stack.start_worker(STAGEFLOW_CODEC_KEY=KEY)
    await stack.start_agent("a1", STAGEFLOW_CODEC_KEY=KEY)
    sealed_api = await asyncio.to_thread(stack.start_api, STAGEFLOW_CODEC_KEY=KEY)
    pipeline = stack.write_pipeline(PIPELINE.format(suffix=stack.suffix))
    created = await asyncio.to_thread(
        stack.cli,
        "--json",
        "release",
        "create",
        str(pipeline),
        "--description",
        f"described-{stack.suffix}",
        STAGEFLOW_URL=sealed_api,
    )
    assert created.returncode == 0, created.stderr
    ref = ReleaseRef(f"sealed-{stack.suffix}", 1)
    client = await Client.connect(stack.address, data_converter=data_converter(KEY))

    async def done() -> ReleaseStatus | None:
        status = await release_status(client, ref)
        return status if settled(status) and status.stage("dev").attempts else None

    return ref, await wait_for(done, timeout=60, what=f"{ref} to settle"), client, sealed_api


@pytest.mark.e2e
async def test_a_release_with_a_codec_key_keeps_its_payloads_encrypted_in_temporal(
    stack: Stack,
) -> None:
    ref, status, _, sealed_api = await sealed_release(stack)
    assert status.stage("dev").status == StageStatus.SUCCEEDED
    assert "deploying to target-" in stack.log_text(status.stage("dev").latest.tasks[0].log)  # type: ignore[union-attr]

    # What Temporal holds (read with no key, payloads base64-decoded): sealed.
    histories = await histories_text(stack.client, status)
    assert ENCODING in histories
    for value in (f"target-{stack.suffix}-value", f"described-{stack.suffix}", "deploying"):
        assert value not in histories, f"{value} readable in a history"

    # Through an API with the key, stageflow shows it all.
    shown = await asyncio.to_thread(
        stack.cli, "--json", "release", "show", str(ref), STAGEFLOW_URL=sealed_api
    )
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["description"] == f"described-{stack.suffix}"

    # An API without it still reads the record (Stageflow's own database); what needs
    # Temporal's answer is one line saying what is missing.
    recorded = await asyncio.to_thread(stack.cli, "--json", "release", "show", str(ref))
    assert recorded.returncode == 0, recorded.stderr
    assert json.loads(recorded.stdout)["description"] == f"described-{stack.suffix}"
    pipeline = stack.root / "pipeline.yml"
    blind = await asyncio.to_thread(stack.cli, "release", "create", str(pipeline))
    assert blind.returncode == 2
    assert "encrypted" in blind.stderr and "STAGEFLOW_CODEC_KEY" in blind.stderr
    assert len(blind.stderr.strip().splitlines()) == 1, blind.stderr


def sealed_input(history_json: dict[str, Any]) -> dict[str, Any]:
    """The (proto JSON) input payload of a history's first event."""
    started = history_json["events"][0]["workflowExecutionStartedEventAttributes"]
    payload: dict[str, Any] = started["input"]["payloads"][0]
    return payload


@pytest.mark.e2e
async def test_codec_server_opens_a_real_payload_for_the_web_ui_origin(stack: Stack) -> None:
    ref, status, _, _ = await sealed_release(stack)
    history = await stack.client.get_workflow_handle(ref.workflow_id).fetch_history()
    payload = sealed_input(history.to_json_dict())
    assert base64.b64decode(payload["metadata"]["encoding"]).decode() == ENCODING

    port = free_port()
    origin = "http://127.0.0.1:8233"
    server = stack.spawn(
        ["codec-server", "--port", str(port), "--allow-origin", origin],
        "codec-server",
        STAGEFLOW_CODEC_KEY=KEY,
    )
    url = f"http://127.0.0.1:{port}"
    headers = {"Origin": origin, "X-Namespace": "default", "Content-Type": "application/json"}
    async with httpx.AsyncClient(base_url=url, timeout=5) as http:

        async def answering() -> bool:
            assert server.poll() is None, (stack.root / "codec-server.log").read_text()
            try:
                await http.options("/decode")
            except httpx.TransportError:
                return False
            return True

        await wait_for(answering, timeout=30, what="the codec server to answer")

        preflight = await http.options(
            "/decode",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type,x-namespace",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == origin
        assert "x-namespace" in preflight.headers["access-control-allow-headers"].lower()

        decoded = await http.post("/decode", json={"payloads": [payload]}, headers=headers)
        assert decoded.status_code == 200, decoded.text
        assert decoded.headers["access-control-allow-origin"] == origin
        (opened,) = decoded.json()["payloads"]
        assert base64.b64decode(opened["metadata"]["encoding"]) == b"json/plain"
        assert f"described-{stack.suffix}" in base64.b64decode(opened["data"]).decode()

        # /encode seals as the processes do; /decode opens it again.
        plain_json = json_format.MessageToDict(plain("hello"))
        sealed = await http.post("/encode", json={"payloads": [plain_json]}, headers=headers)
        again = await http.post("/decode", json=sealed.json(), headers=headers)
        assert again.json()["payloads"] == [plain_json]

        # Another origin gets no CORS grant; another namespace is refused.
        foreign = await http.post(
            "/decode", json={"payloads": [payload]}, headers={**headers, "Origin": "http://evil"}
        )
        assert "access-control-allow-origin" not in foreign.headers
        other_ns = await http.post(
            "/decode", json={"payloads": [payload]}, headers={**headers, "X-Namespace": "other"}
        )
        assert other_ns.status_code == 403
        assert other_ns.headers["content-type"] == "application/problem+json"

    os.kill(server.pid, 15)
    assert await asyncio.to_thread(server.wait, 10) == 0
