"""Where the servers are: parsing `--url`, and spreading requests over several endpoints.

An `EndpointPool` hands out endpoints in turn, skipping those that failed recently; a failed
endpoint is taken out for `cooldown` seconds and then tried again. With every endpoint out,
the least recently failed one is tried anyway (better than failing without trying).
"""

from __future__ import annotations

import itertools
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from toolkit.choices import Protocol
from toolkit.errors import DlkitError

DEFAULT_PORTS = {Protocol.GRPC: 8001, Protocol.HTTP: 8000}
_VERSION = re.compile(r"[1-9][0-9]{0,18}")
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class Endpoint:
    protocol: Protocol
    address: str  # host:port
    model: str | None = None  # from a URL's path (grpc://host:8001/NAME[/VERSION])

    @property
    def url(self) -> str:
        return f"{self.protocol}://{self.address}"

    @property
    def local(self) -> bool:
        return urlsplit(self.url).hostname in LOCAL_HOSTS


def split_model(reference: str) -> tuple[str, str]:
    """`faces/2` -> ("faces", "2"); `faces` -> ("faces", ""): a model, and one version of it
    ("": the versions Triton chooses). Model names hold no `/`, so the form is unambiguous."""
    name, _, version = reference.partition("/")
    if not name or (version and not _VERSION.fullmatch(version)):
        raise DlkitError(
            f"{reference!r} is not MODEL or MODEL/VERSION (a version is a whole number from 1)"
        )
    return name, version


def parse_url(url: str, protocol: str | None = None) -> Endpoint:
    """`grpc://host:8001/NAME`, `grpc://host:8001/NAME/VERSION`, `http://host:8000`,
    `host:port` -> Endpoint. Without a scheme the protocol is `protocol`, else gRPC."""
    text = url if "://" in url else f"{protocol or 'grpc'}://{url}"
    parts = urlsplit(text)
    scheme = Protocol.parse(parts.scheme.lower(), "protocol")
    if protocol and "://" in url and protocol != scheme:
        raise DlkitError(f"{url} says {scheme}, but the protocol asked for is {protocol}")
    if not parts.hostname:
        raise DlkitError(f"no host in {url!r}; expected HOST:PORT, e.g. 127.0.0.1:8001")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    try:
        port = parts.port or DEFAULT_PORTS[scheme]
    except ValueError:
        raise DlkitError(f"bad port in {url!r}; ports are 1-65535") from None
    model = parts.path.strip("/") or None
    if model is not None:
        split_model(model)  # a bad version fails here, naming the URL's form
    return Endpoint(scheme, f"{host}:{port}", model)


def parse_urls(urls: str | Sequence[str], protocol: str | None = None) -> list[Endpoint]:
    """Several endpoints from URLs given as a list or comma-separated; one model name at most
    among their paths, and no endpoint twice."""
    items = [urls] if isinstance(urls, str) else list(urls)
    texts = [t.strip() for item in items for t in item.split(",") if t.strip()]
    if not texts:
        raise DlkitError("no server URL given; expected HOST:PORT, e.g. 127.0.0.1:8001")
    endpoints = [parse_url(t, protocol) for t in texts]
    names = {e.model for e in endpoints if e.model}
    if len(names) > 1:
        raise DlkitError(f"the URLs name different models: {', '.join(sorted(names))}")
    if len({e.url for e in endpoints}) < len(endpoints):
        raise DlkitError("the same server is given twice")
    return endpoints


class EndpointPool:
    """Round-robin over healthy endpoints; thread-safe."""

    def __init__(self, endpoints: Sequence[Endpoint], cooldown: float = 5.0):
        self.endpoints = list(endpoints)
        self.cooldown = cooldown
        self._down_until = dict.fromkeys(range(len(self.endpoints)), 0.0)
        self._turn = itertools.cycle(range(len(self.endpoints)))
        self._lock = threading.Lock()

    def pick(self, avoid: set[int] = frozenset()) -> int:
        """The index of the next healthy endpoint not in `avoid` (tried for this request
        already); if none, the one whose time out ends first."""
        now = time.monotonic()
        with self._lock:
            for _ in range(len(self.endpoints)):
                i = next(self._turn)
                if i not in avoid and self._down_until[i] <= now:
                    return i
            candidates = [i for i in self._down_until if i not in avoid] or list(self._down_until)
            return min(candidates, key=self._down_until.__getitem__)

    def failed(self, index: int) -> None:
        with self._lock:
            self._down_until[index] = time.monotonic() + self.cooldown

    def succeeded(self, index: int) -> None:
        with self._lock:
            self._down_until[index] = 0.0

    def healthy(self) -> list[Endpoint]:
        now = time.monotonic()
        return [e for i, e in enumerate(self.endpoints) if self._down_until[i] <= now]
