"""URL inputs against real loopback HTTP servers: what may be reached, and how long it takes.

The stub servers run on threads of this process. Loopback is internal, so a test opens it
with `allowed` networks the way an operator sets DHSERVE_ALLOWED_NETWORKS; where a test
must show that an address stays closed, the stub it may reach listens on 127.0.0.2 and only
127.0.0.2/32 is opened.
"""

from __future__ import annotations

import http.server
import ipaddress
import shutil
import socket
import ssl
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import small_tmpfs

from dhserve.errors import Canceled, InputError
from dhserve.jobs.downloads import address_refusal, download

ONLY_127_0_0_2 = (ipaddress.ip_network("127.0.0.2/32"),)
LOOPBACK_V4 = (ipaddress.ip_network("127.0.0.1/32"),)
BODY = b"media bytes " * 100


class Stub(http.server.BaseHTTPRequestHandler):
    """Serves BODY at any path; subclasses misbehave. Every request is recorded."""

    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.server.requests.append((self.path, self.headers.get("Host")))
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, *args):
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, handler):
        self.connections = 0
        self.requests: list[tuple[str, str]] = []
        super().__init__(address, handler)

    def handle_error(self, request, client_address):
        pass            # a client that hung up on a trickle is what these tests do

    def get_request(self):
        request = super().get_request()
        self.connections += 1
        return request


