"""A small HTTP client for a running ``rayft serve`` (what ``rayft query`` and tests use)."""

from __future__ import annotations

import time
from typing import Any

from urllib.parse import quote

import requests

from rayft.errors import RayftError
from rayft.serve.defaults import CHAT_MAX_TOKENS, COMPLETION_MAX_TOKENS, EVAL_CONCURRENCY, URL


class ServeClientError(RayftError):
    """A request the server refused or could not answer (``status`` is None when it was unreachable)."""

    def __init__(self, status: int | None, message: str, type: str | None = None, code: str | None = None):
        self.status, self.message, self.type, self.code = status, message, type, code
        super().__init__(f"HTTP {status}: {message}" if status else message)


class Client:
    """Calls the rayft HTTP API; every method returns the decoded JSON response.

    Args:
        base_url: where the server answers (default: a server started with the defaults on this machine).
        timeout: seconds to wait for each response.
    """

    def __init__(self, base_url: str = URL, timeout: float = 30.0,
                 admin_token: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.admin_token = admin_token
        self._session = requests.Session()
        # one pooled connection per concurrent caller (rayft eval sends EVAL_CONCURRENCY requests at once)
        adapter = requests.adapters.HTTPAdapter(pool_maxsize=max(EVAL_CONCURRENCY, 10))
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)

    def health(self) -> dict[str, Any]:
        """``{"status": "ok"}`` when the server is up."""
        return self._request("GET", "/healthz")

    def models(self) -> list[dict[str, Any]]:
        """The served models (OpenAI model objects with rayft's ``task``, ``kind``, ``base_model``, ``metrics``)."""
        return self._request("GET", "/v1/models")["data"]

    def classify(self, model: str, inputs: list[str]) -> dict[str, Any]:
        """``{"model", "object": "classification", "data": [{"index", "label", "probabilities"}, ...]}``."""
        return self._request("POST", "/v1/classify", {"model": model, "inputs": list(inputs)})

    def complete(self, model: str, prompt: str | list[str], max_tokens: int = COMPLETION_MAX_TOKENS,
                 temperature: float = 0.0,
                 **extra: Any) -> dict[str, Any]:
        """An OpenAI ``text_completion``; the text is ``response["choices"][0]["text"]``."""
        body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": temperature, **extra}
        return self._request("POST", "/v1/completions", body)

    def chat(self, model: str, messages: list[dict[str, str]], max_tokens: int = CHAT_MAX_TOKENS,
             temperature: float = 0.0,
             **extra: Any) -> dict[str, Any]:
        """An OpenAI ``chat.completion``; the reply is ``response["choices"][0]["message"]["content"]``."""
        body = {"model": model, "messages": list(messages), "max_tokens": max_tokens, "temperature": temperature,
                **extra}
        return self._request("POST", "/v1/chat/completions", body)

    # ---------------------------------------------------------------- admin routes (need ``admin_token``)

    def register(self, model: str, warm: bool = False) -> dict[str, Any]:
        """Serve a stored result (again); ``warm`` loads it on a replica now."""
        return self._request("POST", "/admin/adapters", {"model": model, "warm": warm}, admin=True)

    def unregister(self, model: str) -> dict[str, Any]:
        """Stop serving a stored result (its folder stays in the store)."""
        return self._request("DELETE", f"/admin/adapters/{quote(model, safe='')}", admin=True)

    def set_alias(self, alias: str, model: str) -> dict[str, Any]:
        """Point ``alias`` at ``model``; ``{"alias", "model", "previous", "updated"}``."""
        return self._request("PUT", f"/admin/aliases/{quote(alias, safe='')}", {"model": model}, admin=True)

    def aliases(self) -> dict[str, str]:
        """Every alias and its target."""
        return {a["alias"]: a["model"] for a in self._request("GET", "/admin/aliases", admin=True)["data"]}

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None, admin: bool = False) -> Any:
        """Send one request.

        Raises:
            ServeClientError: for an error response or an unreachable server.
        """
        url = self.base_url + path
        headers = {"Authorization": f"Bearer {self.admin_token}"} if admin and self.admin_token else None
        for attempt in range(BUSY_RETRIES + 1):
            try:
                resp = self._session.request(method, url, json=body, timeout=self.timeout, headers=headers)
            except requests.RequestException as exc:
                raise ServeClientError(None, f"cannot reach {url}: {type(exc).__name__}") from None
            if resp.status_code != 429 or attempt == BUSY_RETRIES:
                break
            time.sleep(_retry_after(resp))  # the server is at capacity: wait as it asks, then try again
        try:
            data = resp.json()
        except ValueError:
            data = None
        if resp.status_code >= 400:
            err = data.get("error") if isinstance(data, dict) and isinstance(data.get("error"), dict) else {}
            message = err.get("message") or (resp.text[:300] if resp.text else resp.reason)
            raise ServeClientError(resp.status_code, message, err.get("type"), err.get("code"))
        if data is None:
            raise ServeClientError(resp.status_code, f"{url} answered with a body that is not JSON")
        return data


BUSY_RETRIES = 5  # times a request refused with 429 (server at capacity) is sent again


def _retry_after(resp: requests.Response) -> float:
    """Seconds a 429 asks to wait (``Retry-After``), between 0.1 and 30."""
    try:
        return min(max(float(resp.headers.get("Retry-After", 1)), 0.1), 30.0)
    except ValueError:
        return 1.0
