"""`aitraining chat [--project-name DIR | --projects-dir DIR] [--host 127.0.0.1] [--port 7860]`.

Everything that can be refused is refused before the server starts, as one line (exit 2): a folder that holds no
finished run, a port in use, a host that is no address here, the `chat` extra missing. The page is served on this
machine only unless `--host` says otherwise (then a one-line warning). Nothing leaves the machine: the hub is set
offline (models load from local folders and the local cache only) and its telemetry off, and the page loads
nothing from elsewhere.
"""

from __future__ import annotations

import argparse
import errno
import os
import socket
import sys
from typing import Any

from autotrain.errors import ParamsError
from autotrain.judge.spec import loopback

USAGE = "aitraining chat [--project-name DIR | --projects-dir DIR] [--host 127.0.0.1] [--port 7860]"
# The environment the server runs in: nothing is fetched from, or reported to, the hub.
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}


def add_parser(commands: Any, formatter: Any) -> None:
    chat = commands.add_parser("chat", help="A local page to chat with finished runs, beside their starting models.",
                               usage=USAGE, formatter_class=formatter,
                               description="Serves a page on this machine: the finished runs, a streamed chat "
                               "rendered with each run's own chat template, and its starting model's answers beside.")
    where = chat.add_mutually_exclusive_group()
    where.add_argument("--project-name", metavar="DIR", help="One finished run's folder.")
    where.add_argument("--projects-dir", metavar="DIR", default=".",
                       help="A folder of runs: it and each folder one level below that holds a finished run "
                       "(default: the current folder).")
    chat.add_argument("--host", default="127.0.0.1", help="The address to serve on (default: 127.0.0.1, this machine "
                      "only; another address serves every machine that reaches it).")
    chat.add_argument("--port", type=int, default=7860, help="The port to serve on (default: 7860).")
    chat.add_argument("--verbose", action="store_true", help="Show tracebacks and library logs.")


def main(args: argparse.Namespace) -> int:
    from autotrain import quiet
    from autotrain.chat.runs import find_runs, named_run

    if args.project_name is not None:
        run = named_run(args.project_name)
        runs, skipped = [run], 0
        find = lambda: [run]  # noqa: E731
    else:
        runs, skipped = find_runs(args.projects_dir)
        root = args.projects_dir

        def find() -> list[Any]:  # runs that finish while the page is open join the list
            try:
                return find_runs(root)[0]
            except ParamsError:
                return runs

    _check_extra()
    listening = bind(args.host, args.port)
    if not loopback(args.host):
        port = listening.getsockname()[1]
        print(f"warning: --host {args.host} serves the page, and the loaded model's answers, to every machine that "
              f"reaches this one on port {port}; the default, 127.0.0.1, keeps it on this machine", file=sys.stderr)
    os.environ.update(OFFLINE)
    import uvicorn

    from autotrain.chat.server import create_app

    passed = f"; {skipped} unfinished passed over" if skipped else ""
    print(f"aitraining chat: http://{_url_host(listening)}/ ({len(runs)} finished run{'s' * (len(runs) != 1)}"
          f"{passed}); Ctrl+C stops", flush=True)
    with quiet.libraries(args.verbose):
        quiet.import_quietly("transformers")
        config = uvicorn.Config(create_app(find, args.verbose), log_level="info" if args.verbose else "warning",
                                access_log=args.verbose, lifespan="off")
        try:
            uvicorn.Server(config).run(sockets=[listening])
        except KeyboardInterrupt:  # uvicorn stops on Ctrl+C, then raises it again: stopping is this command's end
            pass
    return 0


def _check_extra() -> None:
    missing = [name for name in ("starlette", "uvicorn") if not _installed(name)]
    if missing:
        raise ParamsError(f"aitraining chat needs {' and '.join(missing)}, which {'is' if len(missing) == 1 else 'are'}"
                          " not installed: pip install 'aitraining[chat]'")


def _installed(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to host:port, or one line saying why there is none (the port in use, no such address)."""
    if not 0 <= port <= 65535:
        raise ParamsError(f"--port {port}: a port is a number from 0 to 65535")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise ParamsError(f"--host {host}: not an address of this machine ({exc.strerror})") from None
    listening = socket.socket(family, kind, proto)
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: a restart reuses the port
    try:
        listening.bind(address)
        listening.listen(128)  # from here on the printed address answers (connections wait for the server)
    except OSError as exc:
        listening.close()
        if exc.errno == errno.EADDRINUSE:
            raise ParamsError(f"--port {port}: {host}:{port} is in use by another program; choose another port with "
                              "--port") from None
        raise ParamsError(f"--host {host} --port {port}: cannot serve there ({exc.strerror})") from None
    return listening


def _url_host(listening: socket.socket) -> str:
    host, port = listening.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
