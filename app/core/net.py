"""Client addresses: the peer, or the client named in X-Forwarded-For by a trusted proxy."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(spec: str) -> tuple[IPNetwork, ...]:
    """``"10.0.0.1, 172.16.0.0/12"`` -> networks; ValueError names a bad entry."""
    networks = []
    for part in spec.replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        try:
            networks.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ValueError(f"not an IP address or network: {part!r}") from None
    return tuple(networks)


def _trusted(address: str, proxies: Sequence[IPNetwork]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in proxies)


def client_address(
    peer: str | None, forwarded_for: Sequence[str], proxies: Sequence[IPNetwork]
) -> str:
    """The address a request came from. ``X-Forwarded-For`` is read only when the peer is a
    trusted proxy, and only as far back as the hops are trusted proxies: from the right, the
    first address that is not a trusted proxy is the client (anything left of it could have
    been written by the client itself)."""
    address = peer or "unknown"
    if not proxies or not _trusted(address, proxies):
        return address
    hops = [h.strip() for value in forwarded_for for h in value.split(",")]
    for hop in reversed(hops):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            break
        address = hop
        if not _trusted(address, proxies):
            break
    return address
