"""The task sandbox: what a task process may touch, applied in the child before any task code.

Mechanism only; the supervisor decides the mode (``METASTREAM_SANDBOX``) and builds a
:class:`Plan` per task. The child (cold: first thing in ``runner.task``'s ``main``; warm: the
same call, in the zygote's fork) applies it with :func:`apply` and refuses to run if it can't.

- ``uid`` (the supervisor runs as root): the task gets a uid/gid of its own from a range, its
  directories are chowned to it (0700), everything else under METASTREAM_HOME stays root's
  0700/0600. Landlock is applied on top, for signal and abstract-socket scoping.
- ``landlock`` (not root): the task runs as the user, confined by Landlock to read-only system
  and interpreter paths and its own directories; signals and abstract sockets are scoped.
- both: no_new_privs, resource limits, umask 077, its own session (already).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import resource
import subprocess
import sys
import urllib.parse
from pathlib import Path

import msgspec

from core.harden import harden_trusted as harden_trusted  # re-exported for the mains
from runner import landlock

log = logging.getLogger("metastream.sandbox")
PLAN_ENV = "METASTREAM_SANDBOX_PLAN"
PR_SET_NO_NEW_PRIVS = 38
# Read-only for every task: the system and devices; the interpreter's paths are added.
SYSTEM_PATHS = ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/etc", "/proc", "/sys")
DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")


class SandboxError(RuntimeError):
    """The sandbox could not be applied: the task must not run."""


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    """One task process's sandbox, decided by the supervisor."""

    mode: str  # "uid", "landlock" or "off"
    uid: int | None = None
    gid: int | None = None
    read_only: tuple[str, ...] = ()
    read_write: tuple[str, ...] = ()
    # ``uid`` mode: paths the task's uid could not reach (under a 0700 directory: an
    # interpreter in /root/.pyenv, METASTREAM_HOME, the bus socket); the task sees them, and
    # nothing else of those directories, through a mount namespace of its own.
    reach: tuple[str, ...] = ()
    nofile: int = 0
    nproc: int = 0
    address_space_mb: int = 0
    cpu_seconds: int = 0
    # METASTREAM_TASK_NETWORK=restricted: the only TCP ports it may connect to (Landlock
    # ABI >= 4; a sandbox that cannot enforce them refuses to run). None: any.
    tcp_ports: tuple[int, ...] | None = None


# --- in the trusted processes ------------------------------------------------------------


_DEFAULT_PORTS = {"http": 80, "https": 443, "postgresql": 5432, "postgres": 5432}


def tcp_port(url: str) -> int | None:
    """The TCP port ``url`` connects to (its scheme's default if none), None if not TCP."""
    if not url:
        return None
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.split("+")[0]
    if scheme not in (*_DEFAULT_PORTS, "tcp"):
        return None
    try:
        port = parts.port
    except ValueError:
        return None
    return port if port is not None else _DEFAULT_PORTS.get(scheme)


def _prctl(option: int, value: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}) failed")


def mode_problem(mode: str) -> str | None:
    """Why ``mode`` cannot work on this machine (checked once, at the supervisor's start)."""
    if mode == "uid" and os.geteuid() != 0:
        return "METASTREAM_SANDBOX=uid needs root (a uid per task); use landlock or auto"
    if mode == "landlock" and landlock.abi() < 1:
        return (
            "METASTREAM_SANDBOX=landlock: this kernel has no Landlock; "
            "METASTREAM_SANDBOX=off runs tasks unconfined (say so explicitly)"
        )
    return None


def interpreter_paths(home: Path) -> list[str]:
    """Read-only paths a task's interpreter needs: system dirs, prefixes, sys.path.

    ``home`` (METASTREAM_HOME) is never among them, even when it lies inside one of them
    (``./var`` in a checkout on sys.path): such an entry is opened up piece by piece around it.
    """
    roots = {*SYSTEM_PATHS, sys.prefix, sys.base_prefix, sys.exec_prefix}
    roots.add(str(Path(sys.executable).resolve().parent.parent))
    roots.update(p for p in sys.path if p and os.path.isdir(p))
    home = home.resolve()
    out: list[str] = []
    for root in sorted({str(Path(r).resolve()) for r in roots}):
        out.extend(_around(Path(root), home))
    found = sorted(set(out))
    # Only the outermost of nested paths: a rule (or a bind) covers what is beneath it.
    return [p for p in found if not any(p.startswith(q + "/") for q in found if q != p)]


