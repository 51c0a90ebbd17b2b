"""The HTTP side of an OCI registry: oras-py's client with a timeout on every request and one retry instead
of oras' five, plain HTTP only on loopback, and response bodies read up to a bound."""

from __future__ import annotations

import math
import os
import time

from quantkit.errors import QuantkitError
from quantkit.publish.destinations.base import PushError

LOOPBACK = ("localhost", "127.0.0.1", "[::1]")
TIMEOUT_ENV = "QUANTKIT_REGISTRY_TIMEOUT"
DEFAULT_TIMEOUT = 60.0  # seconds to connect, and the longest silence while a response is read


def registry_timeout() -> float:
    """$QUANTKIT_REGISTRY_TIMEOUT seconds, else DEFAULT_TIMEOUT: the connect and the read timeout of every request."""
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise QuantkitError(f"{TIMEOUT_ENV}={text!r}: expected a number of seconds > 0 (default {DEFAULT_TIMEOUT:g})")
    return value


def is_timeout(e: BaseException) -> bool:
    import requests
    from urllib3.exceptions import ReadTimeoutError

    # a read timeout while a body streams comes as requests' ConnectionError around urllib3's ReadTimeoutError
    return isinstance(e, requests.Timeout) or any(isinstance(a, ReadTimeoutError) for a in e.args)



def oras_registry(host: str, timeout: float):
    """oras-py's registry client for `host`, every request of its session (the token realm's too) under `timeout`."""
    import oras.provider
    import requests
    from requests.adapters import HTTPAdapter

    class TimeoutAdapter(HTTPAdapter):
        # requests waits forever by default
        def send(self, request, **kwargs):
            if kwargs.get("timeout") is None:
                kwargs["timeout"] = timeout
            return super().send(request, **kwargs)

    plain = getattr(oras.provider.Registry.do_request, "__wrapped__", oras.provider.Registry.do_request)

    class Registry(oras.provider.Registry):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            adapter = TimeoutAdapter()
            self.session.mount("http://", adapter)
            self.session.mount("https://", adapter)

        # oras retries every request 5 times over ~2 minutes; a dead registry should fail in seconds,
        # and a silent one after one timeout, not after several
        def do_request(self, *args, **kwargs):
            try:
                return plain(self, *args, **kwargs)
            except requests.Timeout:
                raise
            except requests.ConnectionError:
                time.sleep(1)
                return plain(self, *args, **kwargs)

    # plain HTTP only on this machine's loopback; any other registry is spoken to over TLS
    insecure = host.split(":")[0] in LOOPBACK or host.startswith("[::1]")
    return Registry(hostname=host, insecure=insecure)


def read_body(resp, limit: int, what: str, truncate: bool = False) -> bytes:
    """A response body of at most `limit` bytes; a longer one is cut (`truncate`) or refused."""
    body = bytearray()
    for chunk in resp.iter_content(chunk_size=64 << 10):
        body += chunk
        if len(body) > limit:
            if truncate:
                return bytes(body[:limit])
            raise PushError(f"{what}: the registry's answer is over {limit} bytes, the most quantkit reads; refusing it")
    return bytes(body)

