"""zb-coordinator-shell: look at and change the coordinator's keys, like zkCli.

    zb-coordinator-shell --coordinator 127.0.0.1:2181                 # interactive
    zb-coordinator-shell --coordinator 127.0.0.1:2181 ls /brokers/ids  # one command
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time

from coordinator.client import CoordinatorClient, Stat
from zbroker.errors import ZbError
from zbroker.security import SecurityError, command_config

HELP = """Commands:
  ls PATH                      list the children of PATH
  get PATH                     print the value of PATH
  stat PATH                    print the version, transaction ids and owner of PATH
  create [-e] [-s] PATH [VALUE]  create PATH (-e ephemeral, -s sequential)
  set PATH VALUE [VERSION]     change the value (only at VERSION when given)
  delete PATH [VERSION]        delete PATH (only at VERSION when given)
  deleteall PATH               delete PATH and everything below it
  help                         this text
  quit                         leave the shell"""


def _fmt_stat(stat: Stat) -> str:
    def when(ms):
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000)) if ms else "-"
    return "\n".join([
        f"version = {stat.version}",
        f"czxid = {stat.czxid:#x}", f"mzxid = {stat.mzxid:#x}",
        f"ctime = {when(stat.ctime_ms)}", f"mtime = {when(stat.mtime_ms)}",
        f"ephemeralOwner = {stat.ephemeral_owner:#x}",
        f"numChildren = {stat.num_children}"])


def _delete_all(c: CoordinatorClient, path: str) -> None:
    for child in c.children(path):
        _delete_all(c, (path.rstrip("/") + "/" + child))
    if path != "/":
        c.delete(path)


def run_command(c: CoordinatorClient, words: list[str], out=sys.stdout) -> bool:
    """Run one command; return False when the shell should end."""
    if not words:
        return True
    cmd, args = words[0], words[1:]
    if cmd in ("quit", "exit"):
        return False
    if cmd == "help":
        print(HELP, file=out)
    elif cmd == "ls" and len(args) == 1:
        print("[" + ", ".join(c.children(args[0])) + "]", file=out)
    elif cmd == "get" and len(args) == 1:
        value, _ = c.get(args[0])
        print(value.decode("utf-8", "backslashreplace"), file=out)
    elif cmd == "stat" and len(args) == 1:
        stat = c.exists(args[0])
        print(_fmt_stat(stat) if stat else f"Node does not exist: {args[0]}", file=out)
    elif cmd == "create" and args:
        flags = {a for a in args if a in ("-e", "-s")}
        rest = [a for a in args if a not in ("-e", "-s")]
        if not 1 <= len(rest) <= 2:
            raise ValueError("usage: create [-e] [-s] PATH [VALUE]")
        value = rest[1].encode() if len(rest) == 2 else b""
        print("Created " + c.create(rest[0], value, ephemeral="-e" in flags,
                                    sequential="-s" in flags), file=out)
    elif cmd == "set" and len(args) in (2, 3):
        version = c.set(args[0], args[1].encode(), int(args[2]) if len(args) == 3 else -1)
        print(f"version = {version}", file=out)
    elif cmd == "delete" and len(args) in (1, 2):
        c.delete(args[0], int(args[1]) if len(args) == 2 else -1)
    elif cmd == "deleteall" and len(args) == 1:
        _delete_all(c, args[0])
    else:
        raise ValueError(f"Unknown command or wrong arguments: {' '.join(words)}. "
                         f"Type 'help' for the list.")
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="zb-coordinator-shell",
                                description="Look at and change the keys of a zbroker "
                                            "coordinator, like ZooKeeper's zkCli.",
                                epilog=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--coordinator", default="127.0.0.1:2181", metavar="HOST:PORT[,...]",
                   help="coordinator address(es) (default 127.0.0.1:2181)")
    p.add_argument("--session-timeout-ms", type=int, default=10000)
    p.add_argument("--command-config", metavar="FILE",
                   help="client settings (security.protocol, curve.secret.key.file, "
                        "curve.server.key.file) as in Kafka's tools")
    p.add_argument("command", nargs=argparse.REMAINDER,
                   help="a command to run instead of the interactive shell")
    args = p.parse_args(argv)
    try:
        c = CoordinatorClient(args.coordinator, session_timeout_ms=args.session_timeout_ms,
                              connect_timeout_ms=5000, **command_config(args.command_config))
    except SecurityError as e:
        print(f"zb-coordinator-shell: {e}", file=sys.stderr)
        return 2
    except ZbError as e:
        print(f"zb-coordinator-shell: {e}", file=sys.stderr)
        return 1
    status = 0
    try:
        if args.command:
            try:
                run_command(c, args.command)
            except (ZbError, ValueError) as e:
                print(f"Error: {e}", file=sys.stderr)
                status = 1
            return status
        interactive = sys.stdin.isatty()
        while True:
            try:
                line = input(f"[coordinator {args.coordinator}] ") if interactive \
                    else sys.stdin.readline()
            except EOFError:
                break
            if not interactive and not line:
                break
            try:
                if not run_command(c, shlex.split(line)):
                    break
            except (ZbError, ValueError) as e:
                print(f"Error: {e}", file=sys.stderr)
                status = 1
    except KeyboardInterrupt:
        pass
    finally:
        c.close()
    return status


if __name__ == "__main__":
    sys.exit(main())
