"""HTTP for fetchers: one session per source, timeouts, retries, rate limits,
resumable downloads and an on-disk cache that never holds a secret.

Every fetcher talks to its source through one :class:`HttpClient`:

* **base URL** — the real API origin, or ``$IMAGEEXTRACT_<SOURCE>_URL``
  (scheme, host and port only; the paths stay those of the real API), see
  :func:`base_url`.  A client refuses URLs outside its own origins, and does
  not follow redirects elsewhere, so a key is never sent to another host.
* **retries** — connection errors, time-outs and HTTP 500/502/503/504/429 are
  retried with exponential back-off (with jitter); ``Retry-After`` (seconds or
  an HTTP date) is honoured on 429 and 503, up to ``max_wait_s``.
* **truncated downloads** — a body shorter than its ``Content-Length`` is
  resumed with a ``Range`` request (or fetched again when the server ignores
  ranges) and the final length is verified.
* **rate limit** — at most ``rate_per_s`` requests per second per source (one
  limiter shared by every client of a source).  Servers that publish their
  limits in headers are followed: Crossref's ``X-Rate-Limit-Limit`` /
  ``X-Rate-Limit-Interval`` and Elsevier's ``X-RateLimit-Remaining`` /
  ``X-RateLimit-Reset`` quota.
* **cache** — successful GET responses are stored under ``cache_dir`` keyed
  by the URL *without* its secret parameters; a re-run reads them from disk.
* **secrets** — key values given as ``secrets`` are removed from cache keys,
  replaced by ``***`` in logs and error messages, and scrubbed from response
  bodies (some APIs echo the key back) before anything is cached or parsed.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import logging
import os
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from ..errors import FetchError

logger = logging.getLogger(__name__)

__all__ = [
    "HttpClient", "HTTPStatusError", "RateLimiter", "Response", "base_url", "origin_of",
    "rebase_url", "redact",
]

USER_AGENT = "imageextract/{version} (+literature mining of electron micrographs)"
RETRY_STATUS = {429, 500, 502, 503, 504}
#: Largest body accepted (guards memory against a runaway download).
MAX_BODY_BYTES = 512 * 1024 * 1024
REDACTED = "***"

# Every secret any client was given: the urllib3 log filter scrubs them too.
_ALL_SECRETS: set[str] = set()
_LIMITERS: dict[str, "RateLimiter"] = {}
_LIMITERS_LOCK = threading.Lock()


class HTTPStatusError(FetchError):
    """The server answered with an HTTP error status (after any retries).

    Attributes
    ----------
    status : int
        The HTTP status code (0 when no answer came back at all).
    """

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


# --------------------------------------------------------------------------- #
# URLs and secrets
# --------------------------------------------------------------------------- #
def origin_of(url: str) -> str:
    """``scheme://host[:port]`` of ``url`` (lower-case scheme and host).

    >>> origin_of("HTTPS://API.Example.org:8443/a/b?c=d")
    'https://api.example.org:8443'
    """
    parts = urlsplit(url)
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}"


def base_url(source: str, default: str) -> str:
    """Origin of ``source``: ``$IMAGEEXTRACT_<SOURCE>_URL`` when set, else ``default``.

    The variable replaces scheme, host and port only; the API paths stay
    those of the real service, so it must not carry a path, query or
    credentials.

    >>> base_url("nosuchsource", "https://api.example.org")
    'https://api.example.org'
    """
    var = f"IMAGEEXTRACT_{source.upper()}_URL"
    value = os.environ.get(var, "").strip()
    if not value:
        return origin_of(default)
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FetchError(f"${var}={value!r} is not an http(s) URL such as http://127.0.0.1:8123")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise FetchError(
            f"${var}={value!r} may only set scheme, host and port (e.g. http://127.0.0.1:8123); "
            "the API paths are those of the real service")
    if parts.username or parts.password:
        raise FetchError(f"${var} must not carry credentials; keys come from their own variables")
    return origin_of(value)


def rebase_url(url: str, new_origin: str) -> str:
    """Replace scheme, host and port of ``url`` by ``new_origin``.

    >>> rebase_url("https://api.example.org/content/x?a=1", "http://127.0.0.1:8123")
    'http://127.0.0.1:8123/content/x?a=1'
    """
    parts = urlsplit(url)
    new = urlsplit(new_origin)
    return urlunsplit((new.scheme, new.netloc, parts.path, parts.query, parts.fragment))


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every secret (and its URL-quoted form) replaced by ``***``.

    >>> redact("GET /x?api_key=abc123&q=1", ["abc123"])
    'GET /x?api_key=***&q=1'
    """
    for s in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(s, REDACTED)
        q = quote(s, safe="")
        if q != s:
            text = text.replace(q, REDACTED)
    return text


