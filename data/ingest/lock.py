"""One ingest run at a time per output folder: an exclusive lock on OUT/.lock.

The lock is an flock(2) on the file, which the kernel releases when its holder dies however it dies, so a lock left
by a killed run is simply taken over; the file holds the holder's process id for the message. Where the file system
has no flock, a process id that is no longer alive counts as a stale lock.
"""
import errno
import fcntl
import os

from data.errors import InputError


class OutBusy(InputError):
    """Another run holds OUT's lock."""


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


class OutLock:
    def __init__(self, out):
        self.path = os.path.join(out, ".lock")
        self.fd = None

    def _holder(self):
        try:
            os.lseek(self.fd, 0, os.SEEK_SET)
            return int(os.read(self.fd, 32).decode().strip() or 0)
        except (OSError, ValueError):
            return 0

    def acquire(self):
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise InputError(f"--out {os.path.dirname(self.path)}: cannot write there ({e.strerror or e})") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = self._holder()
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN) or (holder and holder != os.getpid()
                                                                   and _pid_alive(holder)):
                self.release()
                raise OutBusy(f"{self.path}: another download_images.py run (pid {holder or '?'}) is writing to this "
                              f"--out; wait for it to end or use another --out") from None
            # No flock on this file system, and no live holder: take the lock over.
        os.ftruncate(self.fd, 0)
        os.lseek(self.fd, 0, os.SEEK_SET)
        os.write(self.fd, f"{os.getpid()}\n".encode())
        return self

    def release(self):
        if self.fd is not None:
            os.close(self.fd)  # also releases the flock
            self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
