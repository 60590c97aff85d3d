"""`serve`: a runnable that runs a `socketserver.BaseServer` until cancelled.

It plays the part of the Go supervisor's gRPC helper.
"""

from __future__ import annotations

import functools
import logging
import socket
import socketserver
import threading
import weakref
from typing import Callable, Union

from threadsup._errors import ThreadsupError
from threadsup._seconds import check_interval
from threadsup._token import CancelToken, Signal

#: What `serve` accepts: a server, or a zero-argument factory building a fresh one.
ServerSource = Union[socketserver.BaseServer, Callable[[], socketserver.BaseServer]]

#: The longest ``poll_interval`` `serve` uses: ``shutdown()`` waits for
#: ``serve_forever()`` to look at its flag, and a cancelled node must exit well
#: within its shutdown timeout.
MAX_POLL_INTERVAL = 1.0
#: Bound of the wait for the shutdown helper thread once ``serve_forever()`` has returned.
_JOIN_TIMEOUT = 5.0


class ServeError(ThreadsupError, RuntimeError):
    """A server given to `serve` cannot serve.

    Raised in the runnable (so the node dies, naming its DN) when the server
    instance was closed by an earlier incarnation, is not listening, or when
    ``serve_forever()`` returned while the node was not cancelled.
    """


def serve(server: ServerSource, *, poll_interval: float = 0.1) -> Callable[[CancelToken], None]:
    """A runnable that runs a `socketserver.BaseServer` until cancelled.

    ``server`` is a zero-argument factory returning a fresh server for each
    incarnation (recommended: restarts then just work), or a server instance,
    which can serve one incarnation only: a restart finds its socket closed
    and dies with `ServeError`.

    - HEALTHY once the server listens, just before ``serve_forever()``.
    - On cancellation ``server.shutdown()`` runs in a short-lived helper
      thread (``shutdown()`` blocks until ``serve_forever()`` notices, which
      takes up to ``poll_interval`` seconds), so the cancelling thread never
      waits. The node is then CANCELLED. A ``poll_interval`` above
      `MAX_POLL_INTERVAL` (1 s), infinity included, is taken as 1 s, so that
      a cancelled server never takes longer than that to notice.
    - An exception escaping ``serve_forever()`` is a death. An exception in a
      request handler is not (socketserver serves on); when the server class
      keeps the default ``handle_error``, it is logged at ERROR on the node's
      logger with the traceback instead of printed to stderr.
    - ``server_close()`` always runs at the end of the incarnation.
    - A handler blocked on an idle connection holds up a cancelled node: a
      ``TCPServer`` without mix-in runs it in the node's thread, and
      ``ThreadingTCPServer`` (``daemon_threads`` false) joins it in
      ``server_close()``. Give handlers a ``timeout``, or a threading server
      ``daemon_threads = True``.
    """
    poll = min(check_interval("poll_interval of serve()", poll_interval), MAX_POLL_INTERVAL)
    if isinstance(server, socketserver.BaseServer):
        return _Serve(None, server, poll)
    if not callable(server):
        raise TypeError(
            "serve() takes a socketserver.BaseServer or a zero-argument factory "
            f"returning one, not {server!r}"
        )
    return _Serve(server, None, poll)


#: Every server instance `serve` has run: each serves one incarnation only.
_claimed: weakref.WeakSet[socketserver.BaseServer] = weakref.WeakSet()
_claimed_lock = threading.Lock()


