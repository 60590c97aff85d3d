"""CancelToken: what a runnable receives, one per incarnation of its node.

A token plays the part of Go's context: it tells the runnable when to stop,
carries its DN and logger, and is how it starts children and signals its
state. Tokens are cancelled under the tree lock (so every decision sees one
consistent view) and *fired* afterwards, outside it: firing wakes waiters and
runs ``on_cancel`` callbacks in the cancelling thread.
"""

from __future__ import annotations

import _thread
import collections
import concurrent.futures
import contextlib
import enum
import functools
import io
import logging
import math
import queue
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Callable, Protocol, TypeVar, cast

from threadsup import _logs
from threadsup._errors import Cancelled, DeadlineExceeded, require_callable
from threadsup._policy import Backoff, ChildPolicy, OnStuck, Restart
from threadsup._seconds import (
    check_instant,
    check_seconds,
    check_timeout,
    deadline_after,
    remaining,
    turn,
    wait_in_turns,
)

if TYPE_CHECKING:
    from threadsup._node import Node


class Signal(enum.Enum):
    """What a runnable tells its supervisor about itself."""

    #: Ready to serve. Allowed only from NEW; resets the node's backoff.
    HEALTHY = "HEALTHY"
    #: Finished its work for good: not restarted on its own. Allowed only from HEALTHY.
    DONE = "DONE"


_T = TypeVar("_T")


class Closable(Protocol):
    def close(self) -> object: ...


_C = TypeVar("_C", bound=Closable)


def _noop() -> None:
    pass


