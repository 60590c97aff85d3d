"""`command`: a runnable that runs an external program; and the registry of the
programs it started, with the guard process that kills them once this process is gone.

It is what Monogon's later supervisor added for child processes.
"""

from __future__ import annotations

import atexit
import codecs
import collections
import logging
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Callable, Literal

from threadsup._errors import Cancelled, ThreadsupError
from threadsup._seconds import check_seconds, wait_in_turns
from threadsup._token import CancelToken, Signal

#: Bound of each wait for the reader and waiter threads once the program has exited.
_JOIN_TIMEOUT = 5.0
#: How long the output of a command that exited may take to reach end-of-file.
_DRAIN_TIMEOUT = 1.0
#: A command's output line longer than this (in bytes) is logged in pieces.
_MAX_LINE = 65536
#: How long the interpreter's exit waits for the guard process to kill what is left and exit.
_GUARD_EXIT_TIMEOUT = 1.0
#: Room for the one-line summary of a `CommandFailed` within `NodeStatus.last_error`
#: (300 characters, ``CommandFailed: `` included).
_SUMMARY_WIDTH = 280


class CommandFailed(ThreadsupError):
    """A program run by `command` exited with a non-zero status or was killed by a signal.

    ``str()`` is one line: the program, its exit status or signal, and as much
    of its last output as fits in `NodeStatus.last_error`, newest lines kept.
    ``tail`` holds all the kept lines, in full.
    """

    def __init__(self, argv: Sequence[str], returncode: int, tail: Sequence[str]) -> None:
        #: The program and its arguments.
        self.argv = list(argv)
        #: As `subprocess.Popen.returncode`: ``-N`` when killed by signal ``N``.
        self.returncode = returncode
        #: The last lines of output (stdout and stderr, in the order they were read).
        self.tail = list(tail)
        super().__init__(_summary(_program(self.argv), returncode, self.tail))

    @property
    def signal(self) -> signal.Signals | None:
        """The signal that killed the program, or ``None`` when it exited."""
        if self.returncode >= 0:
            return None
        try:
            return signal.Signals(-self.returncode)
        except ValueError:
            return None


def command(
    argv: Sequence[str | os.PathLike[str]],
    *,
    healthy: str | re.Pattern[str] | None = None,
    grace: float = 5.0,
    env: Mapping[str, str | os.PathLike[str]] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    tail: int = 10,
    stdout_level: int = logging.INFO,
    stderr_level: int = logging.WARNING,
    encoding: str = "utf-8",
    zero_exit: Literal["done", "death"] = "done",
) -> Callable[[CancelToken], None]:
    """A runnable that runs an external program (POSIX) until it exits or is cancelled.

    - ``argv`` is the program and its arguments, run without a shell, with
      stdin from ``/dev/null``, in a new session (its own process group), with
      ``env`` (replacing the environment, as in `subprocess`) and ``cwd``.
      They are checked at the call (``argv`` items, ``env`` values and ``cwd``
      a str or path-like without NUL, ``env`` names non-empty str without
      ``=`` or NUL): `TypeError` or `ValueError` naming the offender.
    - Its stdout and stderr go line by line to the node's logger, at
      ``stdout_level`` and ``stderr_level``, decoded with ``encoding`` and
      ``errors="replace"``; each record has the fields ``stream`` (``"stdout"``
      or ``"stderr"``) and ``pid``.
    - HEALTHY once started, or, with ``healthy`` (a regex, `re.search`-ed in
      each line of either stream), once a line matches.
    - On cancellation SIGTERM goes to its process group; after ``grace``
      seconds without exit, SIGKILL (never with ``grace=inf``). The node is
      then CANCELLED.
    - A non-zero exit, or death by a signal, not caused by cancellation is a
      death: `CommandFailed`, whose one line names the status and the last
      output (the last ``tail`` lines are kept).
    - A zero exit means the work is finished: HEALTHY if not yet, then DONE.
      With ``zero_exit="death"`` it is a death instead, so the program is run
      again after the backoff delay.
    - Once the program has exited, what is left of its process group is
      killed, its pipes are drained and closed, and it is reaped: no zombie,
      no stray process, no leaked pipe or thread. So too when one of the two
      helper threads that watch it cannot start: the program is killed at
      once, and the node dies with a `RuntimeError` naming that thread.
    - The program does not outlive this process: `kill_programs` kills it,
      and a guard process kills it once this process is gone, however it
      died (see `_Programs`).
    """
    args = _check_argv(argv)
    pattern = _check_pattern(healthy)
    seconds = check_seconds("grace of command()", grace)
    if tail is True or tail is False or not isinstance(tail, int) or tail < 0:
        raise ValueError(f"tail must be a number of lines (an int >= 0), not {tail!r}")
    for name, level in (("stdout_level", stdout_level), ("stderr_level", stderr_level)):
        if level is True or level is False or not isinstance(level, int):
            raise TypeError(f"{name} must be a logging level (an int), not {level!r}")
    codecs.lookup(encoding)  # LookupError now rather than in every incarnation
    if zero_exit not in ("done", "death"):
        raise ValueError(f"zero_exit must be 'done' or 'death', not {zero_exit!r}")
    return _Command(
        _CommandSpec(
            argv=args,
            pattern=pattern,
            grace=seconds,
            env=_check_env(env),
            cwd=None if cwd is None else _check_text("cwd of command()", cwd),
            tail=tail,
            levels={"stdout": stdout_level, "stderr": stderr_level},
            encoding=encoding,
            always=zero_exit == "death",
        )
    )


