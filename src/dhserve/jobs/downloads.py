"""Fetches http(s) inputs for a job: from public addresses only (unless the operator opens
internal networks), within a size limit and a wall-clock deadline, and stoppable at once.

A URL's host is resolved once; every address it resolves to is checked, and the connection
goes to a checked address, never to a fresh DNS answer (rebinding). Redirects are followed
here, one hop at a time, each hop checked the same way. A watch thread ends the download at
its deadline or when the caller asks it to stop, whatever the sender does: it shuts the
socket down, which wakes any blocked connect, handshake or read.
"""

from __future__ import annotations

import base64
import errno
import http.client
import ipaddress
import logging
import re
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

from dhserve import __version__
from dhserve.errors import (
    Canceled,
    DownloadFailed,
    InputError,
    InputTooLarge,
    InputUrlNotAllowed,
    StorageFull,
)
from dhserve.fsutil import remove_quietly

log = logging.getLogger(__name__)

CHUNK = 1 << 20
MAX_REDIRECTS = 5
WATCH_INTERVAL_S = 0.25     # how often the deadline and the stop request are looked at
REDIRECTS = frozenset({301, 302, 303, 307, 308})
CARRIER_GRADE_NAT = ipaddress.ip_network("100.64.0.0/10")
NAT64 = ipaddress.ip_network("64:ff9b::/96")    # well-known prefix: the low 32 bits are IPv4
ALLOWED_HINT = "DHSERVE_ALLOWED_NETWORKS opens internal networks"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
SocketAddress = tuple[int, tuple]               # (address family, sockaddr) as getaddrinfo
Resolver = Callable[[str, int], list[SocketAddress]]


def is_url(value: str) -> bool:
    return urlsplit(value).scheme.lower() in ("http", "https")


def resolve(host: str, port: int) -> list[SocketAddress]:
    """The addresses `host` resolves to (the system's resolver, once), in its order."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys((family, sockaddr) for family, _, _, _, sockaddr in infos))


def internal_reason(address: IPAddress) -> str | None:
    """Why `address` is not a public internet address ("a loopback address"), or None. An
    IPv6 address that carries an IPv4 one (IPv4-mapped, 6to4, NAT64) is judged by it."""
    if address.version == 6:
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            return internal_reason(embedded)
    checks = (("a loopback address", address.is_loopback),
              ("an unspecified address", address.is_unspecified),
              ("a link-local address", address.is_link_local),
              ("a multicast address", address.is_multicast),
              ("a carrier-grade NAT address", address in CARRIER_GRADE_NAT),
              ("a reserved address", address.is_reserved),
              ("a private address", address.is_private),
              ("a non-public address", not address.is_global))
    return next((reason for reason, hit in checks if hit), None)


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def address_refusal(address: str, allowed: Iterable[Network] = ()) -> str | None:
    """Why a URL input may not connect to `address` ("a loopback address"), or None when it
    may: a public address, or one inside an `allowed` network."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])     # fe80::1%eth0: the scope goes
    forms = [ip]
    if ip.version == 6 and (embedded := _embedded_ipv4(ip)) is not None:
        forms.append(embedded)
    if any(form in network for network in allowed for form in forms
           if form.version == network.version):
        return None
    return internal_reason(ip)


@dataclass(frozen=True)
class _Target:
    """One hop's URL taken apart: where to connect and what to ask for."""

    url: str
    scheme: str
    host: str                   # ASCII (IDNA), without brackets
    port: int
    path: str                   # with the query
    authorization: str | None   # from user:password@ in the URL


def _target(url: str, field: str) -> _Target:
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
        host = (parts.hostname or "").encode("idna").decode("ascii")
    except (ValueError, UnicodeError):
        raise DownloadFailed(field, f"{url} is not a valid URL") from None
    if not host:
        raise DownloadFailed(field, f"{url} names no host")
    authorization = None
    if parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        authorization = "Basic " + base64.b64encode(credentials.encode()).decode("ascii")
    path = parts.path or "/"
    return _Target(url, parts.scheme.lower(), host, port,
                   f"{path}?{parts.query}" if parts.query else path, authorization)


def _checked(target: _Target, field: str, allowed: tuple[Network, ...],
             resolver: Resolver, watch: _Watch | None = None) -> list[SocketAddress]:
    try:
        addresses = _resolve(resolver, target, watch)
    except (OSError, UnicodeError) as exc:
        log.info("%s: cannot resolve %s: %s", field, target.host, exc)
        raise DownloadFailed(field,
                             f"could not download {target.url}: host {target.host} not found") \
            from None
    if not addresses:
        raise DownloadFailed(field,
                             f"could not download {target.url}: host {target.host} not found")
    for _, sockaddr in addresses:
        reason = address_refusal(sockaddr[0], allowed)
        if reason:
            log.warning("%s: refused %s: %s resolves to %s (%s)", field, target.url,
                        target.host, sockaddr[0], reason)
            raise InputUrlNotAllowed(field,
                                     f"{target.url} is not allowed: its host resolves to {reason} "
                                     f"({ALLOWED_HINT})")
    return addresses