def _scrub_bytes(data: bytes, secrets: Iterable[str]) -> bytes:
    for s in sorted({s for s in secrets if s}, key=len, reverse=True):
        for form in {s, quote(s, safe="")}:
            b = form.encode("utf-8")
            if b in data:
                data = data.replace(b, REDACTED.encode())
    return data


class _RedactFilter(logging.Filter):
    """Scrubs known secrets from records of third-party loggers (urllib3 logs
    request lines, query strings included, at DEBUG)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _ALL_SECRETS:
            try:
                msg = record.getMessage()
            except Exception:  # pragma: no cover - malformed record
                return True
            clean = redact(msg, _ALL_SECRETS)
            if clean != msg:
                record.msg, record.args = clean, None
        return True


_FILTER = _RedactFilter()
for _name in ("urllib3.connectionpool", "urllib3.util.retry", "requests"):
    logging.getLogger(_name).addFilter(_FILTER)


# --------------------------------------------------------------------------- #
# Rate limiting
# --------------------------------------------------------------------------- #
class RateLimiter:
    """At most ``rate_per_s`` calls per second; thread-safe.

    :meth:`pause_until` blocks every caller until a time (a quota reset or a
    ``Retry-After``); :meth:`set_rate` lowers the rate to what a server
    announces.
    """

    def __init__(self, rate_per_s: float | None, *, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate_per_s = rate_per_s
        self._next = 0.0
        self._lock = threading.Lock()
        self._sleep = sleep
        self._clock = clock

    def set_rate(self, rate_per_s: float) -> None:
        if rate_per_s > 0 and (self.rate_per_s is None or rate_per_s < self.rate_per_s):
            logger.debug("rate limit lowered to %.2f requests/s", rate_per_s)
            self.rate_per_s = rate_per_s

    def pause_until(self, t_monotonic: float) -> None:
        with self._lock:
            self._next = max(self._next, t_monotonic)

    def wait(self) -> float:
        """Block until the next request may go; return the seconds waited."""
        with self._lock:
            now = self._clock()
            start = max(now, self._next)
            interval = 1.0 / self.rate_per_s if self.rate_per_s else 0.0
            self._next = start + interval
        delay = start - now
        if delay > 0:
            self._sleep(delay)
        return max(delay, 0.0)


def _limiter(source: str, rate_per_s: float | None, sleep: Callable[[float], None]) -> RateLimiter:
    with _LIMITERS_LOCK:
        lim = _LIMITERS.get(source)
        if lim is None or lim._sleep is not sleep:
            lim = _LIMITERS[source] = RateLimiter(rate_per_s, sleep=sleep)
        elif rate_per_s and (lim.rate_per_s is None or rate_per_s < lim.rate_per_s):
            lim.rate_per_s = rate_per_s
        return lim


def _parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date).

    >>> _parse_retry_after("3")
    3.0
    >>> _parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412478.0)
    2.0
    """
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        dt = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if dt is None:
        return None
    return max(0.0, dt.timestamp() - (time.time() if now is None else now))