class _CommandSpec:
    """The arguments of one `command` call, checked."""

    def __init__(
        self,
        *,
        argv: list[str],
        pattern: re.Pattern[str] | None,
        grace: float,
        env: dict[str, str] | None,
        cwd: str | None,
        tail: int,
        levels: dict[str, int],
        encoding: str,
        always: bool,
    ) -> None:
        self.argv = argv
        self.pattern = pattern
        self.grace = grace
        self.env = env
        self.cwd = cwd
        self.tail = tail
        self.levels = levels
        self.encoding = encoding
        self.always = always


class _Command:
    """The runnable `command` returns; each call runs the program once."""

    def __init__(self, spec: _CommandSpec) -> None:
        self._spec = spec

    def __repr__(self) -> str:
        return f"command({self._spec.argv!r})"

    def __call__(self, token: CancelToken) -> None:
        if token.cancelled:
            return
        _Run(self._spec, token).run()


class _Run:
    """One run of a command: its process and the threads that watch it.

    Threads: the node's own (this object's `run`), which starts the program,
    waits for its exit or for cancellation, escalates SIGTERM to SIGKILL after
    the grace period and judges the exit; a reader, which logs both pipes line
    by line; and a waiter, which blocks until the process has exited without
    reaping it (``waitid(WNOWAIT)``), so that its PID, and the ID of its
    process group, cannot be reused while a signal may still be sent to it.
    """

    def __init__(self, spec: _CommandSpec, token: CancelToken) -> None:
        self.spec = spec
        self.token = token
        self.program = _program(spec.argv)
        self.proc: subprocess.Popen[bytes] | None = None
        self.lines: collections.deque[str] = collections.deque(maxlen=spec.tail)
        #: Guards `exited` against signals: no signal once the waiter saw the exit.
        self.lock = threading.Lock()
        self.exited = False
        self.exited_event = threading.Event()
        #: Set on exit, on cancellation and on a failure of the reader.
        self.wake = threading.Event()
        self.term_sent_at: float | None = None
        self.failure: BaseException | None = None
        self.healthy_lock = threading.Lock()
        self.healthy = False

    # The node's thread.

    def run(self) -> None:
        spec, token = self.spec, self.token
        proc = subprocess.Popen(
            spec.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=spec.env,
            cwd=spec.cwd,
            close_fds=True,
            start_new_session=True,
        )
        self.proc = proc
        wake_r, wake_w = -1, -1
        reader: threading.Thread | None = None
        waiter: threading.Thread | None = None
        try:
            _programs.add(proc.pid, token.logger)
            token.logger.info(
                "started %s (pid %d)", self.program, proc.pid, extra={"pid": proc.pid}
            )
            wake_r, wake_w = os.pipe()
            waiter = self._start_helper("waiter", self._wait)
            reader = self._start_helper("output", self._read, wake_r)
            unregister = token.on_cancel(self._on_cancel)
            try:
                if spec.pattern is None:
                    self._signal_healthy()
                self._wait_for_exit()
            finally:
                unregister()
        finally:
            self._finish(waiter, reader, wake_r, wake_w)
        self._judge(proc.returncode)

    def _start_helper(
        self, role: str, target: Callable[..., None], *args: object
    ) -> threading.Thread:
        """Start a helper thread named ``<dn> <role>``, or raise (so that `_finish`,
        which knows only the started threads, kills and reaps the program)."""
        thread = threading.Thread(
            target=target, args=args, name=f"{self.token.dn} {role}", daemon=True
        )
        try:
            thread.start()
        except RuntimeError as exc:  # "can't start new thread": a death, as for a node
            raise RuntimeError(
                f"{self.token.dn}: could not start the {role} thread of {self.program} "
                f"(pid {self._pid}), so the program was killed: {exc}"
            ) from exc
        return thread

    def _wait_for_exit(self) -> None:
        """Wait for the exit; on cancellation, escalate to SIGKILL after the grace period."""
        self.wake.wait()
        if self.failure is not None:
            raise self.failure
        if self.exited_event.is_set():
            return
        with self.lock:
            term_sent_at = self.term_sent_at
        if term_sent_at is None:  # the cancellation came once the process had exited
            self.exited_event.wait()
            return
        if wait_in_turns(self.exited_event.wait, term_sent_at + self.spec.grace):
            return
        with self.lock:
            killed = not self.exited and self._signal_group(signal.SIGKILL)
        if killed:
            self.token.logger.warning(
                "%s (pid %d) still running %.3g s after SIGTERM: sent SIGKILL",
                self.program,
                self._pid,
                self.spec.grace,
                extra={"pid": self._pid},
            )
        self.exited_event.wait()  # SIGKILL cannot be caught: this is prompt

    def _finish(
        self,
        waiter: threading.Thread | None,
        reader: threading.Thread | None,
        wake_r: int,
        wake_w: int,
    ) -> None:
        """Whatever happened: kill, drain, reap, join and close. Never leaves a zombie."""
        proc = self.proc
        assert proc is not None
        if waiter is None:  # the waiter never started: nobody else reaps
            with self.lock:
                self.exited = True
            _kill_group(proc.pid)
            self._reap()
        else:
            if not self.exited_event.is_set():  # failed before the exit: no grace
                with self.lock:
                    if not self.exited:
                        self._signal_group(signal.SIGKILL)
                self.exited_event.wait()
            if _CAN_WAIT_WITHOUT_REAPING:
                # The leader is a zombie until reaped below, so its process group ID
                # cannot have been reused: kill what is left of the group.
                _kill_group(proc.pid)
        if reader is not None:
            reader.join(_DRAIN_TIMEOUT)
            if reader.is_alive():
                # Most likely a process outside the group (it called setsid) holds them.
                self.token.logger.warning(
                    "the output pipes of %s (pid %d) were still open %.3g s after it exited "
                    "and its process group was killed: stopped reading them",
                    self.program,
                    proc.pid,
                    _DRAIN_TIMEOUT,
                    extra={"pid": proc.pid},
                )
        if wake_w != -1:
            os.close(wake_w)  # end-of-file on wake_r stops the reader
        self._reap()  # at once: it has exited
        if waiter is not None:
            waiter.join(_JOIN_TIMEOUT)
        if reader is not None:
            reader.join(_JOIN_TIMEOUT)  # the reader closes the pipes and wake_r itself
        else:
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
            if wake_r != -1:
                os.close(wake_r)

    def _reap(self) -> None:
        """Reap the program, once it is out of the registry (see `_Programs`)."""
        assert self.proc is not None
        _programs.remove(self.proc.pid, self.token.logger)
        self.proc.wait()

    def _judge(self, returncode: int) -> None:
        token, logger = self.token, self.token.logger
        pid = self._pid
        how = _status(returncode)
        if token.cancelled:
            logger.info("%s (pid %d) stopped: %s", self.program, pid, how, extra={"pid": pid})
            return
        if returncode == 0 and not self.spec.always:
            logger.info("%s (pid %d) %s", self.program, pid, how, extra={"pid": pid})
            self._signal_healthy()
            token.signal(Signal.DONE)
            return
        raise CommandFailed(self.spec.argv, returncode, self.lines)

    @property
    def _pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    # The cancelling thread.

    def _on_cancel(self) -> None:
        """SIGTERM to the process group; never blocks (the lock is held for a syscall)."""
        with self.lock:
            if not self.exited and self.term_sent_at is None:
                self.term_sent_at = time.monotonic()
                self._signal_group(signal.SIGTERM)
        self.wake.set()

    def _signal_group(self, signum: signal.Signals) -> bool:
        """Send ``signum`` to the process group; call with `lock` held, before the exit."""
        try:
            os.killpg(self._pid, signum)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    # The waiter thread.

    def _wait(self) -> None:
        try:
            if _CAN_WAIT_WITHOUT_REAPING:
                os.waitid(os.P_PID, self._pid, os.WEXITED | os.WNOWAIT)
            else:
                assert self.proc is not None
                self.proc.wait()
        except ChildProcessError:
            pass  # reaped by someone else (SIGCHLD ignored, say): it has exited
        finally:
            with self.lock:
                self.exited = True
            self.exited_event.set()
            self.wake.set()

    # The reader thread.

    def _read(self, wake_r: int) -> None:
        proc = self.proc
        assert proc is not None and proc.stdout is not None and proc.stderr is not None
        pipes = {proc.stdout.fileno(): "stdout", proc.stderr.fileno(): "stderr"}
        buffers = {fd: bytearray() for fd in pipes}
        try:
            with selectors.DefaultSelector() as selector:
                for fd in (*pipes, wake_r):
                    selector.register(fd, selectors.EVENT_READ)
                open_pipes = len(pipes)
                while open_pipes:
                    for key, _ in selector.select():
                        if key.fd == wake_r:
                            return  # told to stop: the pipes outlive the process group
                        chunk = os.read(key.fd, 65536)
                        buffer = buffers[key.fd]
                        if not chunk:
                            selector.unregister(key.fd)
                            open_pipes -= 1
                            if buffer:
                                self._line(pipes[key.fd], bytes(buffer))
                            continue
                        buffer += chunk
                        self._lines(pipes[key.fd], buffer)
        except BaseException as exc:  # the node's thread re-raises it
            self.failure = exc
            self.wake.set()
        finally:
            # Through the file objects, which own the descriptors (no double close).
            proc.stdout.close()
            proc.stderr.close()
            os.close(wake_r)

    def _lines(self, stream: str, buffer: bytearray) -> None:
        while True:
            end = buffer.find(b"\n")
            if end == -1:
                if len(buffer) < _MAX_LINE:
                    return
                end = _MAX_LINE
                line = bytes(buffer[:end])
                del buffer[:end]
            else:
                line = bytes(buffer[:end])
                del buffer[: end + 1]
            self._line(stream, line)

    def _line(self, stream: str, raw: bytes) -> None:
        text = raw.rstrip(b"\r").decode(self.spec.encoding, errors="replace")
        self.lines.append(text)
        self.token.logger.log(
            self.spec.levels[stream], "%s", text, extra={"stream": stream, "pid": self._pid}
        )
        pattern = self.spec.pattern
        if pattern is not None and not self.healthy and pattern.search(text):
            self._signal_healthy()

    # Any of them.

    def _signal_healthy(self) -> None:
        with self.healthy_lock:
            if self.healthy:
                return
            self.healthy = True
            try:
                self.token.signal(Signal.HEALTHY)
            except Cancelled:
                pass  # the cancellation is handled where it is noticed