@contextmanager
def stub(handler: type = Stub, host: str = "127.0.0.1", port: int = 0):
    """A stub HTTP server on (host, port); yields it (its URL base is `base(server)`)."""
    server = _Server((host, port), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def base(server) -> str:
    host, port = server.server_address[:2]
    return f"http://{host}:{port}"


def refused(url: str, folder: Path, timeout_s: float = 10, **kw) -> InputError:
    with pytest.raises(InputError) as info:
        download(url, "video", folder, 2**20, timeout_s, **kw)
    return info.value


@pytest.fixture(scope="module")
def counting_stub():
    """A server on 127.0.0.1 that counts connections: a refused URL must make none."""
    with stub() as server:
        yield server


# -- where a URL may go ----------------------------------------------------------------

INTERNAL = [
    ("127.0.0.1", "loopback"), ("localhost", "loopback"), ("[::1]", "loopback"),
    ("2130706433", "loopback"), ("0177.0.0.1", "loopback"), ("0x7f.1", "loopback"),
    ("127.1", "loopback"), ("[::ffff:127.0.0.1]", "loopback"), ("[::ffff:7f00:1]", "loopback"),
    ("[2002:7f00:1::1]", "loopback"), ("[64:ff9b::7f00:1]", "loopback"),
    ("0.0.0.0", "unspecified"), ("0", "unspecified"), ("[::]", "unspecified"),
    ("10.0.0.1", "private"), ("172.16.5.4", "private"), ("192.168.1.1", "private"),
    ("[::ffff:192.168.1.1]", "private"), ("[2002:c0a8:101::1]", "private"),
    ("[64:ff9b::a00:1]", "private"), ("[fc00::1]", "private"), ("[fd12:3456::1]", "private"),
    ("100.64.0.1", "carrier-grade NAT"), ("169.254.169.254", "link-local"),
    ("[fe80::1]", "link-local"), ("224.0.0.1", "multicast"), ("[ff02::1]", "multicast"),
    ("240.0.0.1", "reserved"), ("255.255.255.255", "reserved"), ("[::127.0.0.1]", "reserved"),
    ("[2001::1]", "private"),          # Teredo
]


@pytest.mark.parametrize(("host", "kind"), INTERNAL, ids=[h for h, _ in INTERNAL])
def test_internal_addresses_are_refused_before_any_connection(host, kind, counting_stub,
                                                              tmp_path):
    port = counting_stub.server_address[1]
    url = f"http://{host}:{port}/a.mp4"
    before = counting_stub.connections
    started = time.monotonic()
    error = refused(url, tmp_path / "in", timeout_s=5)
    assert (error.code, error.field) == ("input.url_not_allowed", "video")
    assert f"resolves to a{'n' if kind[0] in 'aeiou' else ''} {kind} address" in error.reason
    assert url in error.reason
    assert time.monotonic() - started < 1.0        # no connection was tried
    assert counting_stub.connections == before
    assert not (tmp_path / "in").exists() or not any((tmp_path / "in").iterdir())


@pytest.mark.parametrize("url", [
    "http://media.example.com@127.0.0.1:{port}/a.mp4", "http://127.0.0.1:{port}#@example.com/",
    "HTTP://LOCALHOST:{port}/a.mp4", "http://\uff4c\uff4f\uff43\uff41\uff4c\uff48\uff4f\uff53\uff54:{port}/",
    "http://0x7f000001:{port}/", "http://[0:0:0:0:0:ffff:7f00:1]:{port}/",
    "https://127.0.0.1:{port}/a.mp4"])
def test_url_tricks_do_not_hide_an_internal_host(url, counting_stub, tmp_path):
    before = counting_stub.connections
    error = refused(url.format(port=counting_stub.server_address[1]), tmp_path)
    assert error.code == "input.url_not_allowed" and "loopback" in error.reason
    assert counting_stub.connections == before


@pytest.mark.parametrize("address", ["8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8",
                                     "64:ff9b::808:808", "2002:808:808::1"])
def test_public_addresses_pass_the_check(address):
    assert address_refusal(address) is None


def test_allowed_networks_open_exactly_what_they_name(counting_stub, tmp_path):
    url = f"{base(counting_stub)}/clip.mp4"
    saved = download(url, "video", tmp_path, 2**20, 10, allowed=LOOPBACK_V4)
    assert saved.read_bytes() == BODY and saved.name == "video-clip.mp4"
    assert not list(tmp_path.glob("*.part"))
    # the IPv4-mapped form of an allowed address is allowed; other loopback stays closed
    assert address_refusal("::ffff:127.0.0.1", LOOPBACK_V4) is None
    assert address_refusal("127.0.0.2", LOOPBACK_V4) == "a loopback address"
    assert address_refusal("::1", LOOPBACK_V4) == "a loopback address"


def test_a_redirect_into_an_internal_address_is_refused(counting_stub, tmp_path):
    secret = f"{base(counting_stub)}/secret"

    class Redirect(Stub):
        def do_GET(self):
            self.server.requests.append((self.path, self.headers.get("Host")))
            hops = {"/to-loopback": secret, "/to-localhost": secret.replace("127.0.0.1",
                                                                            "localhost"),
                    "/relative": "/final", "/loop": "/loop"}
            if self.path in hops:
                self.send_response(302)
                self.send_header("Location", hops[self.path])
                self.send_header("Content-Length", "0")
                self.end_headers()
            else:
                super().do_GET()

    before = counting_stub.connections
    with stub(Redirect, host="127.0.0.2") as allowed_server:
        start = base(allowed_server)
        for path in ("/to-loopback", "/to-localhost"):
            error = refused(f"{start}{path}", tmp_path, allowed=ONLY_127_0_0_2)
            assert error.code == "input.url_not_allowed"
            assert "loopback" in error.reason
        saved = download(f"{start}/relative", "video", tmp_path, 2**20, 10,
                         allowed=ONLY_127_0_0_2)
        assert saved.read_bytes() == BODY
        error = refused(f"{start}/loop", tmp_path, allowed=ONLY_127_0_0_2)
        assert error.code == "input.download_failed" and "redirects" in error.reason
    assert counting_stub.connections == before


def test_a_redirect_away_from_http_is_refused(tmp_path):
    class Redirect(Stub):
        def do_GET(self):
            self.send_response(302)
            self.send_header("Location", "ftp://127.0.0.1/etc/passwd")
            self.send_header("Content-Length", "0")
            self.end_headers()

    with stub(Redirect) as server:
        error = refused(f"{base(server)}/a.mp4", tmp_path, allowed=LOOPBACK_V4)
    assert error.code == "input.download_failed"
    assert "redirect to ftp: refused" in error.reason
    assert list(tmp_path.iterdir()) == []


def test_a_name_is_resolved_once_and_connected_where_checked(tmp_path):
    """DNS rebinding: the second answer points inside; nothing may ask for it or use it."""
    with stub(host="127.0.0.2") as checked:
        port = checked.server_address[1]
        try:
            inside = stub(host="127.0.0.1", port=port).__enter__()
        except OSError:
            pytest.skip(f"port {port} is taken on 127.0.0.1")
        try:
            answers = []

            def rebinding(host, port):
                answers.append(host)
                address = "127.0.0.2" if len(answers) == 1 else "127.0.0.1"
                return [(socket.AF_INET, (address, port))]

            saved = download(f"http://media.example:{port}/clip.mp4", "video", tmp_path,
                             2**20, 10, allowed=ONLY_127_0_0_2, resolver=rebinding)
        finally:
            inside.shutdown()
            inside.server_close()
    assert saved.read_bytes() == BODY
    assert answers == ["media.example"]
    assert checked.requests == [("/clip.mp4", f"media.example:{port}")]
    assert inside.connections == 0


def test_a_name_with_one_internal_answer_is_refused(tmp_path):
    def mixed(host, port):
        return [(socket.AF_INET, ("93.184.216.34", port)), (socket.AF_INET, ("10.1.2.3", port))]

    error = refused("http://media.example/a.mp4", tmp_path, resolver=mixed)
    assert error.code == "input.url_not_allowed" and "private" in error.reason


# -- what an error may say --------------------------------------------------------------

class _CloseAtOnce(Stub):
    def do_GET(self):
        self.close_connection = True       # no answer at all


class _Silent(Stub):
    def do_GET(self):
        time.sleep(5)


@pytest.mark.parametrize("case", ["closed port", "no answer", "silent"])
def test_errors_for_an_allowed_host_say_no_more_than_could_not_download(case, tmp_path):
    if case == "closed port":
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            url = f"http://127.0.0.1:{probe.getsockname()[1]}/a.mp4"
        error = refused(url, tmp_path, allowed=LOOPBACK_V4)
    else:
        handler = _CloseAtOnce if case == "no answer" else _Silent
        with stub(handler) as server:
            url = f"{base(server)}/a.mp4"
            started = time.monotonic()
            error = refused(url, tmp_path, timeout_s=1, allowed=LOOPBACK_V4)
            assert time.monotonic() - started < 2
    assert error.reason == f"could not download {url}"
    assert list(tmp_path.iterdir()) == []


class _CutOff(Stub):
    """Promises 100000 bytes and sends 10 (the connection then closes), or with /chunked a
    chunked body that stops without its last chunk."""

    def do_GET(self):
        self.send_response(200)
        if self.path.endswith("/chunked"):
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"a\r\n0123456789\r\n")
        else:
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"0123456789")
        self.wfile.flush()
        self.close_connection = True