def _around(root: Path, excluded: Path) -> list[str]:
    """``root``, or, if ``excluded`` is inside it, everything in it but the way to ``excluded``."""
    if root.is_relative_to(excluded):
        return []  # inside the excluded tree (or it)
    if not excluded.is_relative_to(root):
        return [str(root)]
    found: list[str] = []
    try:
        entries = list(root.iterdir())
    except OSError:
        return found
    for entry in entries:
        if entry == excluded:
            continue
        if excluded.is_relative_to(entry):
            found.extend(_around(entry, excluded))
        else:
            found.append(str(entry))
    return found


def unreachable(paths: list[str]) -> list[str]:
    """Those of ``paths`` below a directory other users may not search (``uid`` mode needs them)."""
    return [p for p in paths if _blocker(Path(p)) is not None]


def _blocker(path: Path) -> Path | None:
    """The highest directory on the way to ``path`` that others may not search."""
    for parent in reversed(path.parents):
        try:
            if not os.stat(parent).st_mode & 0o001:
                return parent
        except OSError:
            return None
    return None


class UidPool:
    """Per-task uids from ``[base, base + count)``; a uid is reused only after its task ended."""

    def __init__(self, base: int, count: int) -> None:
        self.base, self.count = base, count
        self._used: set[int] = set()

    def acquire(self) -> int:
        for uid in range(self.base, self.base + self.count):
            if uid not in self._used:
                self._used.add(uid)
                return uid
        raise SandboxError(f"all {self.count} task uids are in use")

    def reserve(self, uid: int) -> None:
        if self.base <= uid < self.base + self.count:
            self._used.add(uid)

    def release(self, uid: int | None) -> None:
        self._used.discard(uid)


def task_dirs(workspace: Path, event_dir: Path | None, tmp: Path) -> list[Path]:
    return [d for d in (workspace, event_dir, tmp) if d is not None]


def prepare(plan: Plan, dirs: list[Path]) -> None:
    """Create the task's own directories (0700) and give them to its uid (``uid`` mode)."""
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(d, 0o700)
        if plan.mode == "uid" and plan.uid is not None and plan.gid is not None:
            _chown_tree(d, plan.uid, plan.gid)


def release(plan: Plan, dirs: list[Path]) -> None:
    """After the task: kill whatever still runs as its uid, take its directories back.

    The uid goes back to the pool; the next task to get it must find nothing of this one.
    """
    if plan.mode != "uid" or plan.uid is None:
        return
    # kill(-1) as that uid reaches every process of the uid, and only those (even one that
    # left the task's process group and was re-parented elsewhere).
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(
            [sys.executable, "-I", "-S", "-c", "import os, signal; os.kill(-1, signal.SIGKILL)"],
            user=plan.uid,
            group=plan.gid,
            extra_groups=[],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=5,
            check=False,
        )
    for d in dirs:
        if d.exists():
            _chown_tree(d, os.getuid(), os.getgid())


def _chown_tree(top: Path, uid: int, gid: int) -> None:
    os.lchown(top, uid, gid)
    for root, dirnames, filenames in os.walk(top, followlinks=False):
        for name in (*dirnames, *filenames):
            with contextlib.suppress(FileNotFoundError):
                os.lchown(os.path.join(root, name), uid, gid)


# --- in the task process -----------------------------------------------------------------


def apply_from_env() -> Plan | None:
    """Apply the plan the supervisor put in the environment (first thing a task does)."""
    raw = os.environ.pop(PLAN_ENV, None)
    if raw is None:
        return None
    try:
        plan = msgspec.json.decode(raw, type=Plan)
    except msgspec.DecodeError as exc:
        raise SandboxError(f"bad {PLAN_ENV}: {exc}") from exc
    apply(plan)
    return plan


def apply(plan: Plan) -> None:
    """Confine this process as ``plan`` says; raise :class:`SandboxError` if any part fails."""
    os.umask(0o077)
    if plan.mode == "off":
        return
    try:
        _prctl(PR_SET_NO_NEW_PRIVS, 1)
        _limits(plan)
        if plan.mode == "uid":
            if plan.uid is None or plan.gid is None:
                raise SandboxError("uid mode without a uid")
            if plan.reach:
                _reach(plan.reach)
            os.setgroups([])
            os.setresgid(plan.gid, plan.gid, plan.gid)
            os.setresuid(plan.uid, plan.uid, plan.uid)
        elif plan.mode != "landlock":
            raise SandboxError(f"unknown sandbox mode {plan.mode!r}")
        elif os.geteuid() == 0:
            _drop_capabilities()  # root confined by Landlock: no root powers either
        try:
            landlock.restrict(plan.read_only, plan.read_write, plan.tcp_ports)
        except landlock.LandlockError:
            if plan.mode == "landlock" or plan.tcp_ports is not None:
                raise  # no Landlock, no confinement: refuse rather than run open
            log.warning("Landlock unavailable: the task is confined by its uid only")
    except OSError as exc:
        raise SandboxError(f"could not apply the {plan.mode} sandbox: {exc}") from exc


