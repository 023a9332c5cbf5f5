"""A client for ``--config.mode=serve``: a TRL reward function and an OpenRLHF-style caller.

    from rewardjax.serve.client import RewardClient
    rm = RewardClient(["http://127.0.0.1:8000", "http://127.0.0.1:8001"], token_env="RJ_TOKEN")
    rm(prompts=["Hi"], completions=["Hello!"])           # -> [0.73]
    GRPOTrainer(model=..., reward_funcs=[rm], ...)

Standard library only (no jax, no torch): a trainer process that calls a reward server should not
pay for either. Scoring is idempotent, so every failure that may be transient (no connection, a
timeout, 503 back-pressure, another 5xx) is retried on the next replica, within a bounded number
of attempts and a bounded total time; a 4xx is the caller's mistake and is raised at once with the
server's message.
"""

from __future__ import annotations

import http.client
import itertools
import json
import os
import threading
import time
import urllib.parse
from collections.abc import Sequence
from typing import Any

# Statuses worth another try: back-pressure, a request the server timed out, gateway trouble.
_RETRY_STATUS = {408, 429, 500, 502, 503, 504}
_CONNECTION_ERRORS = (OSError, http.client.HTTPException)  # refused, reset, timeout, bad reply
_PATHS = {"v1": "/v1/rewards", "openrlhf": "/get_reward"}


class RewardClientError(RuntimeError):
    """Base class of the errors this client raises."""


class RewardRequestError(RewardClientError):
    """The server refused the request (4xx): retrying the same request cannot help."""

    def __init__(self, url: str, status: int, message: str):
        super().__init__(f"{url} answered {status}: {message}")
        self.url, self.status, self.message = url, status, message


class RewardServerUnavailable(RewardClientError):
    """Every attempt failed with a transient error, or the total time ran out."""


def _message_of(body: bytes) -> str:
    """The server's ``{"error": ...}`` text, else the start of the body."""
    text = body.decode("utf-8", "replace")
    try:
        doc = json.loads(text)
    except ValueError:
        return text[:500]
    if isinstance(doc, dict) and "error" in doc:
        err = doc["error"]
        return err if isinstance(err, str) else json.dumps(err)
    return text[:500]


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header given as a number (HTTP dates are not used here)."""
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def _text(content: Any) -> str:
    """A message's text: a string, or the text parts of a multimodal content list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    raise TypeError(f"message content must be a string or a list of parts, got {type(content)}")


def _messages(value: Any, role: str) -> list[dict[str, str]]:
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    return [{"role": m["role"], "content": _text(m.get("content", ""))} for m in value]


def to_item(prompt: Any, completion: Any) -> dict[str, Any]:
    """One ``/v1/rewards`` item: strings -> ``{prompt, response}``; conversational input (lists
    of ``{"role", "content"}`` messages, as TRL passes for chat datasets) -> ``{messages}``."""
    if isinstance(prompt, str) and isinstance(completion, str):
        return {"prompt": prompt, "response": completion}
    return {"messages": _messages(prompt, "user") + _messages(completion, "assistant")}


