"""What the API's answers mean, through the client's transport seam (no network)."""

from __future__ import annotations

import httpx
import pytest

from ingestor.config import ApiKey, ApiSettings
from ingestor.errors import ApiUnreachable, NotFound
from ingestor.klaviyo import KlaviyoClient

DS = "01KTMWCZ8ZMNZS0HG5HQNX0H6E"


def client(status: int, body: bytes, content_type: str) -> KlaviyoClient:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=body, headers={"content-type": content_type})

    settings = ApiSettings(base_url="https://api.example.test")
    return KlaviyoClient(settings, ApiKey("pk_test_0123456789"), httpx.MockTransport(answer))


def test_a_json_api_404_means_the_data_source_does_not_exist() -> None:
    body = b'{"errors": [{"status": 404, "code": "not_found", "detail": "no such data source"}]}'
    with client(404, body, "application/vnd.api+json") as api, pytest.raises(NotFound):
        api.get_data_source(DS)


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"<html><body><h1>404 Not Found</h1>nginx</body></html>", "text/html"),
        (b"", "text/plain"),
        (b'{"message": "route not found"}', "application/json"),
    ],
)
def test_a_404_that_is_not_from_the_api_is_the_operators_problem(
    body: bytes, content_type: str
) -> None:
    """Before: a wrong base_url or a proxy's 404 was reported to the company as 'data source
    … does not exist; correct data_source_id'."""
    with client(404, body, content_type) as api, pytest.raises(ApiUnreachable) as caught:
        api.get_data_source(DS)
    assert "check api.base_url (https://api.example.test)" in str(caught.value)


def test_a_cookie_the_api_sets_is_neither_kept_nor_sent_back() -> None:
    """The API is stateless. A cookie a load balancer sets would tie the account's requests
    to one backend, and reading it built a urllib request per response (7-13% of the
    worker's CPU at 500 companies, issue #14)."""
    sent: list[str | None] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request.headers.get("cookie"))
        return httpx.Response(
            204, headers={"set-cookie": "AWSALB=sticky; Path=/; Domain=api.example.test"}
        )

    settings = ApiSettings(base_url="https://api.example.test")
    with KlaviyoClient(settings, ApiKey("pk_test_0123456789"), httpx.MockTransport(answer)) as api:
        api.post_bulk("/api/data-source-record-bulk-create-jobs", b"{}")
        api.post_bulk("/api/data-source-record-bulk-create-jobs", b"{}")
    assert sent == [None, None]