def _resolve(resolver: Resolver, target: _Target, watch: _Watch | None) -> list[SocketAddress]:
    """The resolver's answer; with a watch, asked on a thread of its own, so that a name
    server that takes its time (the URL's owner runs it) holds no one past the deadline or
    a stop request."""
    if watch is None:
        return resolver(target.host, target.port)
    answer: list[list[SocketAddress]] = []
    failure: list[BaseException] = []

    def ask() -> None:
        try:
            answer.append(resolver(target.host, target.port))
        except (OSError, UnicodeError) as exc:      # raised below, in the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=ask, name="dhserve-resolve", daemon=True)
    thread.start()
    while thread.is_alive():
        watch.check()
        thread.join(WATCH_INTERVAL_S)
    if failure:
        raise failure[0]
    if not answer:
        raise OSError(f"resolving {target.host} failed")
    return answer[0]


class _Watch:
    """Ends a download at its deadline or when `should_stop` says so: a thread looks every
    WATCH_INTERVAL_S and shuts the attached socket down, which wakes the blocked reader."""

    def __init__(self, deadline: float, should_stop: Callable[[], bool] | None):
        self.deadline = deadline
        self.should_stop = should_stop
        self.verdict: str | None = None          # "stopped" or "deadline", once decided
        self._fd: int | None = None
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dhserve-download-watch",
                                        daemon=True)

    @classmethod
    @contextmanager
    def running(cls, deadline: float,
                should_stop: Callable[[], bool] | None) -> Iterator[_Watch]:
        watch = cls(deadline, should_stop)
        watch._thread.start()
        try:
            yield watch
        finally:
            watch._done.set()
            watch._thread.join()

    def attach(self, sock: socket.socket | None) -> None:
        """The socket to shut when the time comes (None before it is closed: its number
        may be reused by another socket at once)."""
        with self._lock:
            self._fd = None if sock is None else sock.fileno()
            if self.verdict is not None:
                self._shut()

    def check(self) -> None:
        """Raises the verdict, if there is one (for the waits the thread cannot wake)."""
        if self.verdict is None and time.monotonic() >= self.deadline:
            self.verdict = "deadline"
        if self.verdict is not None:
            raise _Ended(self.verdict)

    def remaining(self) -> float:
        return max(self.deadline - time.monotonic(), 0.0)

    def _run(self) -> None:
        while not self._done.wait(WATCH_INTERVAL_S):
            verdict = self._verdict()
            if verdict is not None:
                with self._lock:
                    self.verdict = verdict
                    self._shut()
                return

    def _verdict(self) -> str | None:
        if self.should_stop is not None:
            try:
                if self.should_stop():
                    return "stopped"
            except Exception:       # the caller's check failed; the deadline still holds
                log.warning("download stop check failed", exc_info=True)
        return "deadline" if time.monotonic() >= self.deadline else None

    def _shut(self) -> None:
        if self._fd is None:
            return
        try:
            # shutdown acts on the connection, whichever descriptor names it: a duplicate
            # shuts the one the reader is blocked on (a TLS socket's too)
            with socket.socket(fileno=socket.dup(self._fd)) as duplicate:
                duplicate.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass        # not connected yet, or already closed: the reader sees it anyway


class _Ended(Exception):
    """The watch ended the download ("stopped" or "deadline")."""


class _PinnedConnection(http.client.HTTPConnection):
    """HTTP over a socket already connected to a checked address: it never connects again
    by name (http.client would resolve the host anew)."""

    def __init__(self, target: _Target, sock: socket.socket, timeout: float):
        super().__init__(target.host, target.port, timeout=timeout)
        self.default_port = 443 if target.scheme == "https" else 80     # for the Host header
        self.sock = sock

    def connect(self) -> None:
        raise http.client.NotConnected("the connection to the checked address is closed")


def _connect(target: _Target, addresses: list[SocketAddress], watch: _Watch) -> socket.socket:
    """A connection to the first of the checked `addresses` that answers (TLS for https,
    verified against the URL's host name)."""
    failure: OSError | None = None
    for family, sockaddr in addresses:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            _connect_socket(sock, sockaddr, watch)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(watch.remaining() + 1.0)    # the watch ends it before this
            watch.attach(sock)
            if target.scheme == "https":
                context = ssl.create_default_context()
                sock = context.wrap_socket(sock, server_hostname=target.host)
            return sock
        except OSError as exc:
            watch.attach(None)
            sock.close()
            failure = exc
        except BaseException:
            watch.attach(None)
            sock.close()
            raise
    assert failure is not None
    raise failure


def _connect_socket(sock: socket.socket, sockaddr: tuple, watch: _Watch) -> None:
    """connect() in steps, so that the deadline and a stop request are seen during it."""
    sock.setblocking(False)
    error = sock.connect_ex(sockaddr)
    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_WRITE)
        while error in (errno.EINPROGRESS, errno.EAGAIN):
            watch.check()
            if selector.select(min(WATCH_INTERVAL_S, watch.remaining())):
                error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if error:
        raise ConnectionError(error, f"connect: errno {error}")
    sock.setblocking(True)


