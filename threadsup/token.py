"""CancelToken: what a runnable receives, one per incarnation of its node.

A token plays the part of Go's context: it tells the runnable when to stop,
carries its DN and logger, and is how it starts children and signals its
state. Tokens are cancelled under the tree lock (so every decision sees one
consistent view) and *fired* afterwards, outside it: firing wakes waiters and
runs ``on_cancel`` callbacks in the cancelling thread.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Callable

from threadsup import logs
from threadsup.errors import Cancelled, require_callable

if TYPE_CHECKING:
    from threadsup.node import Node


class Signal(enum.Enum):
    """What a runnable tells its supervisor about itself."""

    #: Ready to serve. Allowed only from NEW; resets the node's backoff.
    HEALTHY = "HEALTHY"
    #: Finished its work for good: not restarted on its own. Allowed only from HEALTHY.
    DONE = "DONE"


def _noop() -> None:
    pass


class CancelToken:
    """Cooperative cancellation and the runnable's handle on its node.

    Every incarnation of a node gets a fresh token; cancelling a token cancels
    the tokens of all the node's descendants. A token of an old incarnation is
    always cancelled, so it can never touch the new one. Safe to use from any
    thread the runnable starts.
    """

    __slots__ = ("_callbacks", "_cancelled", "_event", "_node")

    def __init__(self, node: Node) -> None:
        self._node = node
        self._cancelled = False
        # Created on first use: most tokens are never waited on with both.
        self._event: threading.Event | None = None
        self._callbacks: dict[object, Callable[[], object]] | None = None

    @property
    def dn(self) -> str:
        """The node's distinguished name, e.g. ``root.server.conn``."""
        return self._node.dn

    @property
    def name(self) -> str:
        """The node's own name, the last part of its DN."""
        return self._node.name

    @property
    def logger(self) -> logging.Logger:
        """The node's logger, named ``<base>.<dn>``."""
        return self._node.logger

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def __repr__(self) -> str:
        return f"<CancelToken {self.dn}{' cancelled' if self._cancelled else ''}>"

    def wait(self, timeout: float | None = None) -> bool:
        """Block until cancelled or until ``timeout`` seconds pass; return `cancelled`."""
        if self._cancelled:
            return True
        with self._node.tree.token_lock:
            if self.cancelled:  # it may have been cancelled since the check above
                return True
            if self._event is None:
                self._event = threading.Event()
            event = self._event
        event.wait(timeout)
        return self._cancelled

    def raise_if_cancelled(self) -> None:
        """Raise `Cancelled` if this token is cancelled: a checkpoint."""
        if self._cancelled:
            raise Cancelled(self.dn)

    def on_cancel(self, callback: Callable[[], object]) -> Callable[[], None]:
        """Call ``callback()`` once when this token is cancelled.

        If it already is, the callback runs at once, in the caller. Callbacks run
        in the cancelling thread, never under the supervisor's lock, and should
        not block; one that raises is logged and never re-raised. Returns a
        function that unregisters the callback.
        """
        require_callable(callback, f"the on_cancel() callback of {self.dn}")
        key = object()
        with self._node.tree.token_lock:
            if not self._cancelled:
                if self._callbacks is None:
                    self._callbacks = {}
                self._callbacks[key] = callback
                return lambda: self._unregister(key)
        self._call(callback)
        return _noop

    def run(self, name: str, runnable: Runnable) -> None:
        """Start one child in a group of its own: ``run_group({name: runnable})``."""
        self.raise_if_cancelled()
        self._node.tree.check_name(name, self.dn)
        self.run_group({name: runnable})

    def run_group(self, runnables: Mapping[str, Runnable]) -> None:
        """Start children as one group: when a member dies, all restart together.

        Allowed only while this node is NEW. All or nothing: on any error no child
        is created.
        """
        self.raise_if_cancelled()
        self._node.add_group(self, runnables)

    def signal(self, signal: Signal) -> None:
        """Tell the supervisor this node is HEALTHY (from NEW) or DONE (from HEALTHY)."""
        self.raise_if_cancelled()
        if not isinstance(signal, Signal):
            raise TypeError(f"signal() of {self.dn} takes a threadsup.Signal, not {signal!r}")
        self._node.apply_signal(self, signal)

    # The supervisor's side. ``_mark`` runs under the tree lock; ``_fire`` outside it.

    def _mark(self) -> bool:
        """Set the cancelled flag; return whether it was newly set."""
        if self._cancelled:
            return False
        self._cancelled = True
        return True

    def _fire(self) -> None:
        """Wake waiters and run the callbacks of a marked token, in this thread."""
        with self._node.tree.token_lock:
            event, callbacks = self._event, self._callbacks
            self._callbacks = None
        if event is not None:
            event.set()
        if callbacks:
            for callback in callbacks.values():
                self._call(callback)

    def _call(self, callback: Callable[[], object]) -> None:
        try:
            callback()
        except BaseException as exc:  # the contract: a callback never harms anyone
            self._node.tree.events.emit(
                logging.ERROR,
                logs.CALLBACK_FAILED,
                self.dn,
                "on_cancel callback %r of %s raised %s",
                callback,
                self.dn,
                type(exc).__name__,
                exc_info=exc,
                logger=self._node.logger,
            )

    def _unregister(self, key: object) -> None:
        with self._node.tree.token_lock:
            if self._callbacks is not None:
                self._callbacks.pop(key, None)


#: A runnable: any callable taking its token. Its return value is ignored.
Runnable = Callable[[CancelToken], object]