_PR_CAPBSET_DROP, _PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL = 24, 47, 4
_CAP_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _drop_capabilities() -> None:
    """Empty the bounding, ambient, effective, permitted and inheritable capability sets."""
    libc = ctypes.CDLL(None, use_errno=True)
    cap = 0
    while libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) == 0:
        cap += 1  # until EINVAL: past the kernel's last capability
    libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    data = (_CapData * 2)()
    if libc.capset(ctypes.byref(_CapHeader(_CAP_VERSION_3, 0)), data) != 0:
        raise OSError(ctypes.get_errno(), "capset failed")


_CLONE_NEWNS = 0x00020000
_MS_BIND, _MS_REC, _MS_PRIVATE, _MS_NOSUID, _MS_NODEV = 0x1000, 0x4000, 0x40000, 0x2, 0x4


def _reach(paths: tuple[str, ...]) -> None:
    """In a mount namespace of our own: cover each blocking directory with an empty tmpfs
    (0711) and bind just the needed paths back into it. The rest of that directory (say
    /root) is then invisible to the task, and nothing changes outside this process."""
    libc = ctypes.CDLL(None, use_errno=True)

    def check(rc: int, what: str) -> None:
        if rc != 0:
            raise OSError(ctypes.get_errno(), what)

    check(libc.unshare(_CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    check(libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None), "mount --make-rprivate /")
    held = {p: os.open(p, os.O_PATH | os.O_CLOEXEC) for p in paths}  # before covering them
    blockers = sorted({b for p in paths if (b := _blocker(Path(p))) is not None})
    covered: list[Path] = []
    for b in blockers:
        if any(b.is_relative_to(c) for c in covered):
            continue
        opts = b"mode=0711,size=1m"
        check(libc.mount(b"tmpfs", str(b).encode(), b"tmpfs", _MS_NOSUID | _MS_NODEV, opts), str(b))
        covered.append(b)
    old = os.umask(0o022)
    try:
        for p, fd in held.items():
            if os.path.isdir(f"/proc/self/fd/{fd}"):
                os.makedirs(p, exist_ok=True)
            else:  # a file (the bus socket): bind it onto an empty file
                os.makedirs(os.path.dirname(p), exist_ok=True)
                os.close(os.open(p, os.O_CREAT | os.O_WRONLY, 0o600))
            src = f"/proc/self/fd/{fd}".encode()
            check(libc.mount(src, p.encode(), None, _MS_BIND | _MS_REC, None), f"bind {p}")
            os.close(fd)
    finally:
        os.umask(old)


def threads_now() -> int:
    """Every thread on the machine now (/proc/loadavg): an upper bound of any uid's count.

    Counting one uid's threads exactly means reading every /proc/<pid>/status: 100+ ms on a
    loaded machine, too slow for a task's start. This is one small read.
    """
    with open("/proc/loadavg") as f:
        return int(f.read().split()[3].split("/")[1])


def _limits(plan: Plan) -> None:
    mb = 1024 * 1024
    wanted = [
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_NOFILE, plan.nofile),
        (resource.RLIMIT_AS, plan.address_space_mb * mb),
        (resource.RLIMIT_CPU, plan.cpu_seconds),
    ]
    if plan.mode == "uid":
        wanted.append((resource.RLIMIT_NPROC, plan.nproc))  # counts the task's own uid only
    elif plan.nproc > 0 and os.geteuid() != 0:
        # One uid shared with the user (landlock mode): the kernel counts every thread of that
        # uid, the user's own included, against the limit. The task may add ``nproc`` threads
        # to at most what the whole machine runs now: a fork bomb stops there. (Root is
        # exempt from RLIMIT_NPROC, so nothing to do there.)
        wanted.append((resource.RLIMIT_NPROC, threads_now() + plan.nproc))
    for which, value in wanted:
        if value <= 0 and which != resource.RLIMIT_CORE:
            continue
        _soft, hard = resource.getrlimit(which)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        resource.setrlimit(which, (value, value))