def download(url: str, field: str, folder: Path, max_bytes: int, timeout_s: float, *,
             allowed: Iterable[Network] = (), should_stop: Callable[[], bool] | None = None,
             resolver: Resolver = resolve) -> Path:
    """Saves `url` into `folder` within `timeout_s` seconds all told; errors name the field
    and the reason, partial files go. `allowed`: internal networks it may reach anyway.
    `should_stop` is called a few times a second from another thread: True ends the
    download with Canceled within WATCH_INTERVAL_S. `resolver` answers DNS (a seam for
    tests: it is asked once per hop, and the connection goes where it said)."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", unquote(Path(urlsplit(url).path).name))[-100:]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{field}-{name or 'input'}"
    part = path.with_name(path.name + ".part")
    allowed = tuple(allowed)
    answered = False        # the server sent its headers: what follows is no port scan
    with _Watch.running(time.monotonic() + timeout_s, should_stop) as watch:
        try:
            hops = 0
            while True:
                target = _target(url, field)
                addresses = _checked(target, field, allowed, resolver, watch)
                sock = _connect(target, addresses, watch)
                connection = _PinnedConnection(target, sock, timeout=timeout_s)
                try:
                    headers = {"User-Agent": f"dhserve/{__version__}",
                               "Accept-Encoding": "identity"}
                    if target.authorization and hops == 0:
                        headers["Authorization"] = target.authorization
                    connection.request("GET", target.path, headers=headers)
                    response = connection.getresponse()
                    answered = True
                    location = response.getheader("Location")
                    if response.status in REDIRECTS and location:
                        hops += 1
                        url = _redirect(url, location, field, hops)
                        answered = False
                        continue
                    if not 200 <= response.status < 300:
                        raise DownloadFailed(field,
                                             f"{url} answered HTTP {response.status} "
                                             f"{response.reason[:100]}")
                    _save(response, part, url, field, max_bytes, watch)
                    break
                finally:
                    watch.attach(None)
                    connection.close()
            part.replace(path)
            return path
        except _Ended as ended:
            raise _ended_error(ended.args[0], url, field, timeout_s, answered) from None
        except (OSError, http.client.HTTPException, ValueError) as exc:
            if watch.verdict is not None:
                raise _ended_error(watch.verdict, url, field, timeout_s, answered) from None
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StorageFull(f"{field}: no space left for the download of {url}") \
                    from None
            log.info("%s: download of %s failed: %s: %s", field, url, type(exc).__name__, exc)
            if isinstance(exc, ssl.SSLCertVerificationError):
                raise DownloadFailed(field,
                                     f"could not download {url}: its TLS certificate is not "
                                     f"valid ({exc.verify_message})") from None
            if answered and isinstance(exc, http.client.IncompleteRead):
                raise DownloadFailed(field,
                                     f"download of {url} broke off") from None
            raise DownloadFailed(field,
                                 f"could not download {url}") from None
        finally:
            remove_quietly(part)


def _save(response: http.client.HTTPResponse, part: Path, url: str, field: str,
          max_bytes: int, watch: _Watch) -> None:
    declared = response.getheader("Content-Length", "")
    expected = int(declared) if declared.isdigit() else None
    if expected is not None and expected > max_bytes:
        raise _too_big(field, max_bytes)
    size = 0
    with open(part, "wb") as out:
        # read1 answers with what has arrived: the loop regains control as data trickles
        while chunk := response.read1(CHUNK):
            size += len(chunk)
            if size > max_bytes:
                raise _too_big(field, max_bytes)
            out.write(chunk)
            watch.check()
    watch.check()           # an end of data that the watch caused is not the file's end
    if expected is not None and size < expected:
        # a server that closes early ends the body quietly: a cut-off file would be
        # rendered as if it were whole
        raise DownloadFailed(field,
                             f"download of {url} broke off after {size} of {expected} bytes")


def _redirect(url: str, location: str, field: str, hops: int) -> str:
    new = urljoin(url, location)
    if not is_url(new):
        raise DownloadFailed(field,
                             f"{url}: redirect to {new.split(':')[0]}: refused "
                             "(http and https only)")
    if hops > MAX_REDIRECTS:
        raise DownloadFailed(field,
                             f"{url}: more than {MAX_REDIRECTS} redirects")
    return new


def _ended_error(verdict: str, url: str, field: str, timeout_s: float,
                 answered: bool) -> Exception:
    if verdict == "stopped":
        return Canceled("download stopped")
    if not answered:    # a silent port and a slow server read the same
        return DownloadFailed(field, f"could not download {url}")
    return DownloadFailed(field,
                          f"download of {url} took longer than {timeout_s:g} s")


def _too_big(field: str, max_bytes: int) -> InputError:
    return InputTooLarge(field,
                         f"download is over the limit of {max_bytes / 2**20:g} MB")