class CancelToken:
    """Cooperative cancellation and the runnable's handle on its node.

    Every incarnation of a node gets a fresh token; cancelling a token cancels
    the tokens of all the node's descendants. A token of an old incarnation is
    always cancelled, so it can never touch the new one. Safe to use from any
    thread the runnable starts.
    """

    __slots__ = (
        "_callbacks",
        "_cancelled",
        "_node",
        "_waiters",
        "abandoned",
        "callbacks_thread",
        "cancelled_at",
        "exited",
        "interrupted",
        "interruptible",
    )

    def __init__(self, node: Node) -> None:
        self._node = node
        self._cancelled = False
        # The supervisor's bookkeeping of this incarnation, under the tree lock:
        #: When the token was cancelled (`time.monotonic`), or None.
        self.cancelled_at: float | None = None
        #: Its runnable is running, so ``on_stuck="interrupt"`` may raise in its thread.
        self.interruptible = False
        #: Its thread was given up on while stuck: its exit no longer counts.
        self.abandoned = False
        #: ``on_stuck="interrupt"`` raised `Cancelled` in its thread, which
        #: therefore never runs another incarnation (see `threadsup._park`).
        self.interrupted = False
        #: Its runnable has returned or raised (the processor may not know yet).
        self.exited = False
        #: The thread running its ``on_cancel`` callbacks, while it does.
        self.callbacks_thread: threading.Thread | None = None
        # Created on first use: most tokens are never waited on with both.
        #: A locked lock per thread in `wait`, released by `_fire`: what an Event
        #: does, without an Event and a Condition per token.
        self._waiters: list[_thread.LockType] | None = None
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
        """Whether this token is cancelled: the runnable should return."""
        return self._cancelled

    @property
    def deadline(self) -> float | None:
        """When this token cancels itself (`time.monotonic` seconds), or ``None``."""
        return None

    def __repr__(self) -> str:
        return f"<CancelToken {self.dn}{' cancelled' if self._cancelled else ''}>"

    def wait(self, timeout: float | None = None) -> bool:
        """Block until cancelled or until ``timeout`` seconds pass; return `cancelled`.

        ``None`` or infinity waits for ever, ``0`` only looks.
        """
        until = deadline_after(check_timeout(f"timeout of wait() on {self.dn}", timeout))
        if self.cancelled:
            return True
        waiter = _thread.allocate_lock()
        waiter.acquire()
        with self._node.tree.token_lock:
            if self.cancelled:  # it may have been cancelled since the check above
                return True
            self._registry()._add_waiters([waiter])
        if not wait_in_turns(functools.partial(_acquire, waiter), until):
            with self._node.tree.token_lock:
                waiters = self._registry()._waiters
                if waiters is not None and waiter in waiters:
                    waiters.remove(waiter)
        return self.cancelled

    def raise_if_cancelled(self) -> None:
        """Raise `Cancelled` if this token is cancelled: a checkpoint."""
        if self.cancelled:
            raise Cancelled(self.dn)

    def on_cancel(self, callback: Callable[[], object]) -> Callable[[], None]:
        """Call ``callback()`` once when this token is cancelled.

        If it already is, the callback runs at once, in the caller. Callbacks run
        in the cancelling thread, never under the supervisor's lock, and should
        not block; one that raises is logged and never re-raised here, with one
        exception: a `KeyboardInterrupt` or `SystemExit` raised while a call that
        cancels (`Supervisor.restart`, say) runs it in its caller's own thread
        reaches that caller. Returns a function that unregisters the callback.
        """
        require_callable(callback, f"the on_cancel() callback of {self.dn}")
        key = object()
        with self._node.tree.token_lock:
            if not self.cancelled:
                self._registry()._add_callbacks({key: callback})
                return lambda: self._unregister(key)
        self._call(callback)
        return _noop

    def run(
        self,
        name: str,
        runnable: Runnable,
        *,
        restart: Restart = "permanent",
        max_restarts: int | None = None,
        within: float = 60.0,
        backoff: Backoff | None = None,
        shutdown_timeout: float | None = None,
        on_stuck: OnStuck = "wait",
        reuse_thread: bool | None = None,
    ) -> None:
        """Start one child in a group of its own: ``run_group({name: runnable})``."""
        self.raise_if_cancelled()
        self._node.tree.check_name(name, self.dn)
        policy = ChildPolicy(
            shutdown_timeout=shutdown_timeout,
            on_stuck=on_stuck,
            restart=restart,
            max_restarts=max_restarts,
            within=within,
            backoff=backoff,
            reuse_thread=reuse_thread,
            where=f"run() on {self.dn}",
        )
        self._add_group({name: runnable}, policy, dynamic=False)

    def run_group(
        self,
        runnables: Mapping[str, Runnable],
        *,
        restart: Restart = "permanent",
        max_restarts: int | None = None,
        within: float = 60.0,
        backoff: Backoff | None = None,
        shutdown_timeout: float | None = None,
        on_stuck: OnStuck = "wait",
        reuse_thread: bool | None = None,
    ) -> None:
        """Start children as one group: when a member dies, all restart together.

        Allowed only while this node is NEW. All or nothing: on any error no child
        is created. The keywords set every member's policy (see `ChildPolicy`):
        its restart type, restart intensity, backoff, how long it may take to
        exit once cancelled and what happens after that, and whether its
        incarnations reuse parked threads (``reuse_thread``; ``None`` follows
        the supervisor's ``reuse_threads``).
        """
        self.raise_if_cancelled()
        policy = ChildPolicy(
            shutdown_timeout=shutdown_timeout,
            on_stuck=on_stuck,
            restart=restart,
            max_restarts=max_restarts,
            within=within,
            backoff=backoff,
            reuse_thread=reuse_thread,
            where=f"run_group() on {self.dn}",
        )
        self._add_group(runnables, policy, dynamic=False)

    def spawn(
        self,
        name: str,
        runnable: Runnable,
        *,
        restart: Restart = "temporary",
        max_restarts: int | None = None,
        within: float = 60.0,
        backoff: Backoff | None = None,
        shutdown_timeout: float | None = None,
        on_stuck: OnStuck = "wait",
        reuse_thread: bool | None = None,
    ) -> str:
        """Add a child at run time, in a group of its own; return its DN.

        Allowed while this token is live, also after HEALTHY: one child per
        connection or per job. ``restart`` is ``"temporary"`` or ``"transient"``.
        The child is cancelled with this node and not re-created when it
        restarts; once it will not run again (a temporary child after any exit,
        a transient one once DONE) it leaves the tree, so its name is free again.
        """
        self.raise_if_cancelled()
        self._node.tree.check_name(name, self.dn)
        if restart not in ("temporary", "transient"):
            raise ValueError(
                f"spawn() under {self.dn} takes restart='temporary' or 'transient', "
                f"not {restart!r}: use run() for a permanent child"
            )
        policy = ChildPolicy(
            shutdown_timeout=shutdown_timeout,
            on_stuck=on_stuck,
            restart=restart,
            max_restarts=max_restarts,
            within=within,
            backoff=backoff,
            reuse_thread=reuse_thread,
            where=f"spawn() on {self.dn}",
        )
        self._add_group({name: runnable}, policy, dynamic=True)
        return f"{self.dn}.{name}"

    def _add_group(
        self, runnables: Mapping[str, Runnable], policy: ChildPolicy, *, dynamic: bool
    ) -> None:
        self._node.add_group(self, runnables, policy, dynamic=dynamic)

    def signal(self, signal: Signal) -> None:
        """Tell the supervisor this node is HEALTHY (from NEW) or DONE (from HEALTHY)."""
        self.raise_if_cancelled()
        if not isinstance(signal, Signal):
            raise TypeError(f"signal() of {self.dn} takes a threadsup.Signal, not {signal!r}")
        self._node.apply_signal(self, signal)

    # Blocking calls that wake on cancellation. Each checks the token first, so it
    # behaves the same whether the token was cancelled before or during the call.

    @contextlib.contextmanager
    def closing(self, resource: _C) -> Iterator[_C]:
        """Wake a thread blocked on ``resource`` when this token is cancelled,
        and close ``resource`` on leaving the block.

        The cancellation never waits for the resource's own locks. A socket, or
        a file that ``socket.makefile`` made (text or binary, for reading or
        writing), has its socket shut down, which wakes a blocked ``recv``,
        ``accept`` or ``readline`` (``close()`` would not, on Linux); the close
        waits for the block's end. Any other file object (`io.IOBase`: a pipe, a
        subprocess's stdout, `sys.stdin`, a file) is left alone until then: on
        Linux nothing done from another thread wakes a read from it, and its
        close would wait for the lock that the blocked read holds. Anything
        else is closed by the cancelling thread: not for objects bound to their
        thread (a `sqlite3` connection), whose failed close is logged at ERROR
        naming the resource, and tried again on leaving the block. The block
        is left only once the resource is closed. If the token is
        cancelled when the block is entered or left, `Cancelled` is raised
        there, replacing the error the woken call or the close raised (it is
        chained as ``__cause__``).
        """
        closer = _Closer(resource)
        unregister = self.on_cancel(closer)
        try:
            self.raise_if_cancelled()
            try:
                yield resource
            except Cancelled:
                raise
            except BaseException as exc:
                if self.cancelled:
                    raise Cancelled(self.dn) from exc
                raise
            self.raise_if_cancelled()
        finally:
            unregister()
            try:
                closer.close()
            except Exception as exc:  # a buffered writer's flush, refused by the shut-down socket
                if not self.cancelled:
                    raise
                raise Cancelled(self.dn) from exc

    def get(self, q: queue.Queue[_T], timeout: float | None = None) -> _T:
        """Take an item from ``q``, waking at once when this token is cancelled.

        Raises `Cancelled` on cancellation, leaving the queue's items in place
        (and passing a ``put()``'s wake-up it took on to another waiter), and
        `queue.Empty` when ``timeout`` seconds pass with nothing to take.
        """
        _require_queue(q, "get", self.dn)
        until = deadline_after(check_timeout(f"timeout of get() on {self.dn}", timeout))
        self.raise_if_cancelled()
        with q.mutex:
            if q._qsize():
                return _take(q)
        if timeout == 0:
            raise queue.Empty
        return self._when_ready(
            q.not_empty, lambda: q._qsize() > 0, until, queue.Empty, functools.partial(_take, q)
        )

    def put(self, q: queue.Queue[_T], item: _T, timeout: float | None = None) -> None:
        """Put ``item`` into ``q``, waking at once when this token is cancelled.

        Raises `Cancelled` on cancellation, with the item not put (and a
        ``get()``'s wake-up it took passed on to another waiter), and
        `queue.Full` when ``timeout`` seconds pass with ``q`` still full.
        """
        _require_queue(q, "put", self.dn)
        until = deadline_after(check_timeout(f"timeout of put() on {self.dn}", timeout))
        self.raise_if_cancelled()
        with q.mutex:
            if not _full(q):
                return _give(q, item)
        if timeout == 0:
            raise queue.Full
        self._when_ready(
            q.not_full, lambda: not _full(q), until, queue.Full, functools.partial(_give, q, item)
        )

    def wait_for(
        self,
        awaited: threading.Event | concurrent.futures.Future[Any] | CancelToken,
        timeout: float | None = None,
    ) -> bool:
        """Wait for an event to be set, a future to finish or a token to be cancelled.

        Returns ``True`` once it has (for an event, whenever `Event.wait` would:
        a ``set()`` counts even if ``clear()`` follows at once), ``False`` when
        ``timeout`` seconds pass first; raises `Cancelled` when this token is
        cancelled first.
        """
        until = deadline_after(check_timeout(f"timeout of wait_for() on {self.dn}", timeout))
        self.raise_if_cancelled()
        # Events and futures offer no way to wait on two things: wait on the
        # condition each notifies when it becomes ready (CPython's `_cond` and
        # `_condition`, stable since 3.2), as `Event.wait` and `Future.result` do.
        # `concurrent.futures.wait` would miss a pending future's cancel().
        condition: threading.Condition
        ready: Callable[[], bool]
        if isinstance(awaited, threading.Event):
            condition, ready = awaited._cond, awaited.is_set  # type: ignore[attr-defined]
        elif isinstance(awaited, concurrent.futures.Future):
            condition, ready = awaited._condition, awaited.done
        elif isinstance(awaited, CancelToken):
            waker = threading.Event()
            unregister_other = awaited.on_cancel(waker.set)
            unregister = self.on_cancel(waker.set)
            try:
                wait_in_turns(waker.wait, until)
            finally:
                unregister()
                unregister_other()
            self.raise_if_cancelled()
            return awaited.cancelled
        else:
            raise TypeError(
                f"wait_for() of {self.dn} takes a threading.Event, a concurrent.futures.Future "
                f"or a CancelToken, not {type(awaited).__name__}"
            )
        try:
            # Only set() and a future's end notify these conditions.
            return self._when_ready(
                condition, ready, until, _TimedOut, lambda: True, notify_means_ready=True
            )
        except _TimedOut:
            return False

    def _when_ready(
        self,
        condition: threading.Condition,
        ready: Callable[[], bool],
        deadline: float | None,
        timeout_error: type[Exception],
        then: Callable[[], _T],
        *,
        notify_means_ready: bool = False,
    ) -> _T:
        """``then()`` under ``condition`` once ``ready()``, or once a ``notify()``
        woke this thread if ``notify_means_ready``, waiting for it (see `_wait_on`).

        A call leaving with an exception while ``ready()`` holds may have been
        woken by a ``notify()`` meant for some waiter (a ``put()``'s, for a thread
        in ``q.get()``): it notifies once more, so that the wake-up goes on to
        another waiter instead of being lost.
        """
        waiter = _Waiter(condition)
        unregister = self.on_cancel(waiter.cancel)
        try:
            with condition:
                try:
                    while not ready():
                        if self._wait_on(waiter, deadline, timeout_error) and notify_means_ready:
                            break
                    self.raise_if_cancelled()
                except BaseException:
                    if ready():
                        condition.notify()
                    raise
                return then()
        finally:
            unregister()

    def _wait_on(
        self, waiter: _Waiter, deadline: float | None, timeout_error: type[Exception]
    ) -> bool:
        """One wait on the condition of ``waiter``, which the caller holds; return
        whether a ``notify()`` ended it (else the deadline or a `turn` did).

        Raises `Cancelled` if cancelled, before the wait or after it, and
        ``timeout_error`` once the deadline has passed.
        """
        self.raise_if_cancelled()
        if remaining(deadline) == 0:
            raise timeout_error
        # A wait cut short by `turn` comes back here through the caller's loop.
        notified = waiter.wait(turn(deadline))
        self.raise_if_cancelled()
        return notified

    # Deadlines, named after trio's: `fail_after` raises, `move_on_after` moves on.

    def fail_after(self, seconds: float) -> contextlib.AbstractContextManager[ScopedToken]:
        """A block whose token is cancelled ``seconds`` from now.

        Yields a scoped token: use it (``scoped.get(q)``, ``scoped.closing(sock)``,
        ...) inside the block. It is cancelled at the deadline or when this
        token is. If the deadline's `Cancelled` reaches the end of the block,
        `DeadlineExceeded` (a `TimeoutError`) is raised instead; a cancellation
        of this token propagates as `Cancelled`. ``seconds=inf`` never expires.
        """
        return self._scope(self._after("fail_after", seconds), fail=True)

    def fail_at(self, deadline: float) -> contextlib.AbstractContextManager[ScopedToken]:
        """`fail_after` with an absolute `time.monotonic` deadline; one already
        past expires at once, ``inf`` never."""
        return self._scope(self._at("fail_at", deadline), fail=True)

    def move_on_after(self, seconds: float) -> contextlib.AbstractContextManager[ScopedToken]:
        """Like `fail_after`, but the block just ends at the deadline.

        The deadline's `Cancelled` is swallowed at the end of the block; the
        scoped token's ``expired`` tells afterwards whether the deadline hit.
        """
        return self._scope(self._after("move_on_after", seconds), fail=False)

    def move_on_at(self, deadline: float) -> contextlib.AbstractContextManager[ScopedToken]:
        """`move_on_after` with an absolute `time.monotonic` deadline."""
        return self._scope(self._at("move_on_at", deadline), fail=False)

    def _after(self, method: str, seconds: object) -> float | None:
        return deadline_after(check_seconds(f"seconds of {method}() on {self.dn}", seconds))

    def _at(self, method: str, instant: object) -> float | None:
        checked = check_instant(f"deadline of {method}() on {self.dn}", instant)
        return None if checked == math.inf else checked

    @contextlib.contextmanager
    def _scope(self, deadline: float | None, *, fail: bool) -> Iterator[ScopedToken]:
        scoped = ScopedToken(self, deadline)
        try:
            yield scoped
        except Cancelled as exc:
            if not scoped.expired or self.cancelled:
                raise
            if fail:
                assert deadline is not None  # only a deadline expires
                raise DeadlineExceeded(
                    f"{self.dn} ran past its deadline "
                    f"({deadline - scoped.entered:.3f} s after entering the block)"
                ) from exc
        finally:
            scoped._detach()

    # The supervisor's side. ``_mark`` runs under the tree lock; ``_fire`` outside it.

    def _mark(self) -> bool:
        """Set the cancelled flag; return whether it was newly set."""
        if self._cancelled:
            return False
        self._cancelled = True
        self.cancelled_at = time.monotonic()
        return True

    def _unfired(self) -> bool:
        """Whether waiters or callbacks wait for a `_fire` (read without the lock:
        a stale answer only costs a `_fire` that finds nothing to do)."""
        return self._waiters is not None or self._callbacks is not None

    def _fire(self, raise_interrupts: bool = True) -> None:
        """Wake waiters and run the callbacks of a marked token, in this thread."""
        self._node.tree.fire((self,), raise_interrupts=raise_interrupts)

    def _take(self) -> tuple[list[_thread.LockType] | None, list[Callable[[], object]] | None]:
        """Take the waiters and callbacks of a marked token, for `Tree.wake`; the
        caller holds ``token_lock``."""
        waiters, callbacks = self._waiters, self._callbacks
        self._waiters = self._callbacks = None
        return waiters, None if callbacks is None else list(callbacks.values())

    def _run_callbacks(
        self, callbacks: list[Callable[[], object]], raise_interrupts: bool = False
    ) -> None:
        """Run callbacks taken by `_wake`, in this thread, marked as running them
        so that one that blocks is seen by the stuck checks.

        With ``raise_interrupts`` (this thread is the caller's own), the first
        `KeyboardInterrupt` or `SystemExit` a callback raises is re-raised once
        every callback has run; otherwise it is logged like any failure.
        """
        self.callbacks_thread = threading.current_thread()
        interrupt: BaseException | None = None
        try:
            for callback in callbacks:
                caught = self._call(callback, raise_interrupts)
                interrupt = interrupt or caught
        finally:
            self.callbacks_thread = None
            self._node.tree.callbacks_ran()
        if interrupt is not None:
            raise interrupt

    def _call(
        self, callback: Callable[[], object], raise_interrupts: bool = False
    ) -> BaseException | None:
        """Run one callback; return the interrupt to re-raise, if it raised one
        and ``raise_interrupts`` says the caller wants it."""
        try:
            callback()
        except (KeyboardInterrupt, SystemExit) as exc:
            if raise_interrupts:
                return exc
            self._callback_failed(callback, exc)
        except BaseException as exc:  # the contract: a callback never harms anyone
            self._callback_failed(callback, exc)
        return None

    def _callback_failed(self, callback: Callable[[], object], exc: BaseException) -> None:
        self._node.tree.events.emit(
            logging.ERROR,
            _logs.CALLBACK_FAILED,
            self.dn,
            "on_cancel callback %r of %s raised %s",
            callback,
            self.dn,
            type(exc).__name__,
            exc_info=exc,
            logger=self._node.logger,
            node=self._node,
            error=exc,
        )

    def _unregister(self, key: object) -> None:
        with self._node.tree.token_lock:
            callbacks = self._registry()._callbacks
            if callbacks is not None:
                callbacks.pop(key, None)

    def _registry(self) -> CancelToken:
        """The token whose firing wakes this one's waiters and runs its callbacks,
        where they are kept; the caller holds ``token_lock``."""
        return self

    def _add_waiters(self, waiters: list[_thread.LockType]) -> None:
        """Keep wait locks for `Tree.wake` to release; the caller holds ``token_lock``."""
        if self._waiters is None:
            self._waiters = []
        self._waiters.extend(waiters)

    def _add_callbacks(self, callbacks: dict[object, Callable[[], object]]) -> None:
        """Keep callbacks for `Tree.wake` to take; the caller holds ``token_lock``."""
        if self._callbacks is None:
            self._callbacks = {}
        self._callbacks.update(callbacks)


