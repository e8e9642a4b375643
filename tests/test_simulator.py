"""The simulator holds the worker to the published spec, and says how to use it."""

from __future__ import annotations

import json

import httpx
import orjson

from ingestor.kinds import CUSTOM_OBJECTS
from ingestor.simulator import Simulator
from tests.conftest import DS_ID, KEY

ENVELOPE = CUSTOM_OBJECTS.envelope(DS_ID)


def json_dumps(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def post(sim: Simulator, body: bytes, content_type: str) -> httpx.Response:
    return httpx.post(
        sim.url + CUSTOM_OBJECTS.endpoint,
        content=body,
        headers={
            "Authorization": f"Klaviyo-API-Key {KEY}",
            "revision": "2025-07-15",
            "content-type": content_type,
        },
    )


def test_only_the_media_type_the_spec_lists_is_accepted(sim: Simulator) -> None:
    body = ENVELOPE.body([b'{"id": 1}'])
    assert post(sim, body, "application/json").status_code == 415
    assert post(sim, body, "application/vnd.api+json").status_code == 204


def test_records_and_bodies_are_held_to_the_decimal_reading_of_4mb_and_512kb(
    sim: Simulator,
) -> None:
    """The spec says "512KB" and "4MB"; between 512,000 and 524,288 bytes a record is refused
    (the worker skips such records before sending; see the batcher)."""
    just_over = orjson.dumps({"id": 1, "pad": "x" * (512_000 - 10)})
    assert 512_000 < len(just_over) < 512 * 1024
    refused = post(sim, ENVELOPE.body([just_over]), "application/vnd.api+json")
    assert refused.status_code == 400 and "the maximum is 512000" in refused.text
    fits = orjson.dumps({"id": 1, "pad": "x" * (512_000 - 40)})
    assert post(sim, ENVELOPE.body([fits]), "application/vnd.api+json").status_code == 204
    big = [orjson.dumps({"id": i, "pad": "y" * 150_000}) for i in range(27)]
    assert 4_000_000 < len(ENVELOPE.body(big)) < 4 * 1024 * 1024
    assert post(sim, ENVELOPE.body(big), "application/vnd.api+json").status_code == 413


def test_a_record_nested_255_levels_deep_is_answered_not_dropped(sim: Simulator) -> None:
    """Before: the simulator's own serializer gave up at 254 levels and the connection was
    dropped without an answer."""
    deep: dict[str, object] = {"leaf": 1}
    for _ in range(255):
        deep = {"n": deep}
    record = b'{"id": 1, "deep": ' + json_dumps(deep) + b"}"
    assert post(sim, ENVELOPE.body([record]), "application/vnd.api+json").status_code == 204


def test_a_simulator_without_limits_declares_none() -> None:
    """Before: with its limits switched off it still sent RateLimit-Limit: 60 (the default
    setting's number), and a client that believes the header slowed to 60 a minute."""
    from ingestor.config import RateLimitSettings

    off = RateLimitSettings(enabled=False)
    with Simulator({KEY: "acme"}, bulk_limits=off, read_limits=off) as unlimited:
        unlimited.add_data_source("acme", DS_ID)
        answer = post(unlimited, ENVELOPE.body([b'{"id": 1}']), "application/vnd.api+json")
    assert answer.status_code == 204 and "ratelimit-limit" not in answer.headers
