"""CurveZMQ for every port: key files, server sockets that accept only authorized keys, and
client sockets that present a key and check the server's.

Keys are pyzmq's certificate files (``zmq.auth``): ``NAME.key`` holds a public key,
``NAME.key_secret`` the pair; ``zb-keys --name NAME --dir DIR`` writes both. A server
(``security.protocol=CURVE``) has one key pair, the same on every server of a cluster
(``curve.server.secret.key.file``), so a client needs one public key to check any of them; it
accepts a client only if the client's public key is one of the ``*.key`` files in
``curve.authorized.keys.dir``, and the file's name is the client's principal (``alice.key`` is
``User:alice``). ZeroMQ refuses anyone else during the handshake, before any request is read.

One ZAP handler (``Authorizer``, on a thread of pyzmq's) serves every CURVE server socket of a
context; it reads the authorized keys directory again when asked (``reload``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

PLAINTEXT, CURVE = "PLAINTEXT", "CURVE"
PROTOCOLS = (PLAINTEXT, CURVE)
HANDSHAKE_FAILED_EVENTS = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL |
                           zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL |
                           zmq.EVENT_HANDSHAKE_FAILED_AUTH)


class SecurityError(Exception):
    """A key file or setting that cannot be used; the text is one sentence."""


def _load(path: str, want_secret: bool) -> tuple[bytes, bytes | None]:
    if not path:
        raise SecurityError("No key file was given.")
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise SecurityError(f"The key file {path} cannot be read ({why}).") from None
    if want_secret and secret is None:
        raise SecurityError(f"The key file {path} holds no secret key (use NAME.key_secret, "
                            f"as zb-keys writes it).")
    return public, secret


def load_keypair(path: str) -> tuple[bytes, bytes]:
    public, secret = _load(path, True)
    return public, secret


def load_public_key(path: str) -> bytes:
    return _load(path, False)[0]


def create_keys(directory: str, name: str) -> tuple[str, str]:
    """Write ``name.key`` and ``name.key_secret`` in ``directory``; returns their paths."""
    if not name or os.sep in name or name.startswith("."):
        raise SecurityError(f"{name!r} is not a usable key name (it becomes a file name).")
    os.makedirs(directory, exist_ok=True)
    public, secret = (os.path.join(directory, f"{name}.key"),
                      os.path.join(directory, f"{name}.key_secret"))
    for path in (public, secret):
        if os.path.exists(path):
            raise SecurityError(f"{path} exists already; choose another name or remove it.")
    made_public, made_secret = zmq.auth.create_certificates(directory, name)
    os.chmod(made_secret, 0o600)
    return made_public, made_secret


@dataclass(frozen=True)
class ClientSecurity:
    """How a client socket connects: PLAINTEXT, or CURVE with its own key pair and the
    servers' public key."""
    protocol: str = PLAINTEXT
    secret_key_file: str = ""
    server_key_file: str = ""

    @classmethod
    def from_settings(cls, protocol: str | None, secret_key_file: str | None,
                      server_key_file: str | None) -> "ClientSecurity":
        protocol = (protocol or PLAINTEXT).upper()
        if protocol not in PROTOCOLS:
            raise SecurityError(f"security.protocol must be PLAINTEXT or CURVE, not "
                                f"{protocol!r}.")
        sec = cls(protocol, secret_key_file or "", server_key_file or "")
        if protocol == CURVE:
            if not sec.secret_key_file or not sec.server_key_file:
                raise SecurityError("CURVE needs a secret key file (curve.secret.key.file) and "
                                    "the server's public key file (curve.server.key.file).")
            sec.keys()      # fail now, with the file's name, not at the first connection
        return sec

    @property
    def curve(self) -> bool:
        return self.protocol == CURVE

    def keys(self) -> tuple[bytes, bytes, bytes]:
        public, secret = load_keypair(self.secret_key_file)
        return public, secret, load_public_key(self.server_key_file)

    def apply(self, sock: zmq.Socket) -> None:
        """Before ``connect``: present our key and expect the server's."""
        if not self.curve:
            return
        public, secret, server = self.keys()
        sock.curve_publickey = public
        sock.curve_secretkey = secret
        sock.curve_serverkey = server


