"""A minimal Landlock binding (ctypes): filesystem rules plus signal and abstract-socket scoping.

Why not the PyPI ``landlock`` package: it is a pre-release (1.0.0.dev5) and we need the ABI 6
scoping flags (signals, abstract unix sockets) as much as the filesystem rules; the three system
calls and two structs below are the whole interface. Linux only; ``abi()`` is 0 elsewhere.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterable

# The syscall numbers are the same on x86_64 and aarch64 (the unified table).
_SYS_CREATE_RULESET, _SYS_ADD_RULE, _SYS_RESTRICT_SELF = 444, 445, 446
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_RULE_NET_PORT = 2  # ABI 4
CONNECT_TCP = 1 << 1  # LANDLOCK_ACCESS_NET_CONNECT_TCP (ABI 4; bit 0 is BIND_TCP)

EXECUTE = 1 << 0
WRITE_FILE = 1 << 1
READ_FILE = 1 << 2
READ_DIR = 1 << 3
REMOVE_DIR = 1 << 4
REMOVE_FILE = 1 << 5
MAKE_CHAR = 1 << 6
MAKE_DIR = 1 << 7
MAKE_REG = 1 << 8
MAKE_SOCK = 1 << 9
MAKE_FIFO = 1 << 10
MAKE_BLOCK = 1 << 11
MAKE_SYM = 1 << 12
REFER = 1 << 13  # ABI 2
TRUNCATE = 1 << 14  # ABI 3
IOCTL_DEV = 1 << 15  # ABI 5
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1  # ABI 6

READ = EXECUTE | READ_FILE | READ_DIR
FILE_ONLY = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV  # what a file rule may hold


class LandlockError(OSError):
    """Landlock is missing or refused the ruleset."""


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _NetPort(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("port", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1  # __attribute__((packed)) in the kernel's header
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


def abi() -> int:
    """The kernel's Landlock ABI version (0: unavailable)."""
    version = _syscall(_SYS_CREATE_RULESET, None, ctypes.c_size_t(0), _CREATE_RULESET_VERSION)
    return max(int(version), 0)


def handled_fs(version: int) -> int:
    """Every filesystem right this ABI knows (all are denied unless a rule allows them)."""
    rights = (MAKE_SYM << 1) - 1
    if version >= 2:
        rights |= REFER
    if version >= 3:
        rights |= TRUNCATE
    if version >= 5:
        rights |= IOCTL_DEV
    return rights


def restrict(
    read_only: Iterable[str],
    read_write: Iterable[str],
    connect_ports: Iterable[int] | None = None,
) -> int:
    """Confine this process (and its future children) to the given paths; returns the ABI.

    ``read_only`` paths may be read and executed, ``read_write`` ones also written, created and
    removed beneath. Paths that do not exist are skipped. Signals and abstract unix sockets are
    scoped to this domain when the kernel can (ABI >= 6). With ``connect_ports`` (ABI >= 4),
    TCP connects go only to those ports (on any host: Landlock rules name ports, not
    addresses). Needs no_new_privs (or CAP_SYS_ADMIN).
    """
    version = abi()
    if version < 1:
        raise LandlockError("Landlock is not available in this kernel")
    if connect_ports is not None and version < 4:
        raise LandlockError(f"TCP connect rules need Landlock ABI 4, this kernel has {version}")
    handled = handled_fs(version)
    net = CONNECT_TCP if connect_ports is not None else 0
    attr = _RulesetAttr(
        handled, net, SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if version >= 6 else 0
    )
    ruleset = _syscall(_SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.sizeof(attr), 0)
    if ruleset < 0:
        raise LandlockError(ctypes.get_errno(), "landlock_create_ruleset failed")
    try:
        for paths, rights in ((read_only, READ), (read_write, handled)):
            for path in paths:
                _allow(int(ruleset), path, rights & handled)
        for port in sorted(set(connect_ports or ())):
            rule = _NetPort(CONNECT_TCP, port)
            if _syscall(_SYS_ADD_RULE, int(ruleset), _RULE_NET_PORT, ctypes.byref(rule), 0) != 0:
                raise LandlockError(ctypes.get_errno(), f"landlock_add_rule failed for {port}")
        if _syscall(_SYS_RESTRICT_SELF, int(ruleset), 0) != 0:
            raise LandlockError(ctypes.get_errno(), "landlock_restrict_self failed")
    finally:
        os.close(int(ruleset))
    return version


def _allow(ruleset: int, path: str, rights: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        if not os.path.isdir(path):
            rights &= FILE_ONLY  # directory rights on a file are refused (EINVAL)
        rule = _PathBeneath(rights, fd)
        if _syscall(_SYS_ADD_RULE, ruleset, _RULE_PATH_BENEATH, ctypes.byref(rule), 0) != 0:
            raise LandlockError(ctypes.get_errno(), f"landlock_add_rule failed for {path}")
    finally:
        os.close(fd)
