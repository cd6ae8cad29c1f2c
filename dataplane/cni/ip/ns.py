"""Moving the calling thread between network namespaces (setns), by path or descriptor."""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Iterator

from dataplane.cni.spec.errors import PluginError

CLONE_NEWNET = 0x40000000
NS_GET_NSTYPE = 0xB703  # _IO(0xb7, 0x3)
THREAD_NETNS = "/proc/thread-self/ns/net"

_libc = ctypes.CDLL(None, use_errno=True)


class NetnsGone(PluginError):
    """CNI_NETNS names no namespace (any more): DEL treats this as success."""


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def open_netns(path: str) -> int:
    """Open a namespace file, failing like the reference's ns.GetNS does."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NetnsGone(f'failed to open netns "{path}": failed to Statfs "{path}": '
                        "no such file or directory") from None
    except OSError as exc:
        raise PluginError(f'failed to open netns "{path}": {exc.strerror}') from None
    if not _is_nsfs(fd):
        os.close(fd)
        raise PluginError(f'failed to open netns "{path}": "{path}" is not a network namespace')
    return fd


def _is_nsfs(fd: int) -> bool:
    """True for a network namespace file (ioctl NS_GET_NSTYPE answers CLONE_NEWNET)."""
    import fcntl

    try:
        return fcntl.ioctl(fd, NS_GET_NSTYPE) == CLONE_NEWNET
    except OSError:
        return False


def own_netns() -> int:
    return os.open(THREAD_NETNS, os.O_RDONLY | os.O_CLOEXEC)


@contextlib.contextmanager
def entered(fd: int) -> Iterator[None]:
    """Run the block with the calling thread inside the namespace `fd`, then come back."""
    back = own_netns()
    try:
        _setns(fd)
        try:
            yield
        finally:
            _setns(back)
    finally:
        os.close(back)


@contextlib.contextmanager
def netns_path(path: str) -> Iterator[int]:
    """Open `path` as a namespace and enter it for the block; yields the host namespace's fd."""
    fd = open_netns(path)
    host = own_netns()
    try:
        with entered(fd):
            yield host
    finally:
        os.close(fd)
        os.close(host)

