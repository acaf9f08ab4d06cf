"""API keys over HTTP: configured keys (config and MMSERVE_API_KEYS) are required on every route but liveness and
readiness; a wrong or missing key is a 401 in the OpenAI error format."""

from __future__ import annotations

import httpx
import pytest

from tests.e2e.conftest import CONFIG_KEY, ENV_KEY

pytestmark = pytest.mark.e2e
CHAT = {"model": "mmserve-tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def call(served, route: str, headers: dict) -> httpx.Response:
    if route == "chat":
        return httpx.post(f"{served.url}/v1/chat/completions", json=CHAT, headers=headers, timeout=60)
    return httpx.get(f"{served.url}/v1/models", headers=headers, timeout=30)


@pytest.mark.parametrize("route", ["chat", "models"])
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": CONFIG_KEY},
                                     {"Authorization": f"Basic {CONFIG_KEY}"}],
                         ids=["missing", "wrong", "no-scheme", "basic"])
def test_missing_or_wrong_key_is_401(served, route, headers):
    r = call(served, route, headers)
    assert r.status_code == 401
    err = r.json()["error"]
    assert err["type"] == "authentication_error" and err["code"] == "invalid_api_key"


@pytest.mark.parametrize("key", [CONFIG_KEY, ENV_KEY], ids=["config", "env"])
@pytest.mark.parametrize("route", ["chat", "models"])
def test_configured_keys_work(served, route, key):
    assert call(served, route, {"Authorization": f"Bearer {key}"}).status_code == 200


def test_auth_comes_before_parsing(served):
    r = httpx.post(f"{served.url}/v1/chat/completions", content=b"{not json", timeout=30)
    assert r.status_code == 401


def test_health_and_ready_need_no_key(served):
    assert httpx.get(f"{served.url}/health").json() == {"status": "ok"}
    ready = httpx.get(f"{served.url}/ready").json()
    assert ready["status"] == "ready" and (ready["vision"]["provider"], ready["vision"]["variant"]) == (
        "CPUExecutionProvider", "cpu-fp32")  # on this CPU-only host, after TensorRT and CUDA were passed over
    assert [f.split(" did not load")[0] for f in ready["vision"]["fallbacks"]] == [
        "vision: TensorrtExecutionProvider", "vision: CUDAExecutionProvider"]


def test_openai_client_with_wrong_key_raises_authentication_error(served):
    import openai

    client = openai.OpenAI(base_url=f"{served.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="mmserve-tiny", messages=[{"role": "user", "content": "hi"}])
