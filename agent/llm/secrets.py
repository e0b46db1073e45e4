"""Credentials in endpoint URLs and API keys: found, left out of what is written or shown, checked,
and redacted from error messages. Its own module because the pipeline, the sweep and the MLflow
mirror use it too, wherever a URL or an error message is written or shown."""

from __future__ import annotations

import base64
import re
from urllib.parse import parse_qsl, quote, quote_plus, unquote, urlencode, urlsplit, urlunsplit

from promptclimb.agent.core.errors import PromptclimbError

# Query parameters that carry a credential (`?api-key=...` for Azure-style endpoints, `?token=`, a
# signature): never written to disk or shown.
# Query parameters that carry a key: `api_key`, `access_token`, `sig` (Azure SAS), `code` (an
# Azure Functions gateway's), `pwd`/`pass`... A name that merely contains one of these words is
# hidden too: better a harmless parameter hidden than a key shown.
_SECRET_WORDS = r"key|token|secret|pass|pwd|sig|auth|credential|code"
_SECRET_PARAMETER = re.compile(_SECRET_WORDS, re.IGNORECASE)
# The same in free text (an error message quoting a URL): the values of secret parameters (the
# userinfo of each URL in it: `scrub_urls`)
_SECRET_QUERY_IN_TEXT = re.compile(r"([?&][^=&\s?]*(?:" + _SECRET_WORDS + r")[^=&\s]*=)[^&\s]+", re.IGNORECASE)
# a URL up to the next space: a password may hold a '/', which ended the userinfo `://[^/\s]*@` found
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:/+\S*")
# a scheme has its slash (one at least, as typed): in `bob:pw@host`, `bob:` is a user name
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):/+")
_QUERY_BEGINS = re.compile(r"[?#]")
# an '@' that a host (and port) and then a path follow: where a `user:password@` ends, whatever the
# password holds ('/', '?', '#' typed unencoded)
_AT_BEFORE_HOST = re.compile(r"@(?=[A-Za-z0-9._~%\[\]:-]+/)")
# Schemes whose URL names a file (MLflow's `sqlite:///runs@2/mlflow.db`): no userinfo, an '@' there is the path's
_FILE_SCHEMES = ("file", "sqlite")
# where a URL's authority (`user:password@host:port`) ends, as far as what is typed tells
_AUTHORITY_ENDS = re.compile(r"[/?#]")


