"""A TCP proxy in front of PostgreSQL that behaves like a bad network on demand.

It forwards the PostgreSQL wire protocol byte for byte and, when told to, cuts connections
(optionally leaving the server's side open, as a half-open connection after a path failure
does), stalls them, drops the server's answer to a request it has already applied (a COMMIT,
an autocommit write) and partitions everything. It parses just enough of the protocol to know
each link's startup parameters, its statements, and where each request's answer ends. A link
that negotiates TLS or GSS encryption with the server (its SSLRequest answered 'S') is still
forwarded, cut, stalled and partitioned, but opaquely: lose_reply() cannot see into it.

The proxy runs an asyncio loop in a daemon thread of its own; every public method may be called
from any other thread and waits until the loop has done what it asks.

    proxy = FaultProxy(os.environ["DATABASE_URL"]).start()
    conn = psycopg.connect(proxy.url_for(os.environ["DATABASE_URL"]))
    armed = proxy.lose_reply(sql=r"^\\s*COMMIT")
    ...
    proxy.stop()
"""

import asyncio
import collections
import dataclasses
import logging
import os
import re
import struct
import threading
import time
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Literal, NamedTuple, TypeVar
from urllib.parse import parse_qsl, unquote, unquote_plus, urlsplit, urlunsplit

__all__ = ["Armed", "FaultProxy", "LinkInfo"]

_log = logging.getLogger(__name__)

_T = TypeVar("_T")

_SSL_REQUEST = 80877103
_GSSENC_REQUEST = 80877104
_CANCEL_REQUEST = 80877102
_MAX_STARTUP_LENGTH = 10_000  # the server's own limit; anything longer is not PostgreSQL
_CHUNK = 1 << 16
_CALL_TIMEOUT = 30.0  # a public call that waits longer than this means the loop is stuck
_PROXY_HOST = "127.0.0.1"
_URL_KEYS_OF_THE_TARGET = frozenset({"host", "hostaddr", "port"})

# Messages whose body must be seen whole before any of it is forwarded (the fault decision
# for a request is made on its SQL before the server can answer it); all others stream.
_CLIENT_WHOLE = frozenset("QPBE")
_SERVER_WHOLE = frozenset("ZS")  # ReadyForQuery (status), ParameterStatus (application_name)

LinkState = Literal["open", "stalled", "orphan"]


@dataclasses.dataclass(frozen=True)
class LinkInfo:
    """One client connection through the proxy, as it was when asked.

    state: "open" (forwarding), "stalled" (by stall() or a partition) or "orphan" (the client's
    side was cut half-open and only the server's session is kept). user, database and
    application_name are empty until the client's StartupMessage has gone through.
    """

    id: int
    application_name: str
    user: str
    database: str
    state: LinkState
    opened_at: float