class RewardClient:
    """Calls one or more replicas of a rewardjax reward server.

    As a TRL reward function, ``client(prompts, completions, **kwargs) -> list[float]`` (extra
    keyword arguments TRL passes, such as ``completion_ids`` or ``trainer_state``, are ignored).

    Args:
      urls: base URL(s) of the replicas, a list or one comma-separated string
        (``http://127.0.0.1:8000``; a trailing ``/v1/rewards`` or ``/get_reward`` is dropped).
        Calls start on the replicas in turn; a failing replica hands the call to the next.
      token: bearer token sent as ``Authorization: Bearer <token>``.
      token_env: name of an environment variable holding the token, read at construction.
      timeout: seconds for one attempt (connect + response).
      retries: further attempts after the first, over all replicas together.
      backoff: first wait in seconds once every replica has failed in a round; doubles per round
        (capped by ``max_backoff``); a 503's ``Retry-After`` is honoured when longer.
      total_timeout: seconds for a whole call including waits; default ``timeout * (retries+1)``.
      protocol: ``"v1"`` (``POST /v1/rewards`` with prompt/response or messages items) or
        ``"openrlhf"`` (``POST /get_reward`` with full ``query`` texts and ``prompts``).
      batch_size: items per request; ``None`` sends each call as one request.
      name: the function name TRL logs the rewards under (``rewards/<name>``).
    """

    def __init__(self, urls: str | Sequence[str], *, token: str | None = None,
                 token_env: str | None = None, timeout: float = 60.0, retries: int = 4,
                 backoff: float = 0.5, max_backoff: float = 10.0,
                 total_timeout: float | None = None, protocol: str = "v1",
                 batch_size: int | None = None, name: str = "rewardjax"):
        if isinstance(urls, str):
            urls = [u for u in urls.split(",") if u.strip()]
        if not urls:
            raise ValueError("RewardClient needs at least one server URL")
        self.urls = [self._base(u) for u in urls]
        if protocol not in _PATHS:
            raise ValueError(f"protocol={protocol!r}; choose one of {sorted(_PATHS)}")
        if token is not None and token_env is not None:
            raise ValueError("give token or token_env, not both")
        if token_env is not None:
            token = os.environ.get(token_env)
            if not token:
                raise ValueError(f"token_env={token_env!r} names an unset or empty variable")
        if timeout <= 0 or retries < 0 or backoff < 0:
            raise ValueError("timeout must be > 0, retries and backoff >= 0")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}")
        self.token, self.timeout, self.retries = token, float(timeout), int(retries)
        self.backoff, self.max_backoff = float(backoff), float(max_backoff)
        self.total_timeout = (float(total_timeout) if total_timeout is not None
                              else self.timeout * (self.retries + 1))
        self.protocol, self.batch_size = protocol, batch_size
        self.__name__ = name
        self._next = itertools.count()
        self._lock = threading.Lock()
        self._local = threading.local()  # one keep-alive connection per thread and replica
        # Counters for logging: requests sent, attempts retried, calls moved to another replica.
        self.stats = {"requests": 0, "retries": 0, "failovers": 0, "rejected_503": 0}

    @staticmethod
    def _base(url: str) -> str:
        url = url.strip().rstrip("/")
        for path in _PATHS.values():
            if url.endswith(path):
                url = url[: -len(path)]
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        return url

    # -- TRL / OpenRLHF entry points -------------------------------------------------------------

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any],
                 **kwargs: Any) -> list[float]:
        """One reward per (prompt, completion), in order."""
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        if self.protocol == "openrlhf":
            if not all(isinstance(x, str) for x in [*prompts, *completions]):
                raise ValueError("protocol='openrlhf' sends plain texts; conversational input "
                                 "needs protocol='v1' (the server applies its chat template)")
            return self.get_reward([p + c for p, c in zip(prompts, completions)], list(prompts))
        return [r["reward"] for r in self.score([to_item(p, c)
                                                 for p, c in zip(prompts, completions)])]

    def score(self, items: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """``/v1/rewards``: one result dict per item (``reward`` and, where the model has them,
        ``members``, ``std``, ``objectives`` ...)."""
        out: list[dict[str, Any]] = []
        for chunk in self._chunks(list(items)):
            doc = self.post("/v1/rewards", {"items": chunk})
            results = doc.get("results")
            if not isinstance(results, list) or len(results) != len(chunk):
                raise RewardClientError(f"/v1/rewards answered {len(results or [])} results for "
                                        f"{len(chunk)} items")
            out.extend(results)
        return out

    def get_reward(self, queries: Sequence[str], prompts: Sequence[str] | None = None,
                   labels: Sequence[Any] | None = None) -> list[float]:
        """``/get_reward`` (OpenRLHF's remote RM protocol): ``query`` holds full texts."""
        rewards: list[float] = []
        for lo, chunk in self._spans(len(queries)):
            body: dict[str, Any] = {"query": list(queries[lo:lo + chunk])}
            if prompts is not None:
                body["prompts"] = list(prompts[lo:lo + chunk])
            if labels is not None:
                body["labels"] = list(labels[lo:lo + chunk])
            got = self.post("/get_reward", body).get("rewards")
            if not isinstance(got, list) or len(got) != chunk:
                raise RewardClientError(f"/get_reward answered {len(got or [])} rewards for "
                                        f"{chunk} queries")
            rewards.extend(float(r) for r in got)
        return rewards

    def _spans(self, n: int):
        size = self.batch_size or max(n, 1)
        return [(lo, min(size, n - lo)) for lo in range(0, n, size)]

    def _chunks(self, items: list):
        return [items[lo:lo + size] for lo, size in self._spans(len(items))]

    # -- transport ---------------------------------------------------------------------------------

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POSTs ``body`` as JSON, retrying transient failures over the replicas in turn."""
        data = json.dumps(body).encode()
        start = time.monotonic()
        deadline = start + self.total_timeout
        with self._lock:
            first = next(self._next) % len(self.urls)
        errors: list[str] = []
        wait_floor = 0.0  # the longest Retry-After seen in the current round
        for attempt in range(self.retries + 1):
            url = self.urls[(first + attempt) % len(self.urls)]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if attempt:
                self._count("retries")
                if len(self.urls) > 1:
                    self._count("failovers")
            self._count("requests")
            try:
                status, headers, payload = self._send(url, path, data,
                                                      min(self.timeout, remaining))
            except _CONNECTION_ERRORS as e:
                errors.append(f"{url}: {type(e).__name__}: {e}")
            else:
                if status == 200:
                    try:
                        return json.loads(payload)
                    except ValueError as e:
                        raise RewardClientError(f"{url}{path} answered 200 with invalid JSON: "
                                                f"{payload[:200]!r}") from e
                message = _message_of(payload)
                if status not in _RETRY_STATUS:
                    raise RewardRequestError(url + path, status, message)
                if status == 503:
                    self._count("rejected_503")
                errors.append(f"{url}: {status} {message}")
                wait_floor = max(wait_floor, _retry_after(headers.get("Retry-After")) or 0.0)
            if attempt == self.retries:
                break
            # Move on to the next replica at once; wait only once a whole round has failed.
            if (attempt + 1) % len(self.urls) == 0:
                round_ = (attempt + 1) // len(self.urls) - 1
                wait = max(wait_floor, min(self.backoff * 2 ** round_, self.max_backoff))
                wait_floor = 0.0
                if time.monotonic() + wait >= deadline:
                    errors.append(f"next wait of {wait:.2f}s would pass the total timeout")
                    break
                time.sleep(wait)
        raise RewardServerUnavailable(
            f"no reward server answered {path} after {len(errors)} attempt(s) in "
            f"{time.monotonic() - start:.1f}s (total_timeout {self.total_timeout:g}s): "
            + "; ".join(errors[-6:]))

    def _count(self, key: str):
        with self._lock:
            self.stats[key] += 1

    def _send(self, url: str, path: str, data: bytes, timeout: float):
        """One HTTP exchange on this thread's connection to ``url`` -> (status, headers, body).

        A kept-alive connection the server has since closed fails before any reply; that one case
        is retried once on a fresh connection without counting as an attempt."""
        conns = self._local.__dict__.setdefault("conns", {})
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        base = urllib.parse.urlsplit(url)
        for fresh in (url not in conns, True):
            conn = conns.pop(url, None)
            if conn is None:
                cls = (http.client.HTTPSConnection if base.scheme == "https"
                       else http.client.HTTPConnection)
                conn = cls(base.hostname, base.port, timeout=timeout)
            else:
                conn.timeout = timeout
                if conn.sock is not None:
                    conn.sock.settimeout(timeout)
            try:
                conn.request("POST", base.path + path, body=data, headers=headers)
                resp = conn.getresponse()
                payload = resp.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                conn.close()
                if fresh:
                    raise
                continue
            except (OSError, http.client.HTTPException):  # timeouts are OSErrors too
                conn.close()
                raise
            if resp.will_close:
                conn.close()
            else:
                conns[url] = conn
            return resp.status, resp.headers, payload
        raise AssertionError("unreachable")

    def close(self):
        """Closes this thread's kept-alive connections (others close when their thread ends)."""
        for conn in self._local.__dict__.pop("conns", {}).values():
            conn.close()

    # Picklable (TRL may pickle reward functions): connections and locks are per process.
    def __getstate__(self):
        state = dict(self.__dict__)
        for key in ("_lock", "_local", "_next"):
            state.pop(key)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._next = itertools.count()
        self._lock = threading.Lock()
        self._local = threading.local()

    def __repr__(self):
        return (f"RewardClient({self.urls!r}, protocol={self.protocol!r}, "
                f"retries={self.retries}, timeout={self.timeout:g})")
