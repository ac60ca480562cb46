"""The optional API key: with DHSERVE_API_KEY set, every route but /livez and the web page's
own files (which hold no data) needs `Authorization: Bearer <key>`.

HeyGem's clients cannot send a key, so /easy/* is also open without it to the networks in
DHSERVE_HEYGEM_NETWORKS (default: this machine). Elsewhere, /easy answers a HeyGem envelope
that its clients show as a failure, never a 401 problem document they cannot read."""

from __future__ import annotations

import hmac
import ipaddress

from flask import Flask, Response, request

from dhserve.api.heygem import refused_envelope
from dhserve.api.problems import problem_for
from dhserve.api.ui import OPEN_ENDPOINTS as UI_ENDPOINTS
from dhserve.config import Settings
from dhserve.errors import AccessRefused

OPEN_ENDPOINTS = frozenset({"health.livez", *UI_ENDPOINTS})
# Headers a reverse proxy adds: the peer is then the proxy, not the client, and the client
# may be anywhere. Such a request is never exempt by its address.
PROXY_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Real-IP")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def install(app: Flask, settings: Settings) -> None:
    if not settings.api_key:
        return
    expected = settings.api_key.encode()
    heygem_networks = settings.heygem_network_list

    @app.before_request
    def _require_key() -> Response | None:
        if request.endpoint in OPEN_ENDPOINTS:
            return None
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(),
                                                              expected):
            return None
        if request.path.startswith("/easy/"):       # routing errors included
            if heygem_client_allowed(request.remote_addr, heygem_networks,
                                     any(h in request.headers for h in PROXY_HEADERS)):
                return None
            return refused_envelope(AccessRefused(
                f"this server needs an API key for /easy from "
                f"{request.remote_addr or 'this client'}; HeyGem clients are served without "
                "one only from the networks its operator allows (DHSERVE_HEYGEM_NETWORKS)"))
        return problem_for(AccessRefused("this server needs an API key: send "
                                         "'Authorization: Bearer <key>'"))


def heygem_client_allowed(remote_addr: str | None, networks: tuple[Network, ...],
                          proxied: bool) -> bool:
    """Whether a peer at `remote_addr` may use /easy/* without the key."""
    if proxied or not remote_addr or not networks:
        return False
    try:
        address = ipaddress.ip_address(remote_addr.split("%")[0])   # fe80::1%eth0
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped                    # a dual-stack socket's IPv4 peer
    return any(address.version == net.version and address in net for net in networks)