#: A runnable: any callable taking its token. Its return value is ignored.
Runnable = Callable[[CancelToken], object]


class ScopedToken(CancelToken):
    """The token of a deadline block (`CancelToken.fail_after` and friends).

    Cancelled at its deadline or when its parent is, whichever comes first.
    After its block, only with its parent, and in full all the same: what
    waits on it wakes and its callbacks run, those registered after the block
    too.

    It stands for the same node as its parent: ``run``, ``run_group`` and
    ``signal`` go to the parent once this token's own check has passed.
    """

    __slots__ = (
        "_deadline",
        "_disarm",
        "_ended",
        "_expired",
        "_handed_over",
        "_parent",
        "_unlink",
        "entered",
    )

    def __init__(self, parent: CancelToken, deadline: float | None) -> None:
        super().__init__(parent._node)
        self._parent = parent
        self._deadline = deadline
        self._expired = False
        # Under token_lock: the block has ended, so the deadline no longer
        # applies; and this token's waiters and callbacks went to the parent's
        # registry (see `_detach`).
        self._ended = False
        self._handed_over = False
        self.entered = time.monotonic()
        self._unlink = parent.on_cancel(self._cancel)
        self._disarm: Callable[[], None] = _noop  # no deadline: only the parent cancels it
        if deadline is not None:
            if deadline <= self.entered:
                self._expire()
            else:
                self._disarm = parent._node.tree.call_at(deadline, self._expire)

    @property
    def cancelled(self) -> bool:
        return self._cancelled or self._parent.cancelled

    @property
    def deadline(self) -> float | None:
        return self._deadline

    @property
    def expired(self) -> bool:
        """Whether the deadline, not the parent, cancelled this token."""
        return self._expired

    def __repr__(self) -> str:
        state = " expired" if self._expired else " cancelled" if self.cancelled else ""
        until = "" if self._deadline is None else f" until {self._deadline:.3f}"
        return f"<CancelToken {self.dn}{until}{state}>"

    def _add_group(
        self, runnables: Mapping[str, Runnable], policy: ChildPolicy, *, dynamic: bool
    ) -> None:
        self.raise_if_cancelled()
        self._parent._add_group(runnables, policy, dynamic=dynamic)

    def signal(self, signal: Signal) -> None:
        self.raise_if_cancelled()
        self._parent.signal(signal)

    def _registry(self) -> CancelToken:
        return self._parent._registry() if self._handed_over else self

    def _expire(self) -> None:
        self._cancel(raise_interrupts=False, expire=True)  # on a timer's thread: nobody to raise to

    def _cancel(self, raise_interrupts: bool = True, *, expire: bool = False) -> None:
        with self._node.tree.token_lock:
            if expire:
                if self._ended:  # a timer taken off the heap just before the disarm
                    return
                if not self.cancelled:
                    self._expired = True
            if not self._mark():
                return
        self._fire(raise_interrupts)

    def _detach(self) -> None:
        """End the block: the deadline no longer applies, and only the parent's
        cancellation cancels this token from now on.

        Live, this token hands its waiters and callbacks over to the parent's
        registry, where those that come later go too: the parent's firing wakes
        and runs them, and nothing is left on the parent once they are gone.
        Already cancelled by the parent, it keeps its link to the parent: that
        firing may not have reached it yet.
        """
        self._disarm()
        with self._node.tree.token_lock:
            self._ended = True
            keep_link = self.cancelled and not self._cancelled
            if not self.cancelled:
                registry = self._parent._registry()
                if self._waiters:
                    registry._add_waiters(self._waiters)
                if self._callbacks:
                    registry._add_callbacks(self._callbacks)
                self._waiters = self._callbacks = None
                self._handed_over = True
        if not keep_link:
            self._unlink()