class Armed:
    """A lose_reply() fault waiting for its request: `fired` is set once it has struck, and
    then `link` is the link it struck and `sql` the SQL text that matched."""

    def __init__(
        self,
        proxy: "FaultProxy",
        pattern: re.Pattern[str],
        application_name: str | None,
        half_open: bool,
        only_when_idle_after: bool,
    ) -> None:
        self.pattern = pattern
        self.application_name = application_name
        self.half_open = half_open
        self.only_when_idle_after = only_when_idle_after
        self.fired = threading.Event()
        self.link: LinkInfo | None = None
        self.sql: str | None = None
        self._proxy = proxy
        self._active = True  # only read and written on the proxy's loop

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the fault has fired; whether it has."""
        return self.fired.wait(timeout)

    def disarm(self) -> None:
        """Withdraw the fault if it has not fired yet (a request already being answered is
        then answered normally)."""
        self._proxy._disarm(self)

    def _matches(self, application_name: str, sql: str) -> bool:
        if self.application_name is not None and not application_name.startswith(
            self.application_name
        ):
            return False
        return self.pattern.search(sql) is not None

    def __repr__(self) -> str:
        state = "fired" if self.fired.is_set() else "armed"
        return f"<Armed {self.pattern.pattern!r} {state}>"


class _Piece(NamedTuple):
    raw: bytes  # bytes of the stream, in order
    kind: str | None  # message type; "startup" for untyped, "byte" for an SSL/GSS answer
    body: bytes | None  # the whole body, for messages kept whole
    first: bool  # whether `raw` starts the message


class _Framer:
    """Finds the message boundaries in one direction of a link, holding back only what it must:
    a header not yet complete, or a message of `whole` not yet complete."""

    def __init__(self, whole: frozenset[str], mode: Literal["untyped", "typed"]) -> None:
        self.whole = whole
        self.mode: Literal["untyped", "typed", "opaque"] = mode
        self.single_bytes = 0  # one-byte answers (to SSLRequest, GSSENCRequest) expected next
        self._pending = bytearray()
        self._remaining = 0  # bytes still to come of a message that streams through
        self._kind: str | None = None

    def feed(self, data: bytes) -> Iterator[_Piece]:
        """The pieces `data` completes; the caller may change `mode` between two of them."""
        buf = self._pending
        buf += data
        pos = 0
        try:
            while pos < len(buf):
                left = len(buf) - pos
                if self.mode == "opaque":
                    yield _Piece(bytes(buf[pos:]), None, None, False)
                    pos = len(buf)
                elif self._remaining:
                    n = min(self._remaining, left)
                    self._remaining -= n
                    yield _Piece(bytes(buf[pos : pos + n]), self._kind, None, False)
                    pos += n
                elif self.single_bytes:
                    self.single_bytes -= 1
                    byte = bytes(buf[pos : pos + 1])
                    pos += 1
                    yield _Piece(byte, "byte", byte, True)
                elif self.mode == "untyped":
                    if left < 4:
                        break
                    (length,) = struct.unpack_from("!I", buf, pos)
                    if not 8 <= length <= _MAX_STARTUP_LENGTH:
                        self.mode = "opaque"  # not PostgreSQL's startup (TLS sent directly?)
                        continue
                    if left < length:
                        break
                    raw = bytes(buf[pos : pos + length])
                    pos += length
                    yield _Piece(raw, "startup", raw[4:], True)
                else:
                    if left < 5:
                        break
                    kind = chr(buf[pos])
                    (length,) = struct.unpack_from("!I", buf, pos + 1)
                    if length < 4:
                        self.mode = "opaque"  # lost the framing: forward blindly from here
                        continue
                    total = 1 + length
                    if kind in self.whole:
                        if left < total:
                            break
                        raw = bytes(buf[pos : pos + total])
                        pos += total
                        yield _Piece(raw, kind, raw[5:], True)
                    else:
                        n = min(total, left)
                        self._remaining = total - n
                        self._kind = kind
                        raw = bytes(buf[pos : pos + n])
                        pos += n
                        yield _Piece(raw, kind, None, True)
        finally:
            del buf[:pos]


@dataclasses.dataclass(eq=False)
class _Group:
    """A request the server will answer with one ReadyForQuery: a Query, a FunctionCall, or
    extended-protocol messages up to a Sync (also the startup, answered by the first one)."""

    candidates: list[tuple[Armed, str]] = dataclasses.field(default_factory=list)
    answer: bytearray = dataclasses.field(default_factory=bytearray)
    error: bool = False


class _Link:
    def __init__(self, link_id: int, client: asyncio.StreamWriter) -> None:
        self.id = link_id
        self.client = client
        self.server: asyncio.StreamWriter | None = None
        self.application_name = ""
        self.user = ""
        self.database = ""
        self.opened_at = time.monotonic()
        self.state: Literal["live", "orphan", "closed"] = "live"
        self.stalls = 0
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.pumps: list[asyncio.Task[None]] = []
        self.from_client = _Framer(_CLIENT_WHOLE, "untyped")
        self.from_server = _Framer(_SERVER_WHOLE, "typed")
        self.statements: dict[str, str] = {}
        self.portals: dict[str, str] = {}
        self.groups: collections.deque[_Group] = collections.deque()
        self.open_group: _Group | None = None

    def go_opaque(self) -> None:
        self.from_client.mode = "opaque"
        self.from_server.mode = "opaque"


class FaultProxy:
    """A fault-injecting proxy in front of the PostgreSQL server of `url` (a URL as psycopg
    takes it, over TCP or a Unix socket). start() it, point clients at url_for(...), then apply
    faults; stop() it at the end.

    `counts` tells the faults applied so far: "cut" and "half_open" (one per cut, stall(...,
    then_cut=True) included), "stall", "lost_reply" (the cut that loses a reply is not counted
    again) and "partition".
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.port = 0
        self._upstream = _upstream_of(url)
        self._start_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._running = False
        self._closing = False
        self._server: asyncio.Server | None = None
        self._links: dict[int, _Link] = {}
        self._next_id = 0
        self._armed: list[Armed] = []
        self._partitioned = False
        self._counts: collections.Counter[str] = collections.Counter()
        # Requests answered (each ReadyForQuery ends one round trip), by application_name.
        self._round_trips: collections.Counter[str] = collections.Counter()

    # -- life cycle ----------------------------------------------------------------------

    def start(self) -> "FaultProxy":
        """Listen on 127.0.0.1 on a free port (then in `port`); self."""
        with self._start_lock:
            if self._loop is not None:
                raise RuntimeError("a FaultProxy starts once")
            loop = asyncio.new_event_loop()
            self._thread = threading.Thread(
                target=_run_loop, args=(loop,), name="faultproxy", daemon=True
            )
            self._thread.start()
            self._loop = loop
            self._running = True
            try:
                self._server = asyncio.run_coroutine_threadsafe(self._listen(), loop).result(
                    _CALL_TIMEOUT
                )
            except BaseException:
                self._running = False
                loop.call_soon_threadsafe(loop.stop)
                self._thread.join(_CALL_TIMEOUT)
                raise
        return self

    def stop(self) -> None:
        """Close the listener and every connection, both sides, orphans included. Idempotent."""
        with self._start_lock:
            loop, thread = self._loop, self._thread
            if loop is None or thread is None or not self._running:
                return
            self._running = False
            try:
                asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(_CALL_TIMEOUT)
            finally:
                loop.call_soon_threadsafe(loop.stop)
                thread.join(_CALL_TIMEOUT)

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def url_for(self, url: str | None = None) -> str:
        """`url` (default: the proxied one) pointing at the proxy instead: host 127.0.0.1 and
        port `port`; user, password, database and other query parameters kept; the query
        parameters that name the target (host, hostaddr, port) removed."""
        if not self.port:
            raise RuntimeError("the proxy is not started")
        parts = urlsplit(self.url if url is None else url)
        userinfo, at, _ = parts.netloc.rpartition("@")
        netloc = f"{userinfo}{at}{_PROXY_HOST}:{self.port}"
        query = "&".join(
            item
            for item in parts.query.split("&")
            if item and unquote_plus(item.partition("=")[0]) not in _URL_KEYS_OF_THE_TARGET
        )
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))

    # -- looking -------------------------------------------------------------------------

    def links(self) -> list[LinkInfo]:
        """The client connections, and the orphans (server sessions of half-open cuts)."""
        return self._call(
            lambda: [self._info(link) for link in self._links.values() if link.state != "closed"]
        )

    def orphans(self) -> int:
        """How many server sessions half-open cuts keep open."""
        return self._call(lambda: len(self._orphan_links()))

    @property
    def counts(self) -> collections.Counter[str]:
        """A copy of the faults applied so far, by kind."""
        if not self._running:
            return collections.Counter(self._counts)
        return self._call(lambda: collections.Counter(self._counts))

    def round_trips(self) -> collections.Counter[str]:
        """A copy of the requests answered so far (round trips), by the client's
        application_name (bench/inprocess.py counts a saga's with it)."""
        if not self._running:
            return collections.Counter(self._round_trips)
        return self._call(lambda: collections.Counter(self._round_trips))

    # -- faults --------------------------------------------------------------------------

    def cut(self, link_id: int, *, half_open: bool = False) -> None:
        """Close the client's side of a link now: the client sees its connection drop. The
        server's side is closed too (the server ends the session), or with half_open kept open
        and idle, never read from or written to again (PostgreSQL keeps the session and its
        locks as if the client were still there) until close_orphans() or stop().

        Cutting an orphan closes its server side (half_open=False) or does nothing."""
        self._call(lambda: self._cut(self._link(link_id), half_open))

    def stall(
        self, link_id: int, seconds: float, *, then_cut: bool = False, half_open: bool = False
    ) -> None:
        """Stop forwarding a link in both directions for `seconds` (bytes wait; none is lost),
        then go on; with then_cut, cut it then instead (as TCP keepalive finally giving up
        would), half_open as in cut(). Returns at once."""
        if seconds < 0:
            raise ValueError("seconds must be >= 0")

        def begin() -> None:
            link = self._live_link(link_id)
            link.stalls += 1
            self._counts["stall"] += 1
            self._loop_now().call_later(seconds, self._end_stall, link, then_cut, half_open)

        self._call(begin)

    def lose_reply(
        self,
        *,
        sql: str,
        application_name: str | None = None,
        half_open: bool = False,
        only_when_idle_after: bool = True,
    ) -> Armed:
        """Arm a one-shot fault on the next request whose SQL matches the regular expression
        `sql` (re.search, case-insensitive), on a link whose application_name starts with
        `application_name` if that is given. The request goes to the server; the server's whole
        answer, up to its ReadyForQuery, is held back, then discarded, and the client's side is
        cut (half_open as in cut()): the server has applied the request and the client never
        hears of it.

        With only_when_idle_after it only fires if the request committed: the ReadyForQuery says
        the server is idle (a COMMIT, an autocommit statement) and the answer has no error;
        otherwise the answer goes on to the client and the fault stays armed. Only executed SQL
        counts (a Query, or an Execute of a portal), not the Parse that prepares it.
        """
        armed = Armed(
            self, re.compile(sql, re.IGNORECASE), application_name, half_open, only_when_idle_after
        )
        self._call(lambda: self._armed.append(armed))
        return armed

    def partition(self) -> None:
        """Go silent, like a network path that died: every link stalls, and new connections
        are accepted (by TCP) but nothing is forwarded, until heal()."""

        def begin() -> None:
            if not self._partitioned:
                self._partitioned = True
                self._counts["partition"] += 1

        self._call(begin)

    def heal(self) -> None:
        """End a partition: everything is forwarded again (stall()s still running go on)."""

        def end() -> None:
            self._partitioned = False
            for link in self._links.values():
                link.wake.set()

        self._call(end)

    def close_orphans(self) -> None:
        """Close the server's side of every half-open cut: the server ends those sessions."""

        def close() -> None:
            for link in self._orphan_links():
                self._drop(link)

        self._call(close)

    # -- the loop's side -----------------------------------------------------------------

    def _call(self, fn: Callable[[], _T]) -> _T:
        """fn() run on the loop (all state lives there), its result or exception here."""
        loop, thread = self._loop, self._thread
        if loop is None or not self._running:
            raise RuntimeError("the proxy is not running")
        if thread is not None and thread.ident == threading.get_ident():
            return fn()

        async def run() -> _T:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), loop).result(_CALL_TIMEOUT)

    def _loop_now(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None
        return self._loop

    def _disarm(self, armed: Armed) -> None:
        def disarm() -> None:
            armed._active = False
            if armed in self._armed:
                self._armed.remove(armed)

        if self._running:
            self._call(disarm)
        else:
            armed._active = False

    def _link(self, link_id: int) -> _Link:
        try:
            return self._links[link_id]
        except KeyError:
            raise KeyError(f"no link {link_id} (closed, or never opened)") from None

    def _live_link(self, link_id: int) -> _Link:
        link = self._link(link_id)
        if link.state != "live":
            raise KeyError(f"link {link_id} is an orphan: its client is gone")
        return link

    def _orphan_links(self) -> list[_Link]:
        return [link for link in self._links.values() if link.state == "orphan"]

    def _info(self, link: _Link) -> LinkInfo:
        state: LinkState = "open"
        if link.state == "orphan":
            state = "orphan"
        elif link.stalls or self._partitioned:
            state = "stalled"
        return LinkInfo(
            id=link.id,
            application_name=link.application_name,
            user=link.user,
            database=link.database,
            state=state,
            opened_at=link.opened_at,
        )

    async def _listen(self) -> asyncio.Server:
        server = await asyncio.start_server(self._serve, _PROXY_HOST, 0)
        self.port = int(server.sockets[0].getsockname()[1])
        return server

    async def _shutdown(self) -> None:
        self._closing = True
        if self._server is not None:
            self._server.close()
        tasks = []
        for link in list(self._links.values()):
            self._drop(link)
            if link.task is not None and not link.task.done():
                link.task.cancel()
                tasks.append(link.task)
        await asyncio.gather(*tasks, return_exceptions=True)
        self._links.clear()
        if self._server is not None:
            await self._server.wait_closed()

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        kind, where, port = self._upstream
        if kind == "unix":
            return await asyncio.open_unix_connection(where)
        return await asyncio.open_connection(where, port)

    async def _serve(self, reader: asyncio.StreamReader, client: asyncio.StreamWriter) -> None:
        if self._closing:
            client.transport.abort()
            return
        self._next_id += 1
        link = _Link(self._next_id, client)
        link.task = asyncio.current_task()
        self._links[link.id] = link
        try:
            await self._flowing(link)  # a partition: the client waits for an answer in vain
            if link.state != "live":
                return
            server_reader, server = await self._connect()
            link.server = server
            if link.state != "live":  # cut while connecting
                server.transport.abort()
                return
            link.pumps = [
                asyncio.create_task(self._pump_client(link, reader, server)),
                asyncio.create_task(self._pump_server(link, server_reader, client)),
            ]
            done, _ = await asyncio.wait(link.pumps, return_when=asyncio.FIRST_COMPLETED)
            for pump in done:
                if not pump.cancelled() and pump.exception() is not None:
                    _log.error("link %d failed", link.id, exc_info=pump.exception())
        except OSError as error:
            _log.debug("link %d: upstream: %s", link.id, error)
        except asyncio.CancelledError:
            pass  # stop(): asyncio's accept callback would log a cancelled handler as an error
        finally:
            for pump in link.pumps:
                pump.cancel()
            self._finish(link)

    def _finish(self, link: _Link) -> None:
        """A link's forwarding is over: pass the end on to both sides, unless it is an orphan."""
        if link.state == "orphan":
            return
        if link.state == "live":  # one side ended it: the other hears so
            link.state = "closed"
            link.client.close()
            if link.server is not None:
                link.server.close()
        self._links.pop(link.id, None)

    def _drop(self, link: _Link) -> None:
        """Close both sides of a link at once, whatever state it is in, and forget it."""
        link.state = "closed"
        link.client.transport.abort()
        if link.server is not None:
            link.server.transport.abort()
        self._stop_pumps(link)
        self._links.pop(link.id, None)

    def _stop_pumps(self, link: _Link) -> None:
        current = asyncio.current_task()
        for pump in link.pumps:
            if pump is not current:
                pump.cancel()
        link.wake.set()  # a link still waiting to connect looks at its state again

    def _cut(self, link: _Link, half_open: bool, *, count: bool = True) -> None:
        if link.state == "orphan":
            if not half_open:
                self._drop(link)
            return
        if link.state != "live":
            return
        link.client.transport.abort()
        if half_open and link.server is not None:
            link.state = "orphan"
            transport = link.server.transport
            if isinstance(transport, asyncio.ReadTransport):
                transport.pause_reading()  # never read again: the session just sits there
        else:
            link.state = "closed"
            if link.server is not None:
                link.server.transport.abort()
            self._links.pop(link.id, None)  # gone from links() by the time the client notices
        if count:
            self._counts["half_open" if half_open else "cut"] += 1
        self._stop_pumps(link)
        _log.debug("link %d cut%s", link.id, " half-open" if half_open else "")

    def _end_stall(self, link: _Link, then_cut: bool, half_open: bool) -> None:
        if link.state != "live":
            return
        link.stalls -= 1
        if then_cut:
            self._cut(link, half_open)
        else:
            link.wake.set()

    async def _flowing(self, link: _Link) -> None:
        """Return once the link may forward (not stalled, no partition) or is no longer live."""
        while link.state == "live" and (link.stalls or self._partitioned):
            link.wake.clear()
            await link.wake.wait()

    async def _pump_client(
        self, link: _Link, reader: asyncio.StreamReader, server: asyncio.StreamWriter
    ) -> None:
        try:
            while data := await reader.read(_CHUNK):
                await self._flowing(link)
                if out := self._from_client(link, data):
                    server.write(out)
                    await server.drain()
        except OSError as error:
            _log.debug("link %d: %s", link.id, error)

    async def _pump_server(
        self, link: _Link, reader: asyncio.StreamReader, client: asyncio.StreamWriter
    ) -> None:
        try:
            while data := await reader.read(_CHUNK):
                await self._flowing(link)
                out, struck = self._from_server(link, data)
                if out:
                    client.write(out)
                    await client.drain()
                if struck is not None:
                    armed, sql = struck
                    armed.link, armed.sql = self._info(link), sql
                    armed.fired.set()
                    self._counts["lost_reply"] += 1
                    self._cut(link, armed.half_open, count=False)
                    return
            if link.groups and link.groups[0].answer:  # the server hung up while one was held
                client.write(bytes(link.groups[0].answer))
        except OSError as error:
            _log.debug("link %d: %s", link.id, error)

    # -- what goes through ---------------------------------------------------------------

    def _from_client(self, link: _Link, data: bytes) -> bytes:
        out = bytearray()
        for piece in link.from_client.feed(data):
            out += piece.raw
            if piece.first and piece.body is not None:
                self._on_client_message(link, piece.kind, piece.body)
            elif piece.first:
                self._on_client_header(link, piece.kind)
        return bytes(out)

    def _on_client_header(self, link: _Link, kind: str | None) -> None:
        if kind == "S":  # Sync: the extended-protocol request is complete
            self._group_in_progress(link)
            link.open_group = None
        elif kind == "F":  # FunctionCall: answered on its own
            link.groups.append(_Group())
        elif kind in ("D", "C", "H"):  # Describe, Close, Flush: part of the request
            self._group_in_progress(link)

    def _on_client_message(self, link: _Link, kind: str | None, body: bytes) -> None:
        if kind == "startup":
            self._on_startup(link, body)
        elif kind == "Q":
            group = _Group()
            link.groups.append(group)
            self._match(link, group, _cstrings(body, 1)[0])
        elif kind == "P":
            name, query = _cstrings(body, 2)
            link.statements[name] = query
            self._group_in_progress(link)
        elif kind == "B":
            portal, statement = _cstrings(body, 2)
            link.portals[portal] = link.statements.get(statement, "")
            self._group_in_progress(link)
        elif kind == "E":
            group = self._group_in_progress(link)
            self._match(link, group, link.portals.get(_cstrings(body, 1)[0], ""))

    def _on_startup(self, link: _Link, body: bytes) -> None:
        (code,) = struct.unpack_from("!I", body)
        if code in (_SSL_REQUEST, _GSSENC_REQUEST):
            link.from_server.single_bytes += 1  # 'N', or 'S'/'G' and then TLS or GSS
        elif code == _CANCEL_REQUEST:
            link.go_opaque()  # the server just closes the connection
        elif code >> 16 == 3:
            params = _startup_params(body[4:])
            link.user = params.get("user", "")
            link.database = params.get("database", link.user)
            link.application_name = params.get("application_name", "")
            link.from_client.mode = "typed"
            link.groups.append(_Group())  # the server's startup answer ends in a ReadyForQuery
        else:
            link.go_opaque()

    def _group_in_progress(self, link: _Link) -> _Group:
        if link.open_group is None:
            link.open_group = _Group()
            link.groups.append(link.open_group)
        return link.open_group

    def _match(self, link: _Link, group: _Group, sql: str) -> None:
        for armed in self._armed:
            if (
                armed._active
                and all(armed is not other for other, _ in group.candidates)
                and armed._matches(link.application_name, sql)
            ):
                group.candidates.append((armed, sql))

    def _from_server(self, link: _Link, data: bytes) -> tuple[bytes, tuple[Armed, str] | None]:
        """The bytes to forward now, and the fault that strikes after them if one does."""
        out = bytearray()
        for piece in link.from_server.feed(data):
            if piece.kind == "byte":
                if piece.raw in (b"S", b"G"):
                    link.go_opaque()  # TLS or GSS from here: nothing more to parse
                out += piece.raw
                continue
            group = link.groups[0] if link.groups else None
            if group is not None and (
                group.answer or any(armed._active for armed, _ in group.candidates)
            ):
                group.answer += piece.raw  # the answer to a request a fault waits for
                group.error = group.error or (piece.first and piece.kind == "E")
            else:
                out += piece.raw
            if piece.kind == "S" and piece.body is not None:
                name, value = _cstrings(piece.body, 2)
                if name == "application_name":
                    link.application_name = value
            elif piece.kind == "Z" and piece.body is not None and group is not None:
                self._round_trips[link.application_name] += 1
                link.groups.popleft()
                if group.candidates:
                    struck = self._strike(group, piece.body[:1])
                    if struck is not None:
                        return bytes(out), struck
                    out += group.answer
        return bytes(out), None

    def _strike(self, group: _Group, status: bytes) -> tuple[Armed, str] | None:
        """The first fault waiting on this answered request that now fires, claimed."""
        for armed, sql in group.candidates:
            if not armed._active:
                continue
            if armed.only_when_idle_after and (status != b"I" or group.error):
                continue
            armed._active = False
            self._armed.remove(armed)
            return armed, sql
        return None


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        loop.close()


def _cstrings(body: bytes, count: int) -> list[str]:
    """The first `count` NUL-terminated strings of a message body ("" for missing ones)."""
    parts = body.split(b"\0", count)[:count]
    parts += [b""] * (count - len(parts))
    return [part.decode("utf-8", "replace") for part in parts]


def _startup_params(data: bytes) -> dict[str, str]:
    words = [word.decode("utf-8", "replace") for word in data.split(b"\0")]
    params: dict[str, str] = {}
    for key, value in zip(words[::2], words[1::2], strict=False):
        if not key:
            break
        params[key] = value
    return params


def _upstream_of(url: str) -> tuple[Literal["unix", "tcp"], str, int]:
    """Where the server of a PostgreSQL URL listens: ("unix", socket file, port) or
    ("tcp", host, port). The first host of several; a query parameter wins over the netloc."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError(f"not a PostgreSQL URL: {url!r}")
    hostport = parts.netloc.rpartition("@")[2].split(",")[0]
    if hostport.startswith("["):  # [IPv6]:port
        host, _, rest = hostport[1:].partition("]")
        port_text = rest.removeprefix(":")
    else:
        host, _, port_text = hostport.partition(":")
    host = unquote(host)
    params = dict(parse_qsl(parts.query, keep_blank_values=True))
    host = (params.get("hostaddr") or params.get("host") or host).split(",")[0]
    port_text = (params.get("port") or port_text).split(",")[0]
    port = int(port_text) if port_text else 5432
    if not host:  # libpq's default: a Unix socket in its default directory
        host = os.environ.get("PGHOST") or (
            "/var/run/postgresql" if os.path.isdir("/var/run/postgresql") else "/tmp"  # noqa: S108
        )
    if host.startswith("/"):
        return "unix", f"{host}/.s.PGSQL.{port}", port
    return "tcp", host, port
