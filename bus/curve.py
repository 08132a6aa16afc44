"""CURVE for bus endpoints that leave this machine.

By default the bus is ipc sockets in a 0700 directory: only this user can connect. A ``tcp://``
endpoint on a non-loopback address is reachable by anyone on the network, so it requires CURVE:
the proxy is a CURVE server that admits only the client keys in its key directory, and every
publisher and subscriber is a CURVE client. Keys are made once with::

    python -m bus.curve keygen <dir>      # then METASTREAM_CURVE_DIR=<dir> for every component

``<dir>`` holds ``server.key`` / ``server.key_secret`` (the proxy) and ``client.key`` /
``client.key_secret`` (gateways, the supervisor, task processes, trusted subscribers), and
``authorized/`` (the client public keys the proxy admits). Keep it private (0700).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import shutil
import sys
from pathlib import Path
from urllib.parse import urlsplit

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

CURVE_ENV = "METASTREAM_CURVE_DIR"


class InsecureEndpoint(RuntimeError):
    """A bus endpoint that would be open to the network without CURVE."""


def is_public(endpoint: str) -> bool:
    """True for a tcp endpoint that is not loopback-only."""
    if not endpoint.startswith("tcp://"):
        return False  # ipc and inproc stay on this machine
    host = urlsplit(endpoint.replace("tcp://", "http://", 1)).hostname or ""
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True  # "*", an interface name or a host name: assume reachable


def curve_dir(environ: dict[str, str] | None = None) -> Path | None:
    value = (os.environ if environ is None else environ).get(CURVE_ENV, "")
    return Path(value) if value else None


def check_endpoints(endpoints: dict[str, str], keys: Path | None, curve_capable: bool) -> None:
    """Refuse public endpoints that would run without CURVE (``curve_capable`` says which can)."""
    for name, endpoint in endpoints.items():
        if not is_public(endpoint):
            continue
        if not curve_capable:
            raise InsecureEndpoint(
                f"{name}={endpoint} is reachable from the network and this channel has no CURVE "
                "support yet: bind it to ipc:// or 127.0.0.1"
            )
        if keys is None or not (keys / "server.key").is_file():
            raise InsecureEndpoint(
                f"{name}={endpoint} is reachable from the network: refusing to run it without "
                f"CURVE. Run `python -m bus.curve keygen <dir>` and set {CURVE_ENV}=<dir>."
            )


def keygen(directory: Path) -> None:
    """Create the server and client key pairs and the authorized-clients directory."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(directory, 0o700)
    zmq.auth.create_certificates(directory, "server")
    zmq.auth.create_certificates(directory, "client")
    authorized = directory / "authorized"
    authorized.mkdir(exist_ok=True, mode=0o700)
    shutil.copy(directory / "client.key", authorized / "client.key")
    for secret in directory.glob("*.key_secret"):
        os.chmod(secret, 0o600)


def serve_securely(sock: zmq.Socket, endpoint: str, keys: Path | None) -> None:
    """Make ``sock`` a CURVE server if ``endpoint`` is tcp and keys are configured."""
    if keys is None or not endpoint.startswith("tcp://"):
        return
    public, secret = zmq.auth.load_certificate(keys / "server.key_secret")
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_server = True


def start_authenticator(ctx: zmq.Context, keys: Path | None) -> ThreadAuthenticator | None:
    """Admit only the client keys in ``<keys>/authorized`` (a ZAP handler for ``ctx``)."""
    if keys is None:
        return None
    auth = ThreadAuthenticator(ctx)
    auth.start()
    auth.configure_curve(domain="*", location=str(keys / "authorized"))
    return auth


def connect_securely(sock: zmq.Socket, endpoint: str) -> None:
    """Make ``sock`` a CURVE client of a tcp endpoint when keys are configured, then connect."""
    keys = curve_dir()
    if endpoint.startswith("tcp://") and keys is not None:
        public, secret = zmq.auth.load_certificate(keys / "client.key_secret")
        server_public, _ = zmq.auth.load_certificate(keys / "server.key")
        sock.curve_secretkey = secret
        sock.curve_publickey = public
        sock.curve_serverkey = server_public
    elif is_public(endpoint):
        raise InsecureEndpoint(f"{endpoint} is reachable from the network; set {CURVE_ENV}")
    sock.connect(endpoint)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bus.curve")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("keygen", help="create the bus's CURVE key pairs in DIR")
    gen.add_argument("dir", type=Path)
    args = parser.parse_args(argv)
    keygen(args.dir)
    print(f"CURVE keys in {args.dir}: set {CURVE_ENV}={args.dir.resolve()}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
