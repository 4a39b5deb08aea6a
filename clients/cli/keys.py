"""zb-keys: make a CurveZMQ key pair in pyzmq's certificate format.

    zb-keys --name alice --dir keys/        # keys/alice.key (public), keys/alice.key_secret

The public file goes into a server's ``curve.authorized.keys.dir`` (its name is the principal:
``alice.key`` is ``User:alice``); the secret file stays with the client that uses it
(``curve.secret.key.file``), readable only by its owner. A server's own pair
(``curve.server.secret.key.file``) is made the same way, and its public file is what clients
give as ``curve.server.key.file``.
"""

from __future__ import annotations

from clients.cli._common import ArgumentParser, UsageError, run
from zbroker.security import SecurityError, create_keys

PROG = "zb-keys"


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog=PROG, description="Write a CurveZMQ key pair: NAME.key (public) and "
                       "NAME.key_secret (both keys) in DIR.")
    p.add_argument("--name", required=True, help="the key's name (a client's principal)")
    p.add_argument("--dir", required=True, help="the directory to write the two files in")
    return p


def _body(args) -> int:
    try:
        public, secret = create_keys(args.dir, args.name)
    except SecurityError as e:
        raise UsageError(str(e)) from None
    print(f"Wrote {public} (public) and {secret} (secret).")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(PROG, build_parser(), _body, argv)


if __name__ == "__main__":
    raise SystemExit(main())