#: ``waitid(WNOWAIT)`` waits for an exit without reaping (Linux, most Unixes; not macOS).
_CAN_WAIT_WITHOUT_REAPING = hasattr(os, "waitid") and hasattr(os, "WNOWAIT")


def _kill_group(pgid: int) -> bool:
    """SIGKILL to a process group; whether it reached it."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return False
    return True


# ---------------------------------------------------------- programs left behind


def kill_programs() -> int:
    """SIGKILL the process group of every program `command` has started and not reaped.

    For a process about to exit without waiting for its command nodes (a stop
    that timed out, a second signal during a stop): their programs would
    otherwise outlive it. Returns how many groups it signalled; a group that
    has ended is skipped. Safe from any thread, a signal handler included,
    while command nodes start and reap programs. Each node then sees its
    program killed by SIGKILL: a death, or CANCELLED if it was being cancelled.
    """
    return _programs.kill()


#: The guard process: ``python -S -I -c _GUARD_CODE PGID...``. Its stdin is a socket
#: whose other end only the process that started it holds; it reads ``+PGID`` and
#: ``-PGID`` lines from it, and at end-of-file (that process is gone) SIGKILLs every
#: group still registered.
_GUARD_CODE = """\
# threadsup: kills the programs of command() once the process that started it is gone
import os, signal, sys
for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(signum, signal.SIG_IGN)
groups = {int(arg) for arg in sys.argv[1:]}
pending = b""
while True:
    try:
        chunk = os.read(0, 65536)
    except OSError:
        chunk = b""
    if not chunk:
        break
    *lines, pending = (pending + chunk).split(b"\\n")
    for line in lines:
        (groups.add if line[:1] == b"+" else groups.discard)(int(line[1:]))