def _split(url: str):
    """urlsplit's parts of `url`, or None where it cannot read them (`http://[::1`, a port
    that is not a number)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
        return parts
    except ValueError:
        return None


def _userinfo(url: str) -> tuple[int, int]:
    """Where the `user:password@` of `url` begins and ends (its '@' included; both at its
    start where it has none): everything between the scheme's slashes (or the start) and the
    last '@' that a host and a path follow, or, with none, the last '@' before the query. A
    password typed unencoded may hold a '/', '?' or '#' (which urlsplit reads as the path's,
    the query's: the password was shown, and recorded); an '@' in a query (`?email=a@b.com`,
    a key's value) is no userinfo's end. A file's URL and a plain path (MLflow's folder store,
    `/data/runs@2/mlruns`) have none."""
    scheme = _SCHEME.match(url)
    start = scheme.end() if scheme else 0
    if (scheme and scheme.group(1).lower() in _FILE_SCHEMES) or (not scheme and url[:1] in ("/", ".", "~")):
        return start, start
    query = _query_after_host(url, start)
    before_host = [found.start() for found in _AT_BEFORE_HOST.finditer(url, start, query)]
    if before_host:
        return start, before_host[-1] + 1
    slash = url.find("/", start)
    query = _QUERY_BEGINS.search(url, slash if slash >= 0 else start)
    at = url.rfind("@", start, query.start() if query else len(url))
    return start, (at + 1 if at >= 0 else start)


def _query_after_host(url: str, start: int) -> int:
    """Where the query (or fragment) of `url` begins when what comes before it reads as a host
    (and port), a path maybe, and a '?' or '#' (`http://127.0.0.1:8080/v1?x=a@b/c`: an '@' after
    it is the query's, even with a host-like word and a '/' after it); else len(url). A password
    typed with a '?' or '#' in it leaves no host and port before that (`user:pa?ss@host/v1`:
    'pa' is no port), so its '@' stays the userinfo's end."""
    ends = _AUTHORITY_ENDS.search(url, start)
    if ends is None:
        return len(url)
    host = url[start:ends.start()].rpartition("@")[2]  # after a userinfo typed before it
    parts = _split(f"http://{host}")
    if parts is None or not parts.hostname:
        return len(url)
    query = _QUERY_BEGINS.search(url, ends.start())
    return query.start() if query else len(url)


def url_secrets(url: str | None) -> tuple[str, ...]:
    """The credentials written into `url`: its password (also as the HTTP Basic header that
    carries it, which an endpoint may quote back), and its secret query parameters' values."""
    if not url:
        return ()
    start, end = _userinfo(url)
    user, _, password = url[start:end - 1].partition(":") if end > start else ("", "", "")
    parts = _split(url[:start] + url[end:])
    if parts is None:  # not a URL urlsplit reads: every value of whatever sits where a query would
        found = [password] + [value for _, value in parse_qsl(url[end:].partition("?")[2])]
    else:
        found = [password] + [value for name, value in parse_qsl(parts.query) if _SECRET_PARAMETER.search(name)]
    if password:  # as typed (percent-encoded), as sent, and as the Basic header that sends it
        found += [unquote(password), base64.b64encode(f"{unquote(user)}:{unquote(password)}".encode()).decode()]
    return tuple(dict.fromkeys(secret for secret in found if secret))


def without_secrets(url: str | None) -> str | None:
    """`url` without its `user:password@` part and its secret query parameters (what may be
    written to disk or shown)."""
    if not url:
        return url
    start, end = _userinfo(url)
    url = url[:start] + url[end:]
    parts = _split(url)
    if parts is None:
        return shown_url(url)
    query = [(name, value) for name, value in parse_qsl(parts.query, keep_blank_values=True)
             if not _SECRET_PARAMETER.search(name)]
    if len(query) == len(parse_qsl(parts.query, keep_blank_values=True)):
        return url
    return urlunsplit(parts._replace(query=urlencode(query)))


def shown_url(url: str) -> str:
    """`url` without its userinfo, query and fragment: what may be shown of a URL whose parts
    cannot be told apart for sure."""
    start, end = _userinfo(url)
    return url[:start] + _QUERY_BEGINS.split(url[end:], maxsplit=1)[0]


def scrub_urls(text: str) -> str:
    """`text` (an error message) with the password and the secret query values of every URL
    in it left out."""
    def without_userinfo(found: re.Match) -> str:
        start, end = _userinfo(found.group())
        return found.group()[:start] + found.group()[end:]

    return _SECRET_QUERY_IN_TEXT.sub(r"\1[redacted]", _URL_IN_TEXT.sub(without_userinfo, text))


def check_endpoint_url(url: str | None, what: str) -> None:
    """PromptclimbError in one line naming `what` (--base-url, OPENAI_BASE_URL) when `url` is
    given and is not an http(s) URL with a host and a port that can be read: 'localhost:8080/v1'
    was taken, and its connection error retried for half a minute before the search failed.
    Its password is never said, read as `_userinfo` reads it."""
    if not url:
        return
    start, end = _userinfo(url)
    parts = _split(url[:start] + url[end:])
    shown = shown_url(url)
    if parts is None:
        raise PromptclimbError(f"{what} {shown!r}: its host or port cannot be read (a port is a number from 0 to "
                               "65535; an IPv6 host is written in brackets, http://[::1]:8080/v1)")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PromptclimbError(f"{what} {shown!r}: expected an http:// or https:// URL (e.g. http://localhost:8080/v1)")
    if re.search(r"[/?#]", url[start:end]):  # the HTTP client would read a host, a path or a query in the password
        raise PromptclimbError(f"{what} {shown!r}: its user name or password holds a '/', '?' or '#' (or its path an "
                               "'@'): percent-encode them in the password (%2F for '/', %40 for '@', %3F for '?', "
                               "%23 for '#')")


def check_api_key(key: str | None, what: str = "OPENAI_API_KEY") -> None:
    """PromptclimbError where `key` holds a character an HTTP header cannot carry (a letter
    outside ASCII, a line break) or begins or ends with a space: pasted with the key; the key
    itself is never said."""
    if key and (not key.isascii() or any(ord(c) < 32 or ord(c) == 127 for c in key)):
        raise PromptclimbError(f"{what} holds a character an HTTP header cannot carry (a letter outside ASCII, a "
                               "line break or another control character: pasted with the key?); set it again")
    if key and key != key.strip():  # the HTTP client refuses it too, as a connection error retried
        raise PromptclimbError(f"{what} begins or ends with a space: pasted with the key?; set it again without")


_KEY_LIKE = re.compile(r"\b(sk|pk|key)-[A-Za-z0-9_\-*.]{6,}")


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """`text` with every given secret (as it is, or percent-encoded in a URL) and anything
    shaped like an API key replaced, and URLs in it without their passwords and secret
    query values."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            for form in dict.fromkeys((secret, quote(secret, safe=""), quote_plus(secret))):
                text = text.replace(form, "[redacted]")
    return _KEY_LIKE.sub("[redacted]", scrub_urls(text))