class _Serve:
    """The runnable `serve` returns."""

    def __init__(
        self,
        factory: Callable[[], socketserver.BaseServer] | None,
        instance: socketserver.BaseServer | None,
        poll_interval: float,
    ) -> None:
        self._factory = factory
        self._instance = instance
        self._poll_interval = poll_interval

    def __repr__(self) -> str:
        return f"serve({self._factory if self._factory is not None else self._instance!r})"

    def __call__(self, token: CancelToken) -> None:
        server = self._obtain(token)
        try:
            self._serve(server, token)
        except BaseException:
            _close_quietly(server, token)
            raise
        server.server_close()

    def _obtain(self, token: CancelToken) -> socketserver.BaseServer:
        if self._factory is not None:
            server = self._factory()
            if not isinstance(server, socketserver.BaseServer):
                raise TypeError(
                    f"{token.dn}: the server factory {self._factory!r} returned {server!r}, "
                    "not a socketserver.BaseServer"
                )
        else:
            assert self._instance is not None
            server = self._instance
        with _claimed_lock:
            reused = server in _claimed
            _claimed.add(server)
        if reused:
            how = (
                "the factory returned a server that serve() has already run"
                if self._factory is not None
                else "serve() closed it when the incarnation that ran it ended"
            )
            raise ServeError(
                f"{token.dn}: {server!r} cannot serve again: {how}, and a closed server "
                "cannot be reopened. Give serve() a factory that builds a fresh server for "
                "each incarnation, e.g. serve(lambda: ThreadingHTTPServer(address, Handler))"
            )
        return server

    def _serve(self, server: socketserver.BaseServer, token: CancelToken) -> None:
        _check_listening(server, token.dn)
        if type(server).handle_error is socketserver.BaseServer.handle_error:
            server.handle_error = functools.partial(  # type: ignore[method-assign]
                _log_request_error, token.logger
            )
        # Raises Cancelled if cancelled already: nothing registered, nothing to undo.
        token.signal(Signal.HEALTHY)
        stopper = _Stopper(server, token.dn)
        unregister = token.on_cancel(stopper.request)
        entered = False
        try:
            if not stopper.inline:
                entered = True
                server.serve_forever(poll_interval=self._poll_interval)
        finally:
            unregister()
            stopper.finish(entered)
        if not token.cancelled:
            raise ServeError(
                f"{token.dn}: serve_forever() of {server!r} returned while the node was not "
                "cancelled: was server.shutdown() called from elsewhere? "
                "Stop a supervised server by cancelling its node"
            )


class _Stopper:
    """Stops ``serve_forever()`` from outside its thread, without blocking the canceller.

    ``shutdown()`` blocks until ``serve_forever()`` has noticed the request (up
    to its ``poll_interval``), and deadlocks if ``serve_forever()`` never runs.
    So `request`, the ``on_cancel`` callback, starts a helper thread to call
    it, and the serving thread joins that helper once ``serve_forever()`` has
    returned, when ``shutdown()`` returns at once.
    """

    def __init__(self, server: socketserver.BaseServer, dn: str) -> None:
        self._server = server
        self._dn = dn
        self._serving_thread = threading.get_ident()
        self._lock = threading.Lock()
        self._finished = False
        self._helper: threading.Thread | None = None
        #: The token was cancelled already when the callback was registered.
        self.inline = False

    def request(self) -> None:
        if threading.get_ident() == self._serving_thread:
            # Called at once by on_cancel(): serve_forever() has not started, so do
            # not start it (and shutdown() here would wait for it forever).
            self.inline = True
            return
        with self._lock:
            if self._finished:
                return
            helper: threading.Thread | None = threading.Thread(
                target=self._server.shutdown, name=f"{self._dn} shutdown", daemon=True
            )
            try:
                helper.start()  # type: ignore[union-attr]
            except RuntimeError:  # no thread to be had: block this thread instead
                helper = None
            else:
                self._helper = helper
        if helper is None:
            self._server.shutdown()

    def finish(self, entered: bool) -> None:
        """Called by the serving thread once it no longer serves."""
        with self._lock:
            self._finished = True
            helper = self._helper
        if helper is None:
            return
        if not entered:
            # An exception (an asynchronous one) landed between registering the
            # callback and calling serve_forever(): the helper's shutdown() waits
            # for a serve_forever() to end. Its stop request is set, or about to be,
            # so this one returns as soon as it sees it.
            self._server.serve_forever(poll_interval=0.01)
        helper.join(_JOIN_TIMEOUT)


def _check_listening(server: socketserver.BaseServer, dn: str) -> None:
    sock = getattr(server, "socket", None)
    if not isinstance(sock, socket.socket):
        return  # not a socket server we know how to check
    if sock.fileno() == -1:
        raise ServeError(
            f"{dn}: the socket of {server!r} is closed: a closed server cannot serve again. "
            "Give serve() a factory that builds a fresh server for each incarnation"
        )
    if sock.type != socket.SOCK_STREAM or not hasattr(socket, "SO_ACCEPTCONN"):
        return
    try:
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    except OSError:
        return
    if not listening:
        raise ServeError(
            f"{dn}: {server!r} is not listening: create it with bind_and_activate=True "
            "(the default), or call server_bind() and server_activate() before serving"
        )


def _log_request_error(logger: logging.Logger, request: object, client_address: object) -> None:
    """`socketserver.BaseServer.handle_error`, on the node's logger instead of stderr."""
    logger.error(
        "error while handling a request from %s",
        client_address,
        exc_info=True,
        extra={"client_address": str(client_address)},
    )


def _close_quietly(server: socketserver.BaseServer, token: CancelToken) -> None:
    """``server_close()`` on the way out of a failure: log its error, never mask the first."""
    try:
        server.server_close()
    except Exception:
        token.logger.error("server_close() of %r failed", server, exc_info=True)
