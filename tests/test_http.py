"""The fetchers' HTTP layer against a local replay server (127.0.0.1 only)."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "fixtures" / "publishers"))

from pubreplay import ELSEVIER_KEY, SPRINGER_KEY, ReplayServer  # noqa: E402

from imageextract.errors import FetchError  # noqa: E402
from imageextract.fetchers import _http  # noqa: E402
from imageextract.fetchers._http import (  # noqa: E402
    HttpClient, HTTPStatusError, RateLimiter, base_url, redact)

OBJ = "/content/object/eid/1-s2.0-S2950000024000011-gr1_lrg.jpg?httpAccept=%2A%2F%2A"
ARTICLE = "/content/article/doi/10.1016/j.replay.2024.100001"


@pytest.fixture
def srv():
    with ReplayServer() as s:
        yield s


class Sleeps(list):
    """Records the waits instead of sleeping."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def _client(srv, tmp_path=None, *, source="elsevier", key=ELSEVIER_KEY, **kw):
    kw.setdefault("sleep", Sleeps())
    kw.setdefault("backoff_s", 0.01)
    kw.setdefault("rate_per_s", 1000.0)
    headers = {"X-ELS-APIKey": key, "Accept": "text/xml"} if source == "elsevier" else {}
    return HttpClient(source, [srv.url], headers=headers, secrets=[key],
                      cache_dir=tmp_path, auth_hint="check ELSEVIER_API_KEY", **kw)


def test_base_url_override(monkeypatch):
    assert base_url("elsevier", "https://api.elsevier.com") == "https://api.elsevier.com"
    monkeypatch.setenv("IMAGEEXTRACT_ELSEVIER_URL", "http://127.0.0.1:8123/")
    assert base_url("elsevier", "https://api.elsevier.com") == "http://127.0.0.1:8123"
    for bad in ("http://127.0.0.1:8123/content", "ftp://host", "127.0.0.1:8123",
                "http://user:pw@127.0.0.1:1", "http://h:1/?a=b"):
        monkeypatch.setenv("IMAGEEXTRACT_ELSEVIER_URL", bad)
        with pytest.raises(FetchError, match="IMAGEEXTRACT_ELSEVIER_URL"):
            base_url("elsevier", "https://api.elsevier.com")


def test_redact_and_log_filter(caplog):
    assert redact("a=s3cr%2Ft&b=s3cr/t", ["s3cr/t"]) == "a=***&b=***"
    HttpClient("springer", ["http://127.0.0.1:1"], secrets=["k-123-secret"])
    with caplog.at_level(logging.DEBUG, logger="urllib3.connectionpool"):
        logging.getLogger("urllib3.connectionpool").debug('"GET /x?api_key=%s HTTP/1.1" 200', "k-123-secret")
    assert "k-123-secret" not in caplog.text and "api_key=***" in caplog.text


def test_headers_sent_and_no_key_in_url(srv, tmp_path):
    c = _client(srv, tmp_path)
    resp = c.get(ARTICLE, params={"view": "FULL"})
    assert resp.status == 200 and b"full-text-retrieval-response" in resp.content
    (req,) = srv.requests
    assert req["headers"]["X-ELS-APIKey"] == ELSEVIER_KEY
    assert req["headers"]["Accept"] == "text/xml"
    assert req["headers"]["User-Agent"].startswith("imageextract/")
    assert ELSEVIER_KEY not in req["raw_path"] and "apikey" not in req["raw_path"].lower()


def test_429_retry_after_is_honoured(srv):
    sleeps = Sleeps()
    c = _client(srv, sleep=sleeps)
    srv.fail("/content/article/doi/", "429")
    assert c.get(ARTICLE).status == 200
    assert len(srv.requests) == 2
    assert any(0.9 <= s <= 1.01 for s in sleeps), sleeps  # Retry-After: 1


def test_retry_after_longer_than_allowed_stops(srv):
    c = _client(srv, max_wait_s=0.5)
    srv.fail("/content/article/doi/", "429")
    with pytest.raises(HTTPStatusError, match="retry after 1 s") as err:
        c.get(ARTICLE)
    assert err.value.status == 429 and len(srv.requests) == 1


def test_500_is_retried_with_backoff_then_gives_up(srv):
    sleeps = Sleeps()
    # No rate limit: on a fast machine the limiter's own sub-millisecond waits
    # would land in the same recorder and break the count of backoff waits.
    c = _client(srv, sleep=sleeps, max_retries=2, rate_per_s=None)
    srv.fail("/content/article/doi/", "500")
    assert c.get(ARTICLE).status == 200
    assert len(sleeps) == 1 and sleeps[0] < 0.1
    srv.fail("/content/article/doi/", "500", times=3)
    with pytest.raises(HTTPStatusError, match="failed after 3 attempts") as err:
        c.get(ARTICLE, use_cache=False)
    assert err.value.status == 500
    assert [s < t for s, t in zip(sleeps[1:], sleeps[2:])] == [True]  # exponential


