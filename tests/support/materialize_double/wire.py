"""The PostgreSQL wire protocol, from buenavista, adapted where it falls short.

buenavista 0.5.0 gives the threaded socketserver, the startup/SSL answer, the
connection context (prepared statements, portals) and most message writers. The
handler below overrides what the double needs done differently; each override
says why.
"""

from __future__ import annotations

import io
import logging
import select
import socket
import struct
from decimal import Decimal
from typing import TYPE_CHECKING, Any

# buenavista ships no type information (no py.typed): its names are Any to mypy.
from buenavista.core import Connection  # type: ignore[import-untyped]
from buenavista.postgres import (  # type: ignore[import-untyped]
    BuenaVistaHandler,
    BuenaVistaServer,
    BVContext,
)

from .collection import Column, TextRow
from .session import Dropped, Result, Session
from .sql import SqlError, parse, split_statements

if TYPE_CHECKING:
    from .double import MaterializeDouble

logger = logging.getLogger(__name__)
# buenavista logs every statement at INFO and every error with a traceback.
logging.getLogger("buenavista").setLevel(logging.WARNING)

_SSL_REQUEST, _GSSENC_REQUEST, _CANCEL_REQUEST = 80877103, 80877104, 80877102
_TX_STATUS = {"idle": b"I", "open": b"T", "failed": b"E"}