class _Closer:
    """The cancellation callback of `CancelToken.closing`, which wakes a thread
    blocked on the resource (see there how) and never waits for the resource's
    own locks; `close` closes it, once, whichever thread gets there first. A
    close that raised (in the cancelling thread, of a resource bound to the
    runnable's) is tried again by the next caller: the runnable, leaving the
    block."""

    __slots__ = ("_closed", "_lock", "_resource", "_socket")

    def __init__(self, resource: Closable) -> None:
        self._resource = resource
        self._socket = _socket_under(resource)
        self._lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:  # how a failed close names it in the callback_failed record
        return f"token.closing({self._resource!r})"

    def __call__(self) -> None:
        if self._socket is not None:
            # Under the lock: a close between the shutdown's reading the descriptor
            # and using it could let the shutdown hit another socket given that number.
            with self._lock:
                if self._closed:
                    return
                try:
                    self._socket.shutdown(socket.SHUT_RDWR)
                except OSError:  # not connected (a UDP socket is woken all the same), or closed
                    pass
        elif not isinstance(self._resource, io.IOBase):
            self.close()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._resource.close()
            self._closed = True


def _socket_under(resource: object) -> socket.socket | None:
    """``resource`` if it is a socket, the socket under it if it is a file made
    by ``socket.makefile`` (through its text and buffer layers), else ``None``."""
    layer = resource
    while not isinstance(layer, socket.socket):
        if isinstance(layer, io.TextIOWrapper):
            layer = layer.buffer
        elif isinstance(layer, (io.BufferedReader, io.BufferedWriter, io.BufferedRandom)):
            layer = layer.raw
        elif isinstance(layer, socket.SocketIO):
            layer = getattr(layer, "_sock", None)  # not public, but there since Python 3.0
        else:
            return None
    return layer