def test_truncated_download_is_resumed_with_range(srv, tmp_path):
    c = _client(srv, tmp_path)
    full = c.get(OBJ, use_cache=False).content
    srv.requests.clear()
    srv.fail("gr1_lrg.jpg", "truncate")
    data = c.get(OBJ, use_cache=False).content
    assert data == full
    first, second = srv.requests
    assert "Range" not in first["headers"]
    assert second["headers"]["Range"] == f"bytes={len(full) // 2}-"
    assert second["headers"].get("If-Range")


def test_401_names_the_variable_not_the_key(srv):
    c = _client(srv, key="wrong-key-000")
    with pytest.raises(HTTPStatusError) as err:
        c.get(ARTICLE)
    msg = str(err.value)
    assert err.value.status == 401 and "Invalid API Key" in msg and "ELSEVIER_API_KEY" in msg
    assert "wrong-key-000" not in msg


def test_404_is_not_retried(srv):
    c = _client(srv)
    with pytest.raises(HTTPStatusError, match="not found") as err:
        c.get("/content/article/doi/10.1016/j.nothing.2024.1")
    assert err.value.status == 404 and len(srv.requests) == 1


def test_cache_reuses_responses_and_holds_no_secret(srv, tmp_path):
    c = HttpClient("springer", [srv.url], secrets=[SPRINGER_KEY], cache_dir=tmp_path,
                   rate_per_s=1000.0)
    params = {"q": "doi:10.1186/s11671-024-00001-x", "api_key": SPRINGER_KEY}
    first = c.get("/openaccess/jats", params=params)
    second = c.get("/openaccess/jats", params=params)
    assert len(srv.requests) == 1 and second.from_cache and second.content == first.content
    # the API echoes the key in <apiKey>: scrubbed before caching and parsing
    assert SPRINGER_KEY.encode() not in first.content and b"<apiKey>***</apiKey>" in first.content
    assert SPRINGER_KEY not in first.url
    for f in tmp_path.rglob("*"):
        if f.is_file():
            assert SPRINGER_KEY.encode() not in f.read_bytes(), f
            assert SPRINGER_KEY not in f.name
    # another key gives the same cache entry (keys are not part of cache keys)
    c2 = HttpClient("springer", [srv.url], secrets=["other-key"], cache_dir=tmp_path)
    assert c2.get("/openaccess/jats", params={**params, "api_key": "other-key"}).from_cache


def test_other_hosts_are_refused(srv):
    c = _client(srv)
    with pytest.raises(FetchError, match="talks only to"):
        c.get("https://evil.example.org/steal")


def test_network_error_message_has_no_key(tmp_path):
    c = HttpClient("springer", ["http://127.0.0.1:9"], secrets=["k-999-secret"], max_retries=1,
                   backoff_s=0.0, sleep=Sleeps(), rate_per_s=1000.0)
    with pytest.raises(FetchError) as err:
        c.get("/openaccess/jats", params={"api_key": "k-999-secret"})
    assert "k-999-secret" not in str(err.value) and "api_key=***" in str(err.value)


def test_rate_limiter_spaces_requests():
    now = [0.0]
    sleeps = Sleeps()

    def sleep(s):
        sleeps.append(s)
        now[0] += s

    lim = RateLimiter(4.0, sleep=sleep, clock=lambda: now[0])
    for _ in range(5):
        lim.wait()
    assert sleeps == pytest.approx([0.25] * 4)
    lim.set_rate(2.0)
    lim.wait()
    assert sleeps[-1] == pytest.approx(0.25)  # the slot booked at 4/s
    lim.wait()
    assert sleeps[-1] == pytest.approx(0.5)


def test_crossref_rate_headers_lower_the_rate(srv):
    c = HttpClient("crossref-test", [srv.url], rate_per_s=1000.0)
    c.get("/works/10.1016/j.replay.2024.100001")
    assert c.limiter.rate_per_s == pytest.approx(50.0)


def test_elsevier_quota_exhausted(srv):
    c = _client(srv)
    far = str(int(time.time()) + 3600)
    with pytest.raises(HTTPStatusError, match="quota exhausted"):
        c._note_rate_headers({"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": far})
    soon = str(time.time() + 0.3)
    c._note_rate_headers({"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": soon})
    assert c.limiter.wait() > 0  # pauses until the reset


def test_parse_retry_after_date():
    assert _http._parse_retry_after("garbage") is None
    assert _http._parse_retry_after("0") == 0.0