def _message(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!i", len(body) + 4) + body


def _row_description(columns: list[Column]) -> bytes:
    body = bytearray(struct.pack("!h", len(columns)))
    for column in columns:
        body += column.name.encode() + b"\x00"
        body += struct.pack("!ihihih", 0, 0, column.oid, column.size, -1, 0)
    return _message(b"T", bytes(body))


def _data_row(row: TextRow) -> bytes:
    body = bytearray(struct.pack("!h", len(row)))
    for value in row:
        if value is None:
            body += struct.pack("!i", -1)
        else:
            data = value.encode()
            body += struct.pack("!i", len(data)) + data
    return _message(b"D", bytes(body))


def _binary_param(oid: int, data: bytes) -> str:
    """A parameter psycopg sent in binary, as text (buenavista knows few binary types)."""
    if oid in (20, 23, 21):
        return str(int.from_bytes(data, "big", signed=True))
    if oid == 16:
        return "t" if data == b"\x01" else "f"
    if oid == 701:
        return repr(struct.unpack("!d", data)[0])
    if oid == 1700:
        ndigits, weight, sign, _dscale = struct.unpack("!hhHh", data[:8])
        if sign == 0xC000:
            return "NaN"
        digits = struct.unpack(f"!{ndigits}h", data[8 : 8 + 2 * ndigits])
        value = sum(Decimal(d) * Decimal(10000) ** (weight - i) for i, d in enumerate(digits))
        return format(-value if sign == 0x4000 else value, "f")
    if oid in (0, 25, 1043, 705):
        return data.decode()
    raise SqlError("0A000", f"binary parameters of type {oid} are not supported by the double")


class DoubleConnection(Connection):  # type: ignore[misc]  # buenavista's class is Any
    """buenavista's connection factory: a Session per client, and the startup parameters."""

    def __init__(self, double: MaterializeDouble) -> None:
        super().__init__()
        self.double = double

    def new_session(self) -> Session:
        return Session(self.double)

    def parameters(self) -> dict[str, str]:
        return self.double.parameters()


class DoubleHandler(BuenaVistaHandler):  # type: ignore[misc]  # buenavista's class is Any
    server: DoubleServer

    def setup(self) -> None:
        super().setup()
        self.session: Session | None = None
        self.skipping = False  # after an extended-protocol error: discard until Sync
        self.server.double._thread_started()

    def handle(self) -> None:
        # Replaces buenavista's loop, which logs and answers with an ErrorResponse when
        # the client goes away, cannot drop a connection, and does not skip messages
        # after an error until Sync for every message type.
        double = self.server.double
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        ctx = None
        try:
            ctx = self.handle_startup(self.server.conn)
            if ctx is None:
                return
            session: Session = ctx.session
            session.pid, session.prepared = ctx.process_id, ctx.stmts
            session.user = ctx.params.get("user", session.user)
            session.peer_closed = self._peer_closed
            self.session = session
            double._attach(self, ctx)
            if not self._authenticate():
                return
            self.send_auth_request(ctx)  # AuthenticationOk, ParameterStatus, key, ready
            self._serve(ctx)
        except (Dropped, EOFError, OSError):
            pass  # the client left, or the double cut the connection
        except Exception:
            logger.exception("materialize double: unexpected error; closing the connection")
        finally:
            if ctx is not None:
                double._detach(self, ctx)
                self.server.conn.close_session(ctx.session)
            double._thread_finished()

    def _authenticate(self) -> bool:
        """Ask for the password in cleartext when the double has one, as Materialize does;
        a wrong one is FATAL 28P01 "invalid password" (src/pgwire/src/protocol.rs)."""
        expected = self.server.double.password
        if expected is None:
            return True
        self.wfile.write(_message(b"R", struct.pack("!i", 3)))  # AuthenticationCleartextPassword
        kind = self._read(1)
        (length,) = struct.unpack("!i", self._read(4))
        payload = self._read(length - 4)
        if kind == b"p" and payload.rstrip(b"\x00").decode() == expected:
            return True
        self.send_error(SqlError("28P01", "invalid password"), severity="FATAL")
        return False

    def _await_message(self, session: Session) -> bool:
        """Wait for the client's next message; False once the session has been idle in a
        transaction for longer than its idle_in_transaction_session_timeout."""
        timeout = session.idle_timeout() if session.in_transaction() else None
        if timeout is None:
            return True
        self.request.settimeout(0)
        try:
            if self.rfile.peek(1):  # already buffered (or just arrived)
                return True
        except OSError:
            return True  # the read that follows reports it
        finally:
            self.request.settimeout(None)
        readable, _, _ = select.select([self.request], [], [], timeout)
        return bool(readable)

    def drop(self) -> None:
        """Cut the connection without a protocol message, as a crashed server would."""
        if self.session is not None:
            self.session.dropped = True
        try:
            self.request.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _read(self, n: int) -> bytes:
        data = self.rfile.read(n)
        if len(data) < n:
            raise EOFError
        return bytes(data)

    def _peer_closed(self) -> bool:
        """Whether the client closed its end (checked while a FETCH waits)."""
        try:
            readable, _, _ = select.select([self.request], [], [], 0)
            if not readable:
                return False
            return self.request.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) in (b"", b"X")
        except (BlockingIOError, InterruptedError):
            return False
        except (OSError, ValueError):
            return True

    def handle_startup(self, conn: DoubleConnection) -> Any:
        # Replaces buenavista's: its cancel request closes the other session (and then
        # fails with a KeyError), and it refuses GSSENCRequest and protocol 3.x > 3.0.
        while True:
            length, code = struct.unpack("!II", self._read(8))
            if code in (_SSL_REQUEST, _GSSENC_REQUEST):
                self.send_notice()  # buenavista's "N": no encryption, go on in clear
                continue
            if code == _CANCEL_REQUEST:
                pid, secret = struct.unpack("!II", self._read(8))
                self.server.double._cancel(pid, secret)
                return None
            if code >> 16 != 3:
                self.send_error(SqlError("08P01", f"unsupported frontend protocol {code}"))
                return None
            fields = self._read(length - 8).split(b"\x00")
            params = {
                k.decode(): v.decode() for k, v in zip(fields[::2], fields[1::2], strict=False) if k
            }
            unknown = [k for k in params if k.startswith("_pq_.")]
            if code & 0xFFFF or unknown:
                body = struct.pack("!ii", 3 << 16, len(unknown))
                body += b"".join(k.encode() + b"\x00" for k in unknown)
                self.wfile.write(_message(b"v", body))  # NegotiateProtocolVersion: 3.0
            return BVContext(conn.create_session(), None, params)

    def _serve(self, ctx: Any) -> None:
        handlers = {
            b"P": self.handle_parse,
            b"B": self.handle_bind,
            b"D": self.handle_describe,
            b"E": self.handle_execute,
            b"C": self.handle_close,
        }
        while True:
            if not self._await_message(ctx.session):
                # AdapterError::IdleInTransactionSessionTimeout (src/adapter/src/error.rs)
                self.send_error(
                    SqlError("25P03", "terminating connection due to idle-in-transaction timeout"),
                    severity="FATAL",
                )
                return
            kind = self.rfile.read(1)
            if not kind or kind == b"X":
                return
            (length,) = struct.unpack("!i", self._read(4))
            payload = self._read(length - 4)
            if kind == b"S":
                self.skipping = False
                self.send_ready_for_query(ctx)
            elif kind == b"Q":
                self._simple_query(ctx, payload)
            elif self.skipping or kind in (b"H", b"p"):
                pass  # Flush: nothing is buffered; a password: none is asked, any is fine
            elif kind in handlers:
                try:
                    handlers[kind](ctx, payload)
                except SqlError as exc:
                    self._fail(ctx, exc)
                    self.skipping = True
            else:
                self.send_error(SqlError("08P01", f"unsupported frontend message {kind!r}"))
                return

    # -- simple query --------------------------------------------------------------------

    def _simple_query(self, ctx: Any, payload: bytes) -> None:
        # Replaces buenavista's handle_query: one result per statement of a multi-statement
        # query, real command tags, errors with a SQLSTATE, no result after an error.
        session: Session = ctx.session
        text = payload.rstrip(b"\x00").decode()
        try:
            statements = split_statements(text)
            if not statements:
                self.wfile.write(_message(b"I", b""))  # EmptyQueryResponse
            for sql, tokens in statements:
                self._send_result(session.run(sql, tokens, None, "simple"), describe=True)
        except SqlError as exc:
            self._fail(ctx, exc)
        self.send_ready_for_query(ctx)

    def _fail(self, ctx: Any, exc: SqlError) -> None:
        """Report an error; inside a transaction block, the block is now failed."""
        if ctx.session.tx == "open":
            ctx.session.tx = "failed"
        self.send_error(exc, ctx)

    # -- extended query ------------------------------------------------------------------

    def handle_parse(self, ctx: Any, payload: bytes) -> None:
        # Checks the statement first: a syntax error belongs to Parse, as in PostgreSQL.
        name, rest = payload.split(b"\x00", 1)
        sql = rest.split(b"\x00", 1)[0].decode()
        statements = split_statements(sql)
        if len(statements) > 1:
            raise SqlError("42601", "cannot insert multiple commands into a prepared statement")
        if statements:
            try:
                parse(*statements[0], None)
            except SqlError:
                self.server.double._record(statements[0][0], "extended", ctx.process_id)
                raise
        if name and name.decode() in ctx.stmts:
            raise SqlError("42P05", f'prepared statement "{name.decode()}" already exists')
        super().handle_parse(ctx, payload)

    def handle_bind(self, ctx: Any, payload: bytes) -> None:
        # Replaces buenavista's: it parses text parameters of unknown type as dates
        # (dateutil) and knows few binary types. Values are kept as text.
        buf = io.BytesIO(payload)

        def cstring() -> str:
            chars = bytearray()
            while (byte := buf.read(1)) not in (b"\x00", b""):
                chars += byte
            return chars.decode()

        def int16s() -> list[int]:
            (count,) = struct.unpack("!h", buf.read(2))
            return list(struct.unpack(f"!{count}h", buf.read(2 * count)))

        portal, name = cstring(), cstring()
        if name not in ctx.stmts:
            raise SqlError("26000", f'prepared statement "{name}" does not exist')
        oids = ctx.stmts[name][1]
        formats = int16s()
        (count,) = struct.unpack("!h", buf.read(2))
        values: list[str | None] = []
        for i in range(count):
            (size,) = struct.unpack("!i", buf.read(4))
            if size < 0:
                values.append(None)
                continue
            data = buf.read(size)
            binary = (formats[i] if len(formats) > 1 else (formats or [0])[0]) == 1
            oid = oids[i] if i < len(oids) else 0
            values.append(_binary_param(oid, data) if binary else data.decode())
        if any(fmt == 1 for fmt in int16s()):
            raise SqlError("0A000", "binary results are not supported by the double")
        ctx.add_portal(portal, name, values, [])
        self.send_bind_complete()

    def handle_describe(self, ctx: Any, payload: bytes) -> None:
        # Replaces buenavista's, which runs the statement to describe it (and caches the
        # result for Execute). Describing needs no running here: a FETCH runs exactly
        # once, at Execute, and a Describe never consumes rows or a fail_next.
        session: Session = ctx.session
        kind, name = payload[:1], payload[1:-1].decode()
        if kind == b"S":
            if name not in ctx.stmts:
                raise SqlError("26000", f'prepared statement "{name}" does not exist')
            sql, oids = ctx.stmts[name]
            self.send_paramter_description(oids)
            columns = self._describe_sql(session, sql, None)
        elif name in ctx.portals:
            statement, params, _formats = ctx.portals[name]
            columns = self._describe_sql(session, ctx.stmts[statement][0], params)
        elif name in session.cursors:  # a DECLAREd cursor is a portal too (psycopg's
            columns = session.cursors[name].columns  # server-side cursors describe it)
        else:
            raise SqlError("34000", f'portal "{name}" does not exist')
        if columns is None:
            self.wfile.write(_message(b"n", b""))  # NoData
        else:
            self.wfile.write(_row_description(columns))

    @staticmethod
    def _describe_sql(
        session: Session, sql: str, params: list[str | None] | None
    ) -> list[Column] | None:
        statements = split_statements(sql)
        return session.describe(parse(*statements[0], params)) if statements else None

    def handle_execute(self, ctx: Any, payload: bytes) -> None:
        # Replaces buenavista's: runs the statement (once per Execute), sends real tags.
        # The row limit is ignored (libpq, hence psycopg, always asks for all rows).
        name = payload.split(b"\x00", 1)[0].decode()
        if name not in ctx.portals:
            raise SqlError("34000", f'portal "{name}" does not exist')
        statement, params, _formats = ctx.portals[name]
        statements = split_statements(ctx.stmts[statement][0])
        if not statements:
            self.wfile.write(_message(b"I", b""))
            return
        sql, tokens = statements[0]
        self._send_result(ctx.session.run(sql, tokens, params, "extended"), describe=False)

    def handle_close(self, ctx: Any, payload: bytes) -> None:
        # Replaces buenavista's, which fails on a name it does not hold (PostgreSQL does not).
        kind, name = payload[:1], payload[1:-1].decode()
        (ctx.stmts if kind == b"S" else ctx.portals).pop(name, None)
        self.send_close_complete()

    # -- responses -----------------------------------------------------------------------

    def _send_result(self, result: Result, *, describe: bool) -> None:
        out = bytearray()
        if describe and result.columns is not None:
            out += _row_description(result.columns)
        rows, drop = result.rows, False
        if result.subscribe_rows:
            sendable, drop = self.server.double._claim_rows(len(rows))
            rows = rows[:sendable]
        for row in rows:
            out += _data_row(row)
        if not drop:
            tag = result.tag + "\x00"
            out += _message(b"C", tag.encode())
        self.wfile.write(bytes(out))
        if result.subscribe_rows:
            self.server.double._rows_sent_add(len(rows))
        if drop:
            self.drop()
            raise Dropped

    def send_error(self, exception: Exception, ctx: Any = None, severity: str = "ERROR") -> None:
        # Replaces buenavista's, which sends only a message: psycopg needs the severity
        # and the SQLSTATE to raise the right psycopg.errors class.
        if isinstance(exception, SqlError):
            sqlstate, message, detail = exception.sqlstate, exception.message, exception.detail
        else:
            sqlstate, message, detail = "XX000", str(exception), None
        body = bytearray()
        fields = [(b"S", severity), (b"V", severity), (b"C", sqlstate), (b"M", message)]
        if detail:
            fields.append((b"D", detail))
        for code, value in fields:
            body += code + value.encode() + b"\x00"
        self.wfile.write(_message(b"E", bytes(body + b"\x00")))

    def send_ready_for_query(self, ctx: Any) -> None:
        # Replaces buenavista's: the status comes from the session's transaction, so a
        # failed transaction block is 'E' whichever protocol the error came through.
        status = _TX_STATUS[ctx.session.tx] if ctx is not None else b"I"
        self.wfile.write(_message(b"Z", status))


class DoubleServer(BuenaVistaServer):  # type: ignore[misc]  # buenavista's class is Any
    """buenavista's threaded server on 127.0.0.1 (any free port), with the double's handler."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, double: MaterializeDouble) -> None:
        super().__init__(("127.0.0.1", 0), DoubleConnection(double))
        self.RequestHandlerClass = DoubleHandler
        self.double = double

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.exception("materialize double: error serving %s", client_address)