# --------------------------------------------------------------------------- #
# Responses and the cache
# --------------------------------------------------------------------------- #
@dataclass
class Response:
    """A complete (verified) response body."""

    status: int
    url: str  #: the URL with secrets redacted
    content: bytes = field(repr=False)
    headers: dict[str, str] = field(default_factory=dict)
    from_cache: bool = False

    def header(self, name: str, default: str | None = None) -> str | None:
        low = name.lower()
        for k, v in self.headers.items():
            if k.lower() == low:
                return v
        return default

    @property
    def content_type(self) -> str:
        return (self.header("Content-Type") or "").split(";")[0].strip().lower()

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        try:
            return json.loads(self.content)
        except ValueError as err:
            raise FetchError(f"{self.url}: expected JSON, got {self.content_type or 'unknown type'} "
                             f"({err})") from err


_KEEP_HEADERS = ("content-type", "etag", "last-modified", "content-length", "x-cache-status")


class _Cache:
    """Response bodies on disk: ``<dir>/<source>/<k[:2]>/<k>.body`` + ``.json``."""

    def __init__(self, root: Path, source: str) -> None:
        self.dir = Path(root) / source

    def _paths(self, key: str) -> tuple[Path, Path]:
        d = self.dir / key[:2]
        return d / f"{key}.body", d / f"{key}.json"

    def get(self, key: str) -> Response | None:
        body, meta = self._paths(key)
        try:
            info = json.loads(meta.read_text("utf-8"))
            data = body.read_bytes()
        except (OSError, ValueError):
            return None
        if len(data) != info.get("length", -1):
            logger.debug("cache entry %s is damaged; ignoring it", key)
            return None
        return Response(status=info["status"], url=info["url"], content=data,
                        headers=info.get("headers", {}), from_cache=True)

    def put(self, key: str, resp: Response) -> None:
        body, meta = self._paths(key)
        try:
            body.parent.mkdir(parents=True, exist_ok=True)
            tmp = body.with_suffix(".tmp")
            tmp.write_bytes(resp.content)
            tmp.replace(body)
            headers = {k: v for k, v in resp.headers.items() if k.lower() in _KEEP_HEADERS}
            tmp = meta.with_suffix(".jtmp")
            tmp.write_text(json.dumps({"status": resp.status, "url": resp.url, "headers": headers,
                                       "length": len(resp.content), "stored_at": time.time()}),
                           "utf-8")
            tmp.replace(meta)
        except OSError as err:  # a full disk must not fail the fetch
            logger.warning("could not write the HTTP cache in %s: %s", self.dir, err)


