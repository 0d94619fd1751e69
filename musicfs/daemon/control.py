"""The daemon's control socket: how `musicfs rescan`, `pin`, `search` and `reload` ask the
running daemon to do something (only the daemon writes the cache and the catalog; the commands
run in other processes), and what it answers (control_handlers).

Protocol, on a Unix stream socket (mode 0600: the user who mounted, and root): the client
sends one JSON object on one line, ``{"op": NAME, ...arguments}``. The daemon answers with
JSON lines: any number of ``{"progress": {...}}``, then exactly one ``{"result": {...}}`` or
``{"error": "one line for the user"}``, and closes. A client that goes away cancels nothing:
the work goes on (a pin half done is still pinned), only its progress is no longer sent.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
from pathlib import Path
from typing import Callable

from ..errors import MusicfsError, CommandError
from ..status import runtime_dir, runtime_name

log = logging.getLogger(__name__)

# A request line longer than this is not ours (a pin of a few thousand paths fits easily).
MAX_REQUEST = 4 << 20
# How long the client waits for the daemon's next line: a rescan of a slow origin reports no
# progress until it is done, and its scan is bounded by the stall timeout anyway.
REPLY_TIMEOUT = 3600.0

# A handler gets the request and a function that sends one progress object; it returns the
# result object, or raises MusicfsError whose message is the one line the user sees.
Handler = Callable[[dict, Callable[[dict], None]], dict]


def socket_path(cache_dir: Path) -> Path:
    return runtime_dir() / f"{runtime_name(cache_dir)}.sock"


class ControlServer:
    def __init__(self, cache_dir: Path, handlers: dict[str, Handler]):
        self.path = socket_path(cache_dir)
        self.handlers = handlers
        self._sock: socket.socket | None = None

    def start(self) -> None:
        # A socket file left by a daemon that died: ours now (the cache lock says we own it).
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            sock.bind(str(self.path))
        finally:
            os.umask(old_umask)
        sock.listen(8)
        self._sock = sock
        threading.Thread(target=self._accept, name="control", daemon=True).start()

    def stop(self) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()
        try:
            self.path.unlink()
        except OSError:
            pass

    def _accept(self) -> None:
        while self._sock is not None:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return   # closed by stop()
            threading.Thread(target=self._serve, args=(conn,), name="control-request", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rwb") as stream:
            def send(message: dict) -> None:
                try:
                    stream.write(json.dumps(message).encode() + b"\n")
                    stream.flush()
                except OSError:
                    pass   # the client went away; the work goes on
            try:
                line = stream.readline(MAX_REQUEST)
                request = json.loads(line)
                if not isinstance(request, dict):
                    raise ValueError("not an object")
            except (OSError, ValueError) as e:
                send({"error": f"bad control request: {e}"})
                return
            handler = self.handlers.get(request.get("op"))
            if handler is None:
                send({"error": f"this daemon does not know the request {request.get('op')!r}; "
                               f"is it an older musicfs? (restart it to update)"})
                return
            try:
                result = handler(request, lambda progress: send({"progress": progress}))
            except MusicfsError as e:
                send({"error": str(e)})
            except Exception as e:  # noqa: BLE001 - a bug: logged with its traceback, one line to the client
                log.exception("control request %s failed", request.get("op"))
                send({"error": f"{type(e).__name__}: {e} (see the daemon's log)"})
            else:
                send({"result": result})


def ask(cache_dir: Path, request: dict, progress: Callable[[dict], None] | None = None,
        timeout: float = REPLY_TIMEOUT) -> dict:
    """Send one request to the daemon of `cache_dir` and return its result; progress objects
    go to `progress`. CommandError (one line) when there is no daemon or it refuses."""
    path = socket_path(cache_dir)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        raise CommandError(f"the daemon of cache {cache_dir} has no control socket at {path}; "
                           f"is it running (and a musicfs of this version)?") from None
    except OSError as e:
        sock.close()
        raise CommandError(f"cannot reach the daemon at {path}: {e.strerror or e}") from None
    with sock, sock.makefile("rwb") as stream:
        try:
            stream.write(json.dumps(request).encode() + b"\n")
            stream.flush()
            for line in stream:
                message = json.loads(line)
                if "progress" in message:
                    if progress is not None:
                        progress(message["progress"])
                elif "error" in message:
                    raise CommandError(message["error"])
                elif "result" in message:
                    return message["result"]
        except socket.timeout:
            raise CommandError(f"the daemon did not answer within {timeout:g}s") from None
        except (OSError, ValueError) as e:
            raise CommandError(f"the daemon's answer broke off: {e}") from None
    raise CommandError("the daemon closed the control connection without an answer (see its log)")


def control_handlers(service, reloader=None) -> dict:
    """What `musicfs rescan`, `search`, `pin` and `reload` may ask of this daemon (see
    musicfs.control)."""
    pinner = service.pinner

    def paths(request) -> list[bytes]:
        given = request.get("paths")
        if not isinstance(given, list) or not all(isinstance(p, str) for p in given):
            raise CommandError("bad request: paths must be a list of paths inside the mount")
        return [os.fsencode(p) for p in given]

    def rescan(request, progress) -> dict:
        return {"origins": [dict(result.as_status().to_json(), origin=result.origin) for result in service.rescan_now()]}

    def search(request, progress) -> dict:
        """The tracks a query matches, from this daemon's catalog (the client opens none)."""
        from ..catalog.query import QueryError, parse
        limit = request.get("limit")
        if not isinstance(request.get("query"), str) or not (limit is None or isinstance(limit, int)):
            raise CommandError("bad request: a query (text) and a limit (a number or nothing)")
        if service.config.layout.mode != "tags":
            raise CommandError("search looks at the tag view: this mount shows the paths layout")
        try:
            query = parse(request["query"])
        except QueryError as e:
            raise CommandError(f"bad query: {e}") from None
        count, found = service.catalog.search(query, limit)
        return {"count": count, "tracks": [dict(track.fields, path=os.fsdecode(track.path)) for track in found]}

    handlers = {"rescan": rescan, "search": search,
                "pin": lambda request, progress: pinner.pin(paths(request), progress),
                "unpin": lambda request, progress: pinner.unpin(paths(request))}
    if reloader is not None:
        handlers["reload"] = lambda request, progress: reloader.now(progress)
    return handlers
