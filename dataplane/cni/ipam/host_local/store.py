"""The lease directory, byte-compatible with the reference's disk backend.

`<dataDir>/<network>/` holds one file per leased IP (named by the IP, created exclusively,
content `containerID\\r\\nifname`), `last_reserved_ip.<rangeset index>` and an empty `lock`
file that every process holds with flock(LOCK_EX) around each change. A store written by the
Go plugin is continued by ours and the other way round.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import ipaddress
import os
from collections.abc import Iterator

from dataplane.cni.spec.errors import PluginError
from dataplane.cni.spec.types import IPAddress

LINE_BREAK = "\r\n"
LAST_IP_PREFIX = "last_reserved_ip."
LOCK_NAME = "lock"


class DiskStore:
    def __init__(self, network: str, data_dir: str) -> None:
        self.dir = os.path.join(data_dir, network)
        try:
            os.makedirs(self.dir, mode=0o755, exist_ok=True)
        except OSError as exc:
            raise PluginError(f"failed to create data dir {self.dir}: {exc.strerror}") from None

    @contextlib.contextmanager
    def locked(self) -> Iterator["DiskStore"]:
        """Hold the network's flock; released by the kernel even if we are killed."""
        fd = os.open(os.path.join(self.dir, LOCK_NAME), os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o750)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield self
        finally:
            os.close(fd)  # closing the last descriptor drops the lock

    # -- leases -------------------------------------------------------------------------------
    def reserve(self, container_id: str, ifname: str, ip: IPAddress, range_id: int) -> bool:
        """Create the lease file exclusively; False if the IP is taken."""
        path = os.path.join(self.dir, str(ip))
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, (container_id + LINE_BREAK + ifname).strip().encode())
        except OSError:
            os.close(fd)
            os.unlink(path)
            raise
        os.close(fd)
        self._write_atomic(LAST_IP_PREFIX + str(range_id), str(ip))
        return True

    def last_reserved_ip(self, range_id: int) -> IPAddress | None:
        try:
            with open(os.path.join(self.dir, LAST_IP_PREFIX + str(range_id)), encoding="ascii") as fh:
                return ipaddress.ip_address(fh.read().strip())
        except (OSError, ValueError):
            return None

    def leases(self) -> Iterator[tuple[IPAddress, str, str]]:
        """(ip, container id, ifname) of every lease file; legacy ID-only files give ifname ''."""
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return
        for name in names:
            try:
                ip = ipaddress.ip_address(name)
            except ValueError:
                continue
            try:
                with open(os.path.join(self.dir, name), "rb") as fh:
                    content = fh.read().decode(errors="replace").strip()
            except (FileNotFoundError, IsADirectoryError):
                continue
            cid, _, ifname = content.partition(LINE_BREAK)
            yield ip, cid.strip(), ifname.strip()

    def ips_of(self, container_id: str, ifname: str) -> list[IPAddress]:
        return [ip for ip, cid, ifn in self.leases() if _matches(cid, ifn, container_id, ifname)]

    def release(self, ip: IPAddress) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.dir, str(ip)))

    def release_by_id(self, container_id: str, ifname: str) -> list[IPAddress]:
        released = self.ips_of(container_id, ifname)
        for ip in released:
            self.release(ip)
        return released

    def _write_atomic(self, name: str, text: str) -> None:
        """Write via a temp file + rename, so a kill never leaves a torn last_reserved_ip.

        Callers hold the lock, so one fixed temp name suffices (a killed writer's leftover is
        simply overwritten by the next one).
        """
        tmp = os.path.join(self.dir, f".{name}.tmp")
        try:
            with open(tmp, "w", encoding="ascii") as fh:
                fh.write(text)
            os.chmod(tmp, 0o644)
            os.replace(tmp, os.path.join(self.dir, name))
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            if exc.errno != errno.ENOENT:
                raise


def _matches(cid: str, ifn: str, container_id: str, ifname: str) -> bool:
    """The reference matches `id\\r\\nifname`, or just `id` for files written before ifnames."""
    return cid == container_id and (ifn == ifname or ifn == "")
