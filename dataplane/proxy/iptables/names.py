"""kube-proxy's iptables chain names: base32(sha256(name + protocol [+ endpoint]))[:16] after a prefix.

"IPTables Chain Names must be <= 28 chars long" (proxier.go): KUBE-SEP- plus 16 characters is 25.
The hash input is ServicePortName.String() ("ns/svc:port", ":port" only for named ports), the
lower-case protocol and, for endpoint chains, "ip:port" (IPv6 in brackets).
"""

from __future__ import annotations

import base64
import hashlib
from functools import lru_cache

SVC = "KUBE-SVC-"
SVL = "KUBE-SVL-"
EXT = "KUBE-EXT-"
FW = "KUBE-FW-"
SEP = "KUBE-SEP-"
SERVICE_CHAIN_PREFIXES = (SVC, SVL, EXT, FW, SEP)


_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_PAIRS = [_ALPHABET[i >> 5] + _ALPHABET[i & 31] for i in range(1024)]


def _hash16(text: str) -> str:
    """The first 16 characters of base32(sha256(text)): exactly the first 10 digest bytes (80 bits),
    encoded 10 bits at a time (base64.b32encode of the whole digest is 5x slower)."""
    n = int.from_bytes(hashlib.sha256(text.encode()).digest()[:10], "big")
    p = _PAIRS
    return (p[n >> 70] + p[(n >> 60) & 1023] + p[(n >> 50) & 1023] + p[(n >> 40) & 1023]
            + p[(n >> 30) & 1023] + p[(n >> 20) & 1023] + p[(n >> 10) & 1023] + p[n & 1023])


def _hash16_reference(text: str) -> str:
    """Literally kube-proxy's encoding, for tests."""
    return base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()[:16]


@lru_cache(maxsize=1 << 16)
def port_proto_hash(service_port_name: str, protocol: str) -> str:
    """portProtoHash: shared by the SVC, SVL, EXT and FW chains of one service port."""
    return _hash16(service_port_name + protocol.lower())


def cluster_chain(service_port_name: str, protocol: str) -> str:
    return SVC + port_proto_hash(service_port_name, protocol)


def local_chain(service_port_name: str, protocol: str) -> str:
    return SVL + port_proto_hash(service_port_name, protocol)


def external_chain(service_port_name: str, protocol: str) -> str:
    return EXT + port_proto_hash(service_port_name, protocol)


def firewall_chain(service_port_name: str, protocol: str) -> str:
    return FW + port_proto_hash(service_port_name, protocol)


@lru_cache(maxsize=1 << 20)
def endpoint_chain(service_port_name: str, protocol: str, endpoint: str) -> str:
    """servicePortEndpointChainName; `endpoint` is "ip:port" as net.JoinHostPort prints it.

    Cached: kube-proxy too computes it once per endpoint (newEndpointInfo), not on every sync."""
    return SEP + _hash16(service_port_name + protocol.lower() + endpoint)


def is_service_chain(chain: str) -> bool:
    return chain.startswith(SERVICE_CHAIN_PREFIXES)