@pytest.mark.parametrize("path", ["/a.mp4", "/chunked"])
def test_a_download_that_breaks_off_is_refused_not_rendered(tmp_path, path):
    with stub(_CutOff) as server:
        error = refused(f"{base(server)}{path}", tmp_path, allowed=LOOPBACK_V4)
    assert (error.code, error.field) == ("input.download_failed", "video")
    assert "broke off" in error.reason
    assert list(tmp_path.iterdir()) == []          # nothing left that looks like an input


def test_https_is_verified_against_the_host_name_not_the_address(tmp_path):
    """The connection goes to the checked address, but TLS still names the host (SNI) and
    checks its certificate: a self-signed one is refused."""
    if not shutil.which("openssl"):
        pytest.skip("openssl NOT FOUND: the TLS check is NOT TESTED")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=media.example", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    seen: list[str | None] = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.sni_callback = lambda sock, name, ctx: seen.append(name)
    with socket.create_server(("127.0.0.2", 0)) as listener:
        port = listener.getsockname()[1]

        def serve():
            conn, _ = listener.accept()
            try:
                with context.wrap_socket(conn, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                pass        # the client refuses the certificate

        threading.Thread(target=serve, daemon=True).start()
        error = refused(f"https://media.example:{port}/a.mp4", tmp_path / "in",
                        allowed=ONLY_127_0_0_2,
                        resolver=lambda host, p: [(socket.AF_INET, ("127.0.0.2", p))])
    assert seen == ["media.example"]
    assert error.code == "input.download_failed" and "certificate" in error.reason


# -- how long it may take ---------------------------------------------------------------

class Trickle(Stub):
    """Declares 1 MB and sends one byte every 0.5 s."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(2**20))
        self.end_headers()
        for _ in range(120):
            self.wfile.write(b"x")
            self.wfile.flush()
            time.sleep(0.5)


class _StallAfterHeaders(Stub):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        self.wfile.flush()
        time.sleep(30)


class _Endless(Stub):
    """No length, never ends: /fast floods, /slow sends 10 bytes every 0.1 s."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Connection", "close")
        self.end_headers()
        slow = self.path.endswith("/slow")
        for _ in range(100_000):
            self.wfile.write(b"0123456789" if slow else b"x" * 65536)
            if slow:
                self.wfile.flush()
                time.sleep(0.1)