class _TimedOut(Exception):
    """The deadline of a `CancelToken.wait_for`, inside it."""


class _ConditionParts(Protocol):
    """What `threading.Condition.wait` is made of (CPython 3.2 to 3.13 alike)."""

    _waiters: collections.deque[_thread.LockType]

    def _release_save(self) -> object: ...

    def _acquire_restore(self, state: object, /) -> None: ...


class _Waiter:
    """One thread's waits on a `threading.Condition`, made as `Condition.wait`
    makes them, which its token's cancellation ends by releasing this thread
    alone (`cancel`, the ``on_cancel`` callback).

    A ``notify_all()`` would wake every thread waiting on the condition: an
    `Event.wait` elsewhere would return ``True`` for an event never set, a
    `Future.result` raise `TimeoutError`; and a woken thread could not tell it
    from a ``set()``'s.
    """

    __slots__ = ("_condition", "_lock")

    def __init__(self, condition: threading.Condition) -> None:
        self._condition = condition
        #: The lock of the wait in progress, under the condition.
        self._lock: _thread.LockType | None = None

    def wait(self, timeout: float | None) -> bool:
        """Wait on the condition, which the caller holds, until a ``notify()`` or
        `cancel` releases this thread, or ``timeout`` seconds pass (``None``: no
        timeout); return whether it was released."""
        parts = cast(_ConditionParts, self._condition)
        waiter = _thread.allocate_lock()
        waiter.acquire()
        parts._waiters.append(waiter)
        self._lock = waiter
        state = parts._release_save()
        released = False
        try:
            released = _acquire(waiter, timeout)
        finally:
            parts._acquire_restore(state)
            self._lock = None
            if not released:
                # Out of the queue all the same: released as the wait timed out,
                # by `cancel` or by a notify() that counts (`Condition.wait`
                # would lose it).
                released = not _unqueue(parts, waiter)
        return released

    def cancel(self) -> None:
        """Release the thread if it is waiting."""
        with self._condition:
            waiter = self._lock
            if waiter is not None and _unqueue(cast(_ConditionParts, self._condition), waiter):
                waiter.release()