# --------------------------------------------------------------------------- #
# The client
# --------------------------------------------------------------------------- #
class HttpClient:
    """One source's HTTP session.

    Parameters
    ----------
    source : str
        Source name (``"elsevier"``); names the cache folder and the limiter.
    origins : str or sequence of str
        Origins this client may talk to; the first is the API base URL that
        relative paths are joined to.
    headers : mapping, optional
        Headers sent with every request (e.g. ``X-ELS-APIKey``).
    secrets : iterable of str
        Values that must never be logged, cached or returned (API keys,
        tokens, e-mail addresses).
    timeout : float or (connect, read)
        Seconds; each request and each read of a streamed body.
    max_retries : int
        Retries after the first attempt, for retryable failures.
    backoff_s : float
        First back-off; doubles on each retry (with ±25 % jitter).
    max_wait_s : float
        Longest ``Retry-After``/quota wait honoured; a longer one raises.
    rate_per_s : float, optional
        Requests per second (per source, shared by all its clients).
    cache_dir : path-like, optional
        On-disk response cache (None: no cache).
    auth_hint : str
        Appended to 401/403 errors (e.g. "set ELSEVIER_API_KEY").
    sleep : callable
        ``time.sleep`` (tests pass a recorder).
    """

    def __init__(
        self,
        source: str,
        origins: str | Iterable[str],
        *,
        headers: Mapping[str, str] | None = None,
        secrets: Iterable[str] = (),
        timeout: float | tuple[float, float] = (10.0, 60.0),
        max_retries: int = 4,
        backoff_s: float = 0.5,
        max_wait_s: float = 120.0,
        rate_per_s: float | None = None,
        cache_dir: str | Path | None = None,
        auth_hint: str = "",
        sleep: Callable[[float], None] = time.sleep,
        session: Any = None,
    ) -> None:
        import requests

        from .. import __version__

        self.source = source
        self.origins = [origin_of(o) for o in ([origins] if isinstance(origins, str) else origins)]
        if not self.origins:
            raise ValueError("HttpClient needs at least one origin")
        self.base = self.origins[0]
        self.secrets = {s for s in secrets if s}
        _ALL_SECRETS.update(self.secrets)
        self.timeout = timeout
        self.max_retries = int(max_retries)
        self.backoff_s = float(backoff_s)
        self.max_wait_s = float(max_wait_s)
        self.auth_hint = auth_hint
        self._sleep = sleep
        self.limiter = _limiter(source, rate_per_s, sleep)
        self.cache = _Cache(Path(cache_dir), source) if cache_dir else None
        self.session = session or requests.Session()
        self.session.headers["User-Agent"] = USER_AGENT.format(version=__version__)
        self.session.headers.update(dict(headers or {}))
        self.n_requests = 0  #: requests sent over the network (cache hits excluded)

    # -- helpers -------------------------------------------------------------
    def close(self) -> None:
        self.session.close()

    def redact(self, text: str) -> str:
        return redact(text, self.secrets)

    def url_for(self, path_or_url: str) -> str:
        """Absolute URL of an API path, or ``path_or_url`` itself after
        checking it is on one of this client's origins."""
        if path_or_url.startswith("/"):
            return self.base + path_or_url
        if origin_of(path_or_url) not in self.origins:
            raise FetchError(
                f"{self.source}: refusing to fetch {self.redact(path_or_url)!r}: this source talks "
                f"only to {', '.join(self.origins)}")
        return path_or_url

    def _full_url(self, url: str, params: Mapping[str, Any] | None) -> str:
        if not params:
            return url
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        query += [(k, str(v)) for k, v in params.items() if v is not None]
        return urlunsplit(parts._replace(query=urlencode(query)))

    def _cache_key(self, method: str, url: str, headers: Mapping[str, str]) -> str:
        parts = urlsplit(url)
        query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
                 if v not in self.secrets]
        clean = urlunsplit(parts._replace(query=urlencode(sorted(query))))
        accept = headers.get("Accept") or self.session.headers.get("Accept") or ""
        blob = json.dumps([method, clean, accept])
        if any(s in blob for s in self.secrets):  # a key inside a path: hash it away
            blob = self.redact(blob)
        return hashlib.sha256(blob.encode()).hexdigest()

    def _backoff(self, attempt: int) -> float:
        return self.backoff_s * (2 ** attempt) * random.uniform(0.75, 1.25)

    def _note_rate_headers(self, headers: Mapping[str, str]) -> None:
        h = {k.lower(): v for k, v in headers.items()}
        # Crossref: X-Rate-Limit-Limit: 50, X-Rate-Limit-Interval: 1s
        lim, interval = h.get("x-rate-limit-limit"), h.get("x-rate-limit-interval")
        if lim and interval:
            try:
                n = float(lim)
                secs = float(interval.rstrip("s")) if interval.endswith("s") else float(interval)
                if n > 0 and secs > 0:
                    self.limiter.set_rate(n / secs)
            except ValueError:
                pass
        # Elsevier: X-RateLimit-Remaining: 0, X-RateLimit-Reset: <epoch seconds>
        remaining, reset = h.get("x-ratelimit-remaining"), h.get("x-ratelimit-reset")
        if remaining is not None and reset:
            try:
                if int(float(remaining)) <= 0:
                    wait = float(reset) - time.time()
                    if wait > self.max_wait_s:
                        raise HTTPStatusError(
                            f"{self.source}: API quota exhausted until "
                            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(float(reset)))}; "
                            "re-run later (finished items are kept)", 429)
                    if wait > 0:
                        logger.info("%s: quota exhausted; waiting %.0f s for it to reset",
                                    self.source, wait)
                        self.limiter.pause_until(time.monotonic() + wait)
            except ValueError:
                pass

    # -- requests ------------------------------------------------------------
    def get(self, path_or_url: str, *, params: Mapping[str, Any] | None = None,
            headers: Mapping[str, str] | None = None, use_cache: bool = True) -> Response:
        """GET a complete body (retried, rate-limited, cached, verified).

        Raises
        ------
        HTTPStatusError
            HTTP errors after retries (``.status`` holds the code); 401/403
            carry the source's hint on keys.
        FetchError
            Network failures after retries, truncated bodies that could not
            be completed, URLs outside this source.
        """
        headers = dict(headers or {})
        url = self._full_url(self.url_for(path_or_url), params)
        key = self._cache_key("GET", url, headers)
        if use_cache and self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                logger.debug("%s: cache hit %s", self.source, hit.url)
                return hit
        resp = self._get_network(url, headers)
        if use_cache and self.cache is not None and resp.status == 200:
            self.cache.put(key, resp)
        return resp

    def _get_network(self, url: str, headers: dict[str, str]) -> Response:
        import requests

        shown = self.redact(url)
        attempt = 0
        body = bytearray()
        validator: str | None = None
        total: int | None = None
        redirects = 0
        while True:
            req_headers = dict(headers)
            if body and total is not None:
                req_headers["Range"] = f"bytes={len(body)}-"
                if validator:
                    req_headers["If-Range"] = validator
            self.limiter.wait()
            self.n_requests += 1
            logger.debug("%s: GET %s%s", self.source, shown,
                         f" (bytes {len(body)}-)" if "Range" in req_headers else "")
            try:
                r = self.session.get(url, headers=req_headers, timeout=self.timeout, stream=True,
                                     allow_redirects=False)
            except (requests.ConnectionError, requests.Timeout) as err:
                attempt = self._retry_or_raise(attempt, f"{type(err).__name__}", shown, err)
                continue
            except requests.RequestException as err:
                raise FetchError(f"{self.source}: GET {shown} failed: "
                                 f"{self.redact(str(err))}") from None
            try:
                self._note_rate_headers(r.headers)
                status = r.status_code
                if status in (301, 302, 303, 307, 308) and r.headers.get("Location"):
                    redirects += 1
                    target = requests.compat.urljoin(url, r.headers["Location"])
                    if redirects > 5:
                        raise FetchError(f"{self.source}: too many redirects from {shown}")
                    url = self.url_for(target)  # refuses other hosts: keys stay home
                    shown = self.redact(url)
                    continue
                if status in RETRY_STATUS:
                    wait = None
                    if status in (429, 503):
                        wait = _parse_retry_after(r.headers.get("Retry-After"))
                    reason = f"HTTP {status}"
                    if wait is not None and wait > self.max_wait_s:
                        raise HTTPStatusError(
                            f"{self.source}: rate limited (HTTP {status}); the server asks to retry "
                            f"after {wait:.0f} s, longer than the {self.max_wait_s:.0f} s allowed; "
                            "re-run later (finished items are kept)", status)
                    attempt = self._retry_or_raise(attempt, reason, shown, None, wait=wait,
                                                   status=status)
                    continue
                if status in (401, 403):
                    detail = self._error_detail(r)
                    hint = f"; {self.auth_hint}" if self.auth_hint else ""
                    raise HTTPStatusError(
                        f"{self.source} refused the request (HTTP {status}"
                        f"{': ' + detail if detail else ''}){hint}", status)
                if status == 404:
                    raise HTTPStatusError(f"{self.source}: not found (HTTP 404): {shown}", 404)
                if status == 416 and body:
                    body.clear()  # our range no longer fits: start again
                    total = None
                    continue
                if status not in (200, 206):
                    detail = self._error_detail(r)
                    raise HTTPStatusError(
                        f"{self.source}: HTTP {status} for {shown}{': ' + detail if detail else ''}",
                        status)
                if status == 206 and body:
                    start = _content_range_start(r.headers.get("Content-Range"))
                    if start != len(body):
                        body.clear()
                        total = None
                        continue
                elif status == 200 and body:
                    body.clear()  # server ignored the Range: take the whole body again
                if status == 200:
                    total = _int_or_none(r.headers.get("Content-Length"))
                    if r.headers.get("Content-Encoding", "identity") not in ("", "identity"):
                        total = None  # a decoded body has another length: cannot verify/resume
                    validator = r.headers.get("ETag") or r.headers.get("Last-Modified")
                complete = self._read_into(r, body)
                if complete and (total is None or len(body) == total):
                    hdrs = dict(r.headers)
                    content = _scrub_bytes(bytes(body), self.secrets)
                    return Response(status=200, url=shown, content=content, headers=hdrs)
                got = len(body)
                if total is None:
                    # no length to resume against: start over
                    body.clear()
                logger.info("%s: download of %s stopped at %d of %s bytes; resuming", self.source,
                            shown, got, total if total is not None else "?")
                attempt = self._retry_or_raise(attempt, f"truncated body ({got} of {total} bytes)",
                                               shown, None)
            finally:
                r.close()

    def _retry_or_raise(self, attempt: int, reason: str, shown: str, err: BaseException | None,
                        *, wait: float | None = None, status: int = 0) -> int:
        if attempt >= self.max_retries:
            detail = f": {self.redact(str(err))}" if err is not None else ""
            raise HTTPStatusError(
                f"{self.source}: GET {shown} failed after {attempt + 1} attempts ({reason}{detail})",
                status) from None
        delay = wait if wait is not None else self._backoff(attempt)
        logger.info("%s: %s for %s; retrying in %.1f s (attempt %d of %d)", self.source, reason,
                    shown, delay, attempt + 2, self.max_retries + 1)
        if wait is not None:
            self.limiter.pause_until(time.monotonic() + delay)
        else:
            self._sleep(delay)
        return attempt + 1

    def _read_into(self, r, body: bytearray) -> bool:
        """Append the streamed body to ``body``; False when the connection broke."""
        import requests

        encoded = r.headers.get("Content-Encoding", "identity") not in ("", "identity")
        if hasattr(r.raw, "enforce_content_length") and not encoded:
            # keep the bytes of a short read (urllib3 would drop them with an error);
            # the caller compares the length with Content-Length and resumes.  For a
            # compressed body urllib3 keeps checking the raw length (a short read then
            # raises and the body is fetched again from the start).
            r.raw.enforce_content_length = False
        try:
            for chunk in r.iter_content(chunk_size=1 << 16):
                body.extend(chunk)
                if len(body) > MAX_BODY_BYTES:
                    raise FetchError(f"{self.source}: response larger than {MAX_BODY_BYTES} bytes")
        except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError,
                requests.Timeout) as err:
            logger.debug("%s: body read broke off: %s", self.source, self.redact(str(err)))
            return False
        return True

    def _error_detail(self, r) -> str:
        """A short, secret-free reason from an error body (JSON or XML APIs)."""
        try:
            raw = r.raw.read(4096, decode_content=True) if r.raw is not None else b""
        except Exception:
            raw = b""
        text = self.redact(raw.decode("utf-8", errors="replace"))
        for pattern in ('"statusText"\\s*:\\s*"([^"]+)"', '"message"\\s*:\\s*"([^"]+)"',
                        '"error"\\s*:\\s*"([^"]+)"', "<statusText>([^<]+)</statusText>",
                        "<message>([^<]+)</message>"):
            import re

            m = re.search(pattern, text)
            if m:
                return m.group(1).strip()[:200]
        return (r.reason or "")[:200]


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _content_range_start(value: str | None) -> int | None:
    """``bytes 100-199/200`` → 100."""
    if not value or not value.startswith("bytes "):
        return None
    try:
        return int(value[6:].split("-", 1)[0])
    except ValueError:
        return None
