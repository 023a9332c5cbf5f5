"""A judge behind an OpenAI-compatible ``/v1/chat/completions`` endpoint (stdlib HTTP only).

Works with any server speaking the chat-completions protocol (OpenAI, vLLM, llama.cpp server,
TGI, Ollama ...). Configuration comes from arguments or the environment:

* ``REWARDJAX_JUDGE_URL``: the endpoint or its base, e.g. ``http://127.0.0.1:8000/v1``;
  ``/chat/completions`` (after ``/v1``) is appended unless the URL already ends with it;
* ``REWARDJAX_JUDGE_MODEL``: the ``model`` field of the request;
* ``REWARDJAX_JUDGE_KEY``: optional bearer token (local servers usually need none); surrounding
  whitespace is stripped, a control or non-latin-1 character inside is refused;
* ``REWARDJAX_JUDGE_TIMEOUT``: optional per-request timeout in seconds.

The key is held in a :class:`Secret` whose ``repr``/``str`` are ``***``, is only ever written
into the ``Authorization`` header, and is scrubbed from every log line and exception message
(a misbehaving server can echo request headers back in an error body or even its HTTP reason
phrase); quoted server text is scrubbed *before* it is cut short, so no key straddles the cut.
Redirects to another origin (scheme, host or port) are refused with :class:`JudgeError`
instead of followed: urllib would carry the ``Authorization`` header to the new host.

Requests are retried with exponential backoff on 408 / 429 / 5xx answers, timeouts and
connection failures (``Retry-After`` is honoured, capped); other 4xx answers fail at once with
:class:`~rewardjax.judge.base.JudgeError`, as does a 200 whose body is not a chat completion.
A well-formed completion whose text is not exactly a verdict (see
:func:`~rewardjax.judge.base.parse_verdict`) is an *invalid answer*: ``compare`` returns None and
:func:`~rewardjax.judge.base.label_pairs` counts the pair in ``dropped_invalid``.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from rewardjax.judge.base import JudgeError, judge_messages, parse_verdict

log = logging.getLogger(__name__)

ENV_URL, ENV_KEY, ENV_MODEL, ENV_TIMEOUT = (
    "REWARDJAX_JUDGE_URL", "REWARDJAX_JUDGE_KEY", "REWARDJAX_JUDGE_MODEL",
    "REWARDJAX_JUDGE_TIMEOUT")
RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_PATH = "/chat/completions"
_QUOTE = 300  # characters of server text quoted in errors and logs
_READ = 64 * 1024  # bytes of an error body read: more than _QUOTE plus any key, bounded
_MIN_KEY_PREFIX = 4  # a shorter tail left at a cut is too common to be evidence of the key


def _origin(url: str) -> tuple[str, str | None, int | None]:
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:  # a malformed port: an origin of its own
        port = -1
    return scheme, parts.hostname, port or {"http": 80, "https": 443}.get(scheme)


class CrossOriginRedirect(Exception):
    """Raised by :class:`_SameOriginRedirects`; the judge turns it into a scrubbed JudgeError."""

    def __init__(self, code: int, target: str):
        super().__init__(code, target)
        self.code, self.target = code, target


class _SameOriginRedirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects within the origin only.

    urllib copies every request header, ``Authorization`` included, onto the redirected
    request whatever its host, so a redirect to another origin would hand the key to it.
    """

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if _origin(newurl) != _origin(req.full_url):
            fp.close()  # the default path reads and closes it after building the new request
            raise CrossOriginRedirect(code, newurl)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_SameOriginRedirects)


class Secret:
    """A string that never shows itself: ``repr``, ``str`` and formatting give ``***``."""

    __slots__ = ("_value",)

    def __init__(self, value: str | None):
        self._value = value or None

    def reveal(self) -> str | None:
        return self._value

    def __bool__(self) -> bool:
        return self._value is not None

    def __repr__(self) -> str:
        return "***" if self._value else "None"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __reduce__(self):  # no pickling into logs, caches or subprocess arguments
        raise TypeError("Secret cannot be pickled")


def endpoint(url: str) -> str:
    """Normalises a base URL to the chat-completions endpoint (see the module docstring)."""
    url = url.strip().rstrip("/")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"judge URL must be http(s)://host[:port][/path], got {url!r}")
    if url.endswith(_PATH):
        return url
    return url + (_PATH if parts.path.endswith("/v1") else "/v1" + _PATH)