for group in groups:
    try:
        os.killpg(group, signal.SIGKILL)
    except OSError:
        pass
"""

#: No SIGPIPE for a write to a guard that died, whatever the program did with SIGPIPE.
_NO_SIGPIPE = getattr(socket, "MSG_NOSIGNAL", 0)


class _Guard:
    """A running guard process and this process's end of its socket."""

    def __init__(self, groups: Iterable[int]) -> None:
        if not sys.executable:
            raise OSError("sys.executable is empty: there is no Python interpreter to run it")
        ours, theirs = socket.socketpair()  # both ends non-inheritable
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-S", "-I", "-c", _GUARD_CODE, *map(str, groups)],
                stdin=theirs.fileno(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                cwd="/",
                close_fds=True,
                start_new_session=True,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        # A guard that stopped reading must not block a node: see `_Programs._tell`.
        ours.setblocking(False)
        self.socket = ours

    def send(self, message: bytes) -> bool:
        """Whether the message went whole into the socket (EPIPE: the guard died;
        EAGAIN or a part: it stopped reading). ``message`` is a line."""
        try:
            return self.socket.send(message, _NO_SIGPIPE) == len(message)
        except OSError:
            return False

    def end(self) -> tuple[int, str]:
        """Kill and reap the guard; its return code, and what had become of it.

        Killed before its socket is closed: at end-of-file it would kill every
        registered program.
        """
        reading = self.proc.poll() is None
        self.proc.kill()
        returncode = self.proc.wait()
        self.socket.close()
        return returncode, ("stopped reading its messages" if reading else _status(returncode))

    def disown(self) -> None:
        """In a forked child: close this process's copy of the socket, else the
        guard would wait for this process too; and tell `subprocess.Popen` that
        the guard is not this process's child, so that it neither waits for it
        nor warns that it still runs."""
        self.socket.close()
        self.proc.returncode = 0


class _Programs:
    """The process groups of the programs `command` has started and not yet
    reaped, and a guard process that kills them once this process is gone.

    Each program is the leader of its own process group, whose ID is its PID.
    A group leaves the registry before its leader is reaped: until then the
    leader is at least a zombie, so the group ID cannot be reused, and a
    SIGKILL to it can only reach the program and the processes it started.
    (Where ``waitid`` cannot wait without reaping, the waiter thread reaps it
    shortly before it leaves the registry.)

    The guard (POSIX) is started with the first program, lazily, and then lives
    as long as this process; it is told of every change (`_GUARD_CODE`). It
    runs in a session of its own, so that the signals for this process's group
    (Ctrl-C, ``kill -KILL -- -PGID``) do not reach it, and ignores SIGINT,
    SIGTERM and SIGHUP. Only this process holds its socket's other end, so
    end-of-file reaches it however this process ends, SIGKILL included. A
    guard that cannot start leaves the programs running unguarded, with one
    WARNING; one found dead or stuck at the next message is replaced (the
    registry goes to the new one in its arguments), unless it exited with an
    error status by itself: it cannot run here, and no other is tried.
    """

    def __init__(self) -> None:
        # Reentrant: kill() may run in a signal handler that interrupted kill().
        self._lock = threading.RLock()
        self._groups: set[int] = set()
        # Held while the registry changes and the guard is told, so that it learns
        # of the changes in their order; and across a fork. kill() never takes it.
        self._guard_lock = threading.Lock()
        self._guard: _Guard | None = None
        #: A start failed and was warned about: no other warning until one starts.
        self._start_failed = False
        #: No guard any more: the last one exited by itself, or the interpreter exits.
        self._closed = False

    def add(self, pgid: int, logger: logging.Logger) -> None:
        with self._guard_lock:
            with self._lock:
                self._groups.add(pgid)
            self._tell(b"+%d\n" % pgid, logger)

    def remove(self, pgid: int, logger: logging.Logger) -> None:
        """Take ``pgid`` out of the registry, if it is there; call before reaping."""
        with self._guard_lock:
            with self._lock:
                if pgid not in self._groups:
                    return
                self._groups.remove(pgid)
            self._tell(b"-%d\n" % pgid, logger)

    def kill(self) -> int:
        with self._lock:
            return sum(_kill_group(pgid) for pgid in list(self._groups))

    @property
    def guard(self) -> subprocess.Popen[bytes] | None:
        """The guard process, if one runs."""
        guard = self._guard
        return None if guard is None else guard.proc

    @property
    def guard_fd(self) -> int | None:
        """This process's end of the guard's socket, if a guard runs."""
        guard = self._guard
        return None if guard is None else guard.socket.fileno()

    def _tell(self, message: bytes, logger: logging.Logger) -> None:
        """Tell the guard of a change, starting or replacing it as needed; with
        `_guard_lock` held. Never blocks for long, never raises `OSError`."""
        guard = self._guard
        if guard is not None:
            if guard.send(message):
                return
            self._guard = None
            returncode, what = guard.end()
            if returncode > 0:
                self._closed = True
                logger.warning(
                    "the guard process (pid %d) %s: the programs of command() will outlive "
                    "this process if it is killed",
                    guard.proc.pid,
                    what,
                )
                return
            logger.warning("the guard process (pid %d) %s: started another", guard.proc.pid, what)
        if self._closed:
            return
        with self._lock:
            groups = sorted(self._groups)  # including the change: no message to send
        try:
            self._guard = _Guard(groups)
        except OSError as exc:
            if not self._start_failed:
                self._start_failed = True
                logger.warning(
                    "could not start the guard process that kills the programs of command() "
                    "once this process is gone (%s): they will outlive this process if it "
                    "is killed",
                    exc,
                )
            return
        self._start_failed = False

    def close(self) -> None:
        """At the interpreter's exit: end the guard, which kills what is left."""
        with self._guard_lock:
            self._closed = True
            guard, self._guard = self._guard, None
        if guard is None:
            return
        guard.socket.close()
        try:
            guard.proc.wait(_GUARD_EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass  # it is on its own now

    # Around a fork.

    def hold(self) -> None:
        self._guard_lock.acquire()

    def release(self) -> None:
        self._guard_lock.release()

    def disown(self) -> None:
        """In a forked child: the parent's programs are not this process's, nor its guard."""
        if self._guard is not None:
            self._guard.disown()


_programs = _Programs()


def _hold_programs_before_fork() -> None:
    # A fork during a guard's start would leave the child holding its socket unknowingly.
    _programs.hold()


def _release_programs_after_fork() -> None:
    _programs.release()


def _forget_programs_after_fork() -> None:
    global _programs
    inherited, _programs = _programs, _Programs()
    inherited.disown()


def _close_guard_at_exit() -> None:
    _programs.close()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_hold_programs_before_fork,
        after_in_parent=_release_programs_after_fork,
        after_in_child=_forget_programs_after_fork,
    )
atexit.register(_close_guard_at_exit)


def _check_argv(argv: object) -> list[str]:
    if isinstance(argv, (str, bytes)) or not isinstance(argv, Sequence):
        raise TypeError(
            f"command() takes a sequence of arguments such as ['ls', '-l'], not {argv!r} "
            "(no shell is involved: to use one, pass ['sh', '-c', script])"
        )
    if not argv:
        raise ValueError("command() needs at least the program to run")
    return [_check_text(f"argv[{index}] of command()", arg) for index, arg in enumerate(argv)]


def _check_env(env: object) -> dict[str, str] | None:
    """A copy of ``env`` once every name and value can reach ``execve``."""
    if env is None:
        return None
    if not isinstance(env, Mapping):
        raise TypeError(
            "env of command() must be a mapping of variable names to values, "
            f"such as {{**os.environ, 'LANG': 'C'}}, not {env!r}"
        )
    checked = {}
    for name, value in dict(env).items():
        if not isinstance(name, str):
            raise TypeError(f"env of command(): the variable name {name!r} is not a str")
        if not name or "=" in name or "\0" in name:
            raise ValueError(
                f"env of command(): {name!r} is not a variable name "
                "(it must be non-empty, without '=' or NUL)"
            )
        checked[name] = _check_text(f"env[{name!r}] of command()", value)
    return checked


def _check_text(what: str, value: object) -> str:
    """``value`` as a str that can reach ``execve``: a str or str path-like, without NUL."""
    text = os.fspath(value) if isinstance(value, (str, os.PathLike)) else None
    if not isinstance(text, str):
        raise TypeError(f"{what} must be a str or path-like, not {value!r}")
    if "\0" in text:
        raise ValueError(f"{what} holds a NUL character, which no program can receive: {text!r}")
    return text


def _check_pattern(healthy: object) -> re.Pattern[str] | None:
    if healthy is None:
        return None
    if isinstance(healthy, str):
        return re.compile(healthy)
    if isinstance(healthy, re.Pattern) and isinstance(healthy.pattern, str):
        return healthy
    raise TypeError(f"healthy must be a str regex or a compiled str pattern, not {healthy!r}")


def _program(argv: Sequence[str]) -> str:
    name = os.path.basename(argv[0]) or argv[0]
    return name if len(name) <= 60 else f"{name[:57]}..."


def _status(returncode: int) -> str:
    if returncode >= 0:
        return f"exited with status {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    return f"was killed by {name}"


def _summary(program: str, returncode: int, tail: Sequence[str]) -> str:
    """One line: program and status first, then the newest output that fits."""
    head = f"{program} {_status(returncode)}"
    lines = [" ".join(line.split()) for line in tail]
    lines = [line for line in lines if line]
    if not lines:
        return f"{head}, no output"
    prefix = f"{head}; last output: "
    output = " | ".join(lines)
    room = _SUMMARY_WIDTH - len(prefix)
    if len(output) > room:
        output = "..." + output[len(output) - room + 3 :]
    return prefix + output