class Authorizer(ThreadAuthenticator):
    """The ZAP handler of one context: CURVE clients whose public key is in the authorized
    directory are let in, with the key file's name as their User-Id (the principal)."""

    def __init__(self, ctx: zmq.Context, authorized_dir: str):
        super().__init__(ctx)
        self.authorized_dir = authorized_dir
        self.principals: dict[bytes, str] = {}
        self._seen: object = None
        self.reload()

    def reload_if_changed(self) -> bool:
        """Read the directory again when a key file came, went or changed (cheap when none
        did: one listing and a stat per file). Called from a server's loop every few seconds, so
        an added key is let in and a removed one refused at its next connection."""
        try:
            names = sorted(n for n in os.listdir(self.authorized_dir) if n.endswith(".key"))
            seen = tuple((n, os.stat(os.path.join(self.authorized_dir, n)).st_mtime_ns)
                         for n in names)
        except OSError:
            return False
        if seen == self._seen:
            return False
        self.reload()
        return True

    def reload(self) -> None:
        if not os.path.isdir(self.authorized_dir):
            raise SecurityError(f"curve.authorized.keys.dir {self.authorized_dir} is not a "
                                f"directory.")
        principals = {}
        for name in sorted(os.listdir(self.authorized_dir)):
            if not name.endswith(".key"):
                continue
            try:
                public = load_public_key(os.path.join(self.authorized_dir, name))
            except SecurityError:
                continue
            principals[public] = name[:-len(".key")]
        self.principals = principals
        self.certs["*"] = {k: True for k in principals}
        try:
            self._seen = tuple((n, os.stat(os.path.join(self.authorized_dir, n)).st_mtime_ns)
                               for n in sorted(os.listdir(self.authorized_dir))
                               if n.endswith(".key"))
        except OSError:
            self._seen = None

    def curve_user_id(self, client_public_key: bytes) -> str:
        return self.principals.get(z85.encode(client_public_key), "anonymous")


@dataclass
class ServerSecurity:
    """How a server's sockets listen: PLAINTEXT, or CURVE with the cluster's server key pair and
    the directory of authorized client keys."""
    protocol: str = PLAINTEXT
    server_secret_key_file: str = ""
    authorized_keys_dir: str = ""

    @classmethod
    def from_config(cls, cfg) -> "ServerSecurity":
        sec = cls(cfg["security.protocol"], cfg["curve.server.secret.key.file"],
                  cfg["curve.authorized.keys.dir"])
        if sec.curve:
            if not sec.server_secret_key_file or not sec.authorized_keys_dir:
                raise SecurityError("security.protocol=CURVE needs curve.server.secret.key.file "
                                    "and curve.authorized.keys.dir.")
            load_keypair(sec.server_secret_key_file)
            if not os.path.isdir(sec.authorized_keys_dir):
                raise SecurityError(f"curve.authorized.keys.dir {sec.authorized_keys_dir} is "
                                    f"not a directory.")
        return sec

    @property
    def curve(self) -> bool:
        return self.protocol == CURVE

    def start(self, ctx: zmq.Context) -> Authorizer | None:
        """The context's ZAP handler (None for PLAINTEXT); stop it at shutdown."""
        if not self.curve:
            return None
        auth = Authorizer(ctx, self.authorized_keys_dir)
        auth.start()
        auth.certs["*"] = {k: True for k in auth.principals}
        return auth

    def apply(self, sock: zmq.Socket) -> None:
        """Before ``bind``: be a CURVE server with the cluster's key pair."""
        if not self.curve:
            return
        public, secret = load_keypair(self.server_secret_key_file)
        sock.curve_server = True
        sock.curve_publickey = public
        sock.curve_secretkey = secret


COMMAND_CONFIG_KEYS = {"security.protocol": "security_protocol",
                       "curve.secret.key.file": "curve_secret_key_file",
                       "curve.server.key.file": "curve_server_key_file"}


def command_config(path: str | None) -> dict:
    """Client keyword arguments from a tool's ``--command-config FILE`` (Kafka's flag): a
    .properties file with security.protocol, curve.secret.key.file, curve.server.key.file."""
    if not path:
        return {}
    from zbroker.config import ConfigError, load_properties
    try:
        props = load_properties(path)
    except (OSError, ConfigError) as e:
        raise SecurityError(f"The command config {path} cannot be read: {e}") from None
    unknown = sorted(set(props) - set(COMMAND_CONFIG_KEYS))
    if unknown:
        raise SecurityError(f"The command config {path} has settings this tool does not know: "
                            f"{', '.join(unknown)} (known: "
                            f"{', '.join(COMMAND_CONFIG_KEYS)}).")
    kwargs = {COMMAND_CONFIG_KEYS[k]: v.strip() for k, v in props.items()}
    ClientSecurity.from_settings(kwargs.get("security_protocol"),
                                 kwargs.get("curve_secret_key_file"),
                                 kwargs.get("curve_server_key_file"))
    return kwargs


def handshake_failure(event: int, address: str, curve: bool) -> str:
    """A sentence for a failed handshake seen by a client's socket monitor."""
    if not curve:
        return (f"The server at {address} refused the connection during the handshake; it "
                f"probably wants CURVE (set security.protocol=CURVE and the key files).")
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return (f"The server at {address} refused our CURVE key: it is not among the server's "
                f"authorized keys.")
    return (f"The CURVE handshake with {address} failed: the server does not use CURVE, or its "
            f"public key is not the one in curve.server.key.file.")