def _unqueue(parts: _ConditionParts, waiter: _thread.LockType) -> bool:
    """Take ``waiter`` out of a held condition's queue; ``False`` if it was not there."""
    try:
        parts._waiters.remove(waiter)
    except ValueError:
        return False
    return True


def _require_queue(q: object, method: str, dn: str) -> None:
    if isinstance(q, queue.Queue):
        return
    kind = type(q)
    module = kind.__module__
    name = kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}"
    message = (
        f"{method}() of {dn} takes a queue.Queue or a subclass of it "
        f"(LifoQueue, PriorityQueue), not {name}"
    )
    if module.startswith("multiprocessing"):
        message += (
            f", which a cancellation cannot wake: call its {method}() with a timeout "
            "in a loop that checks token.cancelled, or have a thread pass items "
            "between it and a queue.Queue"
        )
    raise TypeError(message)


def _acquire(waiter: _thread.LockType, timeout: float | None) -> bool:
    """Acquire a wait lock within ``timeout`` seconds (``None``: no timeout)."""
    return waiter.acquire(True, -1 if timeout is None else timeout)


def _full(q: queue.Queue[_T]) -> bool:
    return 0 < q.maxsize <= q._qsize()


def _take(q: queue.Queue[_T]) -> _T:
    """``Queue.get``'s body; the caller holds ``q.mutex``."""
    item = q._get()
    q.not_full.notify()
    return item


def _give(q: queue.Queue[_T], item: _T) -> None:
    """``Queue.put``'s body; the caller holds ``q.mutex``."""
    q._put(item)
    q.unfinished_tasks += 1
    q.not_empty.notify()
