"""VM save images in ``vms.save_dir``, bound to the handover (or forcestop) that wrote them.

Files per domain NAME (DESIGN section 7):

- ``.NAME.save.tmp``        libvirt writes the image here;
- ``NAME.meta.json``        size, SHA-256, token (origin, id, epoch, DRBD data UUID), written atomically;
- ``NAME.save``             the committed image (renamed from the temporary name last);
- ``NAME.save.consumed``    claimed for a restore: never restored again;
- ``NAME.save.stale``       set aside: its token did not match, or the domain ran from disk since.

Invariants:
- Every read or write first checks, by device number, that ``save_dir`` is on
  the mounted replicated filesystem; an image is never written to, or read
  from, the root filesystem under an empty mountpoint.
- An image is restorable only when ``NAME.save`` and ``NAME.meta.json`` both
  exist and the image's size and checksum equal the metadata. The image is
  renamed to its final name only after its metadata is durable, so a crash
  at any point leaves either a complete, checkable pair or nothing restorable.
- Before a restore the image is renamed ``.consumed`` and the directory
  fsynced; only the consumed file is handed to libvirt. So an image is
  restored at most once, whatever crashes afterwards.
- Before a domain is cold-booted (or is seen running), any unconsumed image
  of it is renamed ``.stale`` first: its memory no longer matches the disk.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from .. import logsetup
from ..persist import atomic_write, fsync_dir
from .base import ImageToken, ResourceError, StartRequest
from .filesystem import Filesystem

log = logsetup.get("daemon.resources.saveimage")

FORMAT = 1


@dataclasses.dataclass(frozen=True)
class ImageInfo:
    """An unconsumed image found in save_dir; ``problem`` says why it cannot be used, if it cannot."""

    domain: str
    path: Path
    token: ImageToken | None
    size: int | None
    sha256: str | None
    written_wall: float | None
    problem: str | None
    ino: int | None = None  # the inode found, so a claim can prove it took the file that was checked


def restore_verdict(token: ImageToken, req: StartRequest) -> str | None:
    """None when an image with ``token`` may be restored by the start ``req``; otherwise why not."""
    if req.takeover == "handover":
        if token == req.image:
            return None
        return f"written for {token.origin} {token.id} (epoch {token.epoch}, data {token.data_uuid}), not for handover {req.image.id if req.image else '?'}"
    if token.origin != "forcestop":
        return f"a {token.origin} image ({token.id}) is never restored after a {req.takeover.replace('_', ' ')}"
    if req.data_uuid is None:
        return "no DRBD data UUID was given to check the forcestop image against"
    if token.data_uuid != req.data_uuid:
        return f"written when the data UUID was {token.data_uuid}; it is {req.data_uuid} now"
    return None


def _check_name(domain: str) -> None:
    if not domain or "/" in domain or domain.startswith(".") or "\0" in domain:
        raise ResourceError(f"domain name {domain!r} cannot be used as a save image name")


class ImageStore:
    def __init__(self, save_dir: Path, fs: Filesystem) -> None:
        self.save_dir = Path(save_dir)
        self.fs = fs

    def image(self, domain: str) -> Path:
        return self.save_dir / f"{domain}.save"

    def meta(self, domain: str) -> Path:
        return self.save_dir / f"{domain}.meta.json"

    def tmp(self, domain: str) -> Path:
        return self.save_dir / f".{domain}.save.tmp"

    def consumed(self, domain: str) -> Path:
        return self.save_dir / f"{domain}.save.consumed"

    def stale(self, domain: str) -> Path:
        return self.save_dir / f"{domain}.save.stale"

    # ------------------------------------------------------------------ the device check

    def check(self) -> int:
        """The replicated filesystem's device number; ResourceError unless save_dir is on it."""
        dev = self.fs.replicated_dev()
        if dev is None:
            raise ResourceError(f"{self.fs.cfg.device} is not mounted on {self.fs.mountpoint}; "
                                f"save_dir {self.save_dir} would be on another filesystem")
        try:
            st = os.stat(self.save_dir)
        except FileNotFoundError:
            raise ResourceError(f"save_dir {self.save_dir} does not exist") from None
        if st.st_dev != dev:
            raise ResourceError(f"save_dir {self.save_dir} is not on the replicated filesystem "
                                f"(device {os.major(st.st_dev)}:{os.minor(st.st_dev)}, expected {os.major(dev)}:{os.minor(dev)})")
        return dev

    def ensure_dir(self) -> int:
        """Create save_dir (mode 0700) inside the mounted replicated filesystem, then check it."""
        dev = self.fs.replicated_dev()
        if dev is None:
            return self.check()  # raises with the reason
        try:
            rel = self.save_dir.relative_to(self.fs.mountpoint)
        except ValueError:
            rel = None
        if rel is not None:
            path = self.fs.mountpoint
            for part in rel.parts:
                path = path / part
                with contextlib.suppress(FileExistsError):
                    path.mkdir(mode=0o700)
                if os.stat(path).st_dev != dev:
                    break  # check() below names the problem
        return self.check()

    # ------------------------------------------------------------------ writing

    def prepare(self, domain: str) -> Path:
        """Check save_dir and clear every earlier file of ``domain``; returns the temporary path for libvirt."""
        _check_name(domain)
        self.ensure_dir()
        removed = False
        for p in (self.tmp(domain), self.image(domain), self.meta(domain), self.consumed(domain), self.stale(domain)):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed = True
        if removed:
            fsync_dir(self.save_dir)
        return self.tmp(domain)

    def commit(self, domain: str, token: ImageToken, wall: float) -> ImageInfo:
        """Make the image libvirt wrote to the temporary path restorable."""
        dev = self.check()
        tmp = self.tmp(domain)
        try:
            if os.stat(tmp).st_dev != dev:
                raise ResourceError(f"{tmp} is not on the replicated filesystem")
            size, digest = _fsync_and_hash(tmp)
        except FileNotFoundError:
            raise ResourceError(f"libvirt reported the save done but {tmp} does not exist") from None
        meta = {"format": FORMAT, "domain": domain, "image": self.image(domain).name, "size": size,
                "sha256": digest, "token": token.to_json(), "written_wall": wall}
        atomic_write(self.meta(domain), (json.dumps(meta, sort_keys=True, indent=1) + "\n").encode())
        os.rename(tmp, self.image(domain))
        fsync_dir(self.save_dir)
        return ImageInfo(domain, self.image(domain), token, size, digest, wall, None)

    # ------------------------------------------------------------------ reading

    def find(self, domain: str) -> ImageInfo | None:
        """The unconsumed image of ``domain`` with its metadata, or None when there is none."""
        _check_name(domain)
        self.check()
        path = self.image(domain)
        try:
            ino = os.stat(path).st_ino
        except FileNotFoundError:
            return None
        try:
            meta: Any = json.loads(self.meta(domain).read_bytes())
        except FileNotFoundError:
            return ImageInfo(domain, path, None, None, None, None, "its metadata file is missing")
        except (OSError, ValueError) as e:
            return ImageInfo(domain, path, None, None, None, None, f"its metadata file is unreadable: {e}")
        try:
            if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("domain") != domain:
                raise ValueError("wrong format or domain")
            token = ImageToken.from_json(meta.get("token"))
            size, digest, wall = meta["size"], meta["sha256"], meta.get("written_wall")
            if not isinstance(size, int) or not isinstance(digest, str):
                raise ValueError("size or checksum missing")
        except (ValueError, KeyError) as e:
            return ImageInfo(domain, path, None, None, None, None, f"its metadata is invalid: {e}")
        return ImageInfo(domain, path, token, size, digest, wall if isinstance(wall, (int, float)) else None, None, ino)

    def verify(self, info: ImageInfo) -> str | None:
        """None when the image on disk has the size and checksum of its metadata; otherwise what is wrong."""
        if info.problem:
            return info.problem
        try:
            st = os.stat(info.path)
            if st.st_ino != info.ino:
                return "it was replaced after it was found"
            actual = st.st_size
            if actual != info.size:
                return f"its size is {actual} bytes, the metadata says {info.size} (truncated or overwritten)"
            if _hash(info.path) != info.sha256:
                return "its checksum does not match the metadata (corrupted)"
        except OSError as e:
            return f"it cannot be read: {e.strerror}"
        return None

    def claim(self, info: ImageInfo) -> Path:
        """Rename the image ``.consumed`` (durably) and return that path: it can never be claimed again."""
        self.check()
        consumed = self.consumed(info.domain)
        os.rename(info.path, consumed)
        fsync_dir(self.save_dir)
        after = os.stat(consumed)
        if (after.st_ino, after.st_size) != (info.ino, info.size):
            raise ResourceError(f"{consumed} is not the image that was checked; not restoring it")
        return consumed

    def invalidate(self, domain: str, why: str) -> bool:
        """Set the unconsumed image of ``domain`` aside as ``.stale``; returns whether there was one."""
        self.check()
        try:
            os.rename(self.image(domain), self.stale(domain))
        except FileNotFoundError:
            return False
        fsync_dir(self.save_dir)
        log.warning("save image of %s set aside as %s: %s", domain, self.stale(domain).name, why)
        return True

    def cleanup(self, domain: str) -> None:
        """Remove a consumed image and its metadata after a restore."""
        for p in (self.consumed(domain), self.meta(domain)):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


def _hash(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _fsync_and_hash(path: Path) -> tuple[int, str]:
    with open(path, "rb") as f:
        os.fsync(f.fileno())
        size = os.fstat(f.fileno()).st_size
        return size, hashlib.file_digest(f, "sha256").hexdigest()