@pytest.mark.parametrize(("handler", "path", "code"), [
    (Trickle, "/a.mp4", "input.download_failed"),
    (_StallAfterHeaders, "/a.mp4", "input.download_failed"),
    (_Endless, "/slow", "input.download_failed"),
    (_Endless, "/fast", "input.too_large"),
], ids=["trickle", "stall-after-headers", "endless-slow", "endless-fast"])
def test_the_deadline_holds_whatever_the_sender_does(handler, path, code, tmp_path):
    with stub(handler) as server:
        started = time.monotonic()
        error = refused(f"{base(server)}{path}", tmp_path, timeout_s=2, allowed=LOOPBACK_V4)
        took = time.monotonic() - started
    assert (error.code, error.field) == (code, "video")
    if code == "input.download_failed":
        assert "took longer than 2 s" in error.reason
        assert 1.9 < took < 2.6, took
    else:
        assert took < 2.0, took
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("handler", [Trickle, _Silent], ids=["trickle", "silent"])
def test_a_stop_request_ends_a_download_at_once(handler, tmp_path):
    asked = threading.Event()
    with stub(handler) as server:
        threading.Timer(0.5, asked.set).start()
        started = time.monotonic()
        with pytest.raises(Canceled):
            download(f"{base(server)}/a.mp4", "video", tmp_path, 2**20, 60,
                     allowed=LOOPBACK_V4, should_stop=asked.is_set)
        took = time.monotonic() - started
    assert took < 1.0, took
    assert list(tmp_path.iterdir()) == []


def test_a_slow_name_server_holds_no_one(tmp_path):
    """The URL's owner runs its name server: an answer that takes its time meets the
    deadline, and a stop request, like a slow body does."""
    def slow(host, port):
        time.sleep(5)
        return [(socket.AF_INET, ("93.184.216.34", port))]

    started = time.monotonic()
    error = refused("http://slow.example/a.mp4", tmp_path, timeout_s=1, resolver=slow)
    assert error.reason == "could not download http://slow.example/a.mp4"
    assert time.monotonic() - started < 1.5
    asked = threading.Event()
    threading.Timer(0.3, asked.set).start()
    started = time.monotonic()
    with pytest.raises(Canceled):
        download("http://slow.example/a.mp4", "video", tmp_path, 2**20, 60, resolver=slow,
                 should_stop=asked.is_set)
    assert time.monotonic() - started < 1.0


def test_a_download_that_fills_the_disk_is_storage_full(tmp_path):
    """Out of space while saving is storage.full (retryable once space returns), not "could
    not download"; the partial file goes. The folder is a real 1 MB tmpfs."""
    from dhserve.errors import StorageFull

    folder = tmp_path / "small"
    big = b"x" * (3 * 2**20)

    class Big(Stub):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(big)))
            self.end_headers()
            self.wfile.write(big)

    with small_tmpfs(folder, "1m"), stub(Big) as server, pytest.raises(StorageFull) as full:
        download(f"{base(server)}/big.mp4", "video", folder, 2**30, 10, allowed=LOOPBACK_V4)
    assert full.value.code == "storage.full" and "video" in full.value.message
    assert list(folder.iterdir()) == []
