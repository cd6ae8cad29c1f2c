"""The kernel's hash functions as IPVS uses them, bit for bit.

- `hash_32`: include/linux/hash.h `hash_32()` (generic, GOLDEN_RATIO_32 = 0x61C88647), used by
  ip_vs_sh.c `ip_vs_sh_hashkey()` and ip_vs_dh.c `ip_vs_dh_hashkey()`.
- `hsiphash`: lib/siphash.c `__hsiphash_unaligned()` on a 64-bit kernel, where "HalfSipHash1-3"
  is really SipHash-1-3 with a 128-bit key, truncated to u32. Used by ip_vs_mh.c
  `ip_vs_mh_hashkey()` with two fixed keys (`generate_hash_secret()`).
- `addr_fold`: the IPv6 fold the schedulers share (`ip6[0]^ip6[1]^ip6[2]^ip6[3]`), returned in
  host order as `ntohl(addr_fold)` yields it.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

GOLDEN_RATIO_32 = 0x61C88647
_U32 = 0xFFFFFFFF
_U64 = 0xFFFFFFFFFFFFFFFF


def hash_32(val: int, bits: int) -> int:
    """include/linux/hash.h: `(u32)(val * GOLDEN_RATIO_32) >> (32 - bits)`."""
    return ((val * GOLDEN_RATIO_32) & _U32) >> (32 - bits)


def addr_fold(addr: IPv4Address | IPv6Address) -> int:
    """`ntohl(addr_fold)`: the IPv4 address as a host integer, or the XOR of an IPv6 address's four
    32-bit words (XOR commutes with the byte swap, so folding then ntohl equals ntohl then folding)."""
    value = int(addr)
    if addr.version == 4:
        return value
    return ((value >> 96) ^ (value >> 64) ^ (value >> 32) ^ value) & _U32


def _rotl(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & _U64


def _sipround(v0: int, v1: int, v2: int, v3: int) -> tuple[int, int, int, int]:
    v0 = (v0 + v1) & _U64; v1 = _rotl(v1, 13); v1 ^= v0; v0 = _rotl(v0, 32)  # noqa: E702
    v2 = (v2 + v3) & _U64; v3 = _rotl(v3, 16); v3 ^= v2  # noqa: E702
    v0 = (v0 + v3) & _U64; v3 = _rotl(v3, 21); v3 ^= v0  # noqa: E702
    v2 = (v2 + v1) & _U64; v1 = _rotl(v1, 17); v1 ^= v2; v2 = _rotl(v2, 32)  # noqa: E702
    return v0, v1, v2, v3


def hsiphash(data: bytes, key: tuple[int, int]) -> int:
    """lib/siphash.c `__hsiphash_unaligned()` for BITS_PER_LONG == 64: SipHash-1-3 -> u32.

    `key` is `hsiphash_key_t.key[0..1]` (two unsigned longs)."""
    k0, k1 = key[0] & _U64, key[1] & _U64
    v0 = 0x736F6D6570736575 ^ k0
    v1 = 0x646F72616E646F6D ^ k1
    v2 = 0x6C7967656E657261 ^ k0
    v3 = 0x7465646279746573 ^ k1
    length = len(data)
    b = (length << 56) & _U64
    end = length - (length % 8)
    for off in range(0, end, 8):
        m = int.from_bytes(data[off:off + 8], "little")
        v3 ^= m
        v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
        v0 ^= m
    b |= int.from_bytes(data[end:], "little")
    v3 ^= b
    v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
    v0 ^= b
    v2 ^= 0xFF
    for _ in range(3):
        v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
    return (v0 ^ v1 ^ v2 ^ v3) & _U32


def hsiphash_u32(value: int, key: tuple[int, int]) -> int:
    """`hsiphash(&v, sizeof(v), key)` for an `unsigned int v` on little-endian x86-64."""
    return hsiphash((value & _U32).to_bytes(4, "little"), key)
