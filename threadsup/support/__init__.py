"""Ready-made runnables: a socket server, an external program, a periodic job.

Each function here returns a runnable (a callable taking a `CancelToken`) that
follows the supervision contract on its own: it signals HEALTHY when it is
ready, turns cancellation into a prompt and clean exit, and lets a real
failure escape so that the node dies and is restarted with backoff. None of
them depends on the name it runs under::

    token.run("http", serve(lambda: ThreadingHTTPServer(("", 8080), Handler)))
    token.run("worker", command(["my-daemon", "--foreground"], healthy="ready"))
    token.run("cleanup", periodic(60.0, remove_stale_files))

`serve` plays the part of the Go supervisor's gRPC helper; `command` is what
Monogon's later supervisor added for child processes.
"""

from __future__ import annotations

from threadsup.support._command import CommandFailed, command, kill_programs
from threadsup.support._periodic import MIN_INTERVAL as MIN_INTERVAL
from threadsup.support._periodic import periodic
from threadsup.support._serve import MAX_POLL_INTERVAL as MAX_POLL_INTERVAL
from threadsup.support._serve import ServeError, serve
from threadsup.support._serve import ServerSource as ServerSource

__all__ = ["CommandFailed", "ServeError", "command", "kill_programs", "periodic", "serve"]