class HTTPJudge:
    """Asks a chat model behind an OpenAI-compatible endpoint which response is better.

    Args:
      url: endpoint or base URL; default ``$REWARDJAX_JUDGE_URL``.
      model: model name sent in the request; default ``$REWARDJAX_JUDGE_MODEL`` (may be empty
        for single-model servers).
      key: bearer token; default ``$REWARDJAX_JUDGE_KEY``; None/empty sends no header.
      timeout: seconds per request attempt; default ``$REWARDJAX_JUDGE_TIMEOUT`` or 60.
      retries: extra attempts after a retryable failure.
      backoff: first retry delay in seconds, doubled each retry, capped at ``max_backoff``.
      max_backoff: cap on one delay, also applied to ``Retry-After``.
      temperature, max_tokens: generation settings (the answer is one letter).
      descriptions: capability name -> description for the question (see ``judge_messages``).
      extra_body: more request fields (e.g. ``{"seed": 0}``); cannot override ``messages``.
      sleep: the sleeping function (tests pass a recorder).
      env: where defaults are read from (``os.environ``).
    """

    def __init__(self, url: str | None = None, model: str | None = None, key: str | None = None,
                 *, timeout: float | None = None, retries: int = 3, backoff: float = 1.0,
                 max_backoff: float = 30.0, temperature: float = 0.0, max_tokens: int = 4,
                 descriptions: Mapping[str, str] | None = None,
                 extra_body: Mapping[str, Any] | None = None,
                 sleep: Callable[[float], None] = time.sleep,
                 env: Mapping[str, str] | None = None):
        env = os.environ if env is None else env
        url = url or env.get(ENV_URL)
        if not url:
            raise ValueError(f"no judge URL: pass url= or set {ENV_URL} "
                             f"(e.g. http://127.0.0.1:8000/v1)")
        self.url = endpoint(url)
        self.model = model if model is not None else env.get(ENV_MODEL, "")
        self._key = Secret(_check_key(key if key is not None else env.get(ENV_KEY)))
        if timeout is None:
            timeout = float(env.get(ENV_TIMEOUT) or 60.0)
        if timeout <= 0 or retries < 0:
            raise ValueError(f"need timeout > 0 and retries >= 0, got {timeout}, {retries}")
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.temperature = float(temperature)
        self.max_tokens = int(max_tokens)
        self.descriptions = dict(descriptions or {})
        self.extra_body = dict(extra_body or {})
        self._sleep = sleep

    def __repr__(self) -> str:
        key = "***" if self._key else "None"
        return (f"HTTPJudge(url={self.url!r}, model={self.model!r}, key={key}, "
                f"timeout={self.timeout}, retries={self.retries})")

    # -- the judge interface --------------------------------------------------------------
    def compare(self, prompt: Sequence[dict[str, str]], a: str, b: str,
                capability: str) -> str | None:
        """``"A"``, ``"B"``, ``"tie"``, or None for an answer that is not exactly one of them.

        Raises:
          JudgeError: the server could not be reached or answered with an error after retries.
        """
        messages = judge_messages(prompt, a, b, capability, self.descriptions)
        text = self.complete(messages)
        verdict = parse_verdict(text)
        if verdict is None:
            log.debug("invalid judge answer for %s: %r", capability, self._clip(str(text), 200))
        return verdict

    def complete(self, messages: list[dict[str, str]]) -> str | None:
        """The first choice's message content for ``messages`` (None when the server sent none)."""
        body = {**self.extra_body, "model": self.model, "messages": messages,
                "temperature": self.temperature, "max_tokens": self.max_tokens}
        reply = self._post(json.dumps(body).encode("utf-8"))
        try:
            content = reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise JudgeError(self._scrub(
                f"{self.url}: not a chat completion (no choices[0].message.content): "
                f"{self._clip(json.dumps(reply))}")) from None
        return content if isinstance(content, str) else None

    # -- transport ------------------------------------------------------------------------
    def _scrub(self, text: str) -> str:
        key = self._key.reveal()
        return text.replace(key, "***") if key else text

    def _clip(self, text: str, limit: int = _QUOTE) -> str:
        """Server text for a message: scrubbed, *then* cut to ``limit`` characters.

        Cutting first could split the key so that no whole copy is left to scrub. A cut (here
        or at the read limit) can still end inside a copy; a tail that is a prefix of the key,
        ``_MIN_KEY_PREFIX`` characters or longer, is masked as well.
        """
        text = self._scrub(text)[:limit]
        key = self._key.reveal()
        if key:
            for n in range(min(len(key) - 1, len(text)), _MIN_KEY_PREFIX - 1, -1):
                if text.endswith(key[:n]):
                    return text[:-n] + "***"
        return text

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json",
                   "User-Agent": "rewardjax-judge"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key.reveal()}"
        return headers

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        delay = self.backoff * (2.0 ** attempt)
        if retry_after:
            try:
                delay = float(retry_after)  # the HTTP-date form is rare for APIs: ignored
            except ValueError:
                pass
        return max(0.0, min(delay, self.max_backoff))

    def _post(self, data: bytes) -> dict:
        """POSTs ``data`` with retries; returns the decoded JSON reply."""
        attempts = self.retries + 1
        for attempt in range(attempts):
            retry_after = None
            request = urllib.request.Request(self.url, data=data, headers=self._headers(),
                                             method="POST")
            # Every message below is scrubbed where it is raised or logged: the reason phrase,
            # the body, redirect targets and exception texts all come from the server.
            try:
                with _OPENER.open(request, timeout=self.timeout) as response:
                    raw = response.read()
                try:
                    return json.loads(raw)
                except ValueError:
                    text = self._clip(raw.decode("utf-8", "replace"))
                    raise JudgeError(self._scrub(
                        f"{self.url}: reply is not JSON: {text!r}")) from None
            except CrossOriginRedirect as e:
                raise JudgeError(self._scrub(
                    f"{self.url}: the server redirected (HTTP {e.code}) to another origin, "
                    f"{self._clip(e.target)}; refusing to follow it, which would send the API "
                    "key there. Point the judge URL at the final endpoint if it is trusted."
                )) from None
            except urllib.error.HTTPError as e:
                reason = (f"HTTP {e.code} {self._clip(str(e.reason), 100)}: "
                          f"{self._clip(_read_detail(e))}")
                if e.code not in RETRY_STATUS:
                    raise JudgeError(self._scrub(f"{self.url}: {reason}")) from None
                retry_after = e.headers.get("Retry-After") if e.headers else None
            except TimeoutError:
                reason = f"timed out after {self.timeout:g} s"
            except urllib.error.URLError as e:
                if isinstance(e.reason, TimeoutError):
                    reason = f"timed out after {self.timeout:g} s"
                else:
                    reason = f"connection failed: {self._scrub(str(e.reason))}"
            except (ConnectionError, http.client.HTTPException) as e:
                reason = f"connection failed: {self._scrub(type(e).__name__ + ' ' + str(e))}"
            except ValueError as e:  # UnicodeEncodeError too: http.client refusing a header
                # Its text quotes the header (the key in repr form, which scrubbing may miss).
                raise JudgeError(self._scrub(
                    f"{self.url}: http.client refused the request ({type(e).__name__}): a "
                    "header value it cannot send (a control or non-latin-1 character in the "
                    f"key from key= or ${ENV_KEY}?)")) from None
            if attempt + 1 == attempts:
                raise JudgeError(self._scrub(f"{self.url}: request failed after {attempts} "
                                             f"attempt(s); last error: {reason}"))
            delay = self._delay(attempt, retry_after)
            log.warning("judge request to %s: %s; retry %d/%d in %.1f s", self._scrub(self.url),
                        self._scrub(reason), attempt + 1, self.retries, delay)
            self._sleep(delay)
        raise AssertionError("unreachable")


def _check_key(key: str | None) -> str | None:
    """``key`` without surrounding whitespace; a JudgeError (never quoting it) when unsendable.

    A key read from a file or ``$(...)`` often ends with a newline, which http.client refuses
    with an error quoting the whole ``Authorization`` header, key included.
    """
    if key is None:
        return None
    key = key.strip()
    for i, ch in enumerate(key):
        if ord(ch) < 0x20 or ord(ch) == 0x7F:
            problem = f"a control character (U+{ord(ch):04X})"
        elif ord(ch) > 0xFF:
            problem = "a character outside latin-1, which an HTTP header cannot carry"
        else:
            continue
        raise JudgeError(f"judge API key (key= or ${ENV_KEY}) holds {problem} at position {i} "
                         f"of {len(key)}; set the key itself, without line breaks or other "
                         "text")
    return key


def _read_detail(error: urllib.error.HTTPError, limit: int = _READ) -> str:
    """The start of an error body (unscrubbed: callers pass it through ``HTTPJudge._clip``)."""
    try:
        return error.read(limit).decode("utf-8", "replace").strip()
    except Exception:  # the body is only for the message; never mask the HTTP error itself
        return ""
