"""What a user sees of ``rayft train`` and ``rayft sweep``: rayft's own lines on the terminal, and everything the
libraries print (Ray, Ray Tune, DeepSpeed, W&B, the workers' output that Ray forwards) in a log file of the run.

:class:`Console` keeps the terminal for rayft: :meth:`Console.line` prints a line that stays, :meth:`Console.live`
keeps a block of lines (the sweep's trials, the training bar) redrawn in place on a terminal; where the output is
no terminal (a pipe, a file, CI) nothing is redrawn and callers print plain lines instead.

:meth:`Console.log_to` sends this process's file descriptors 1 and 2 (and ``sys.stdout``/``sys.stderr``) to a log
file from then on: Ray's driver writes the lines it forwards from workers there, as do Ray Tune, DeepSpeed's op
builds and C++ libraries writing straight to the descriptors. With ``verbose`` (``rayft train -v``) every such
line is shown on the terminal as well. Closing the console (the end of its ``with`` block, Ctrl-C included) shuts a
Ray that this process started down first (:func:`rayft.exits.shutdown_ray`), so that what Ray prints while it
stops goes to the log too, then gives the descriptors back.

Warnings a user can act on reach the terminal as one ``warning:`` line each: those rayft's own code raises, and
Ray Tune's notice that a trial cannot get the resources it asks for. The libraries' other warnings (deprecations,
internals) go to the log.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import warnings
from pathlib import Path
from typing import IO, Any

LOG_NAME = "rayft.log"  # in the run's or the sweep's folder
# Loggers whose warnings a user can act on (one line each on the terminal): Tune's "not enough resources" notice.
ACTIONABLE_LOGGERS = ("ray.tune.execution.insufficient_resources_manager",)
CLEAR_LINE = "\x1b[2K"
RAYFT_DIR = str(Path(__file__).resolve().parent)  # warnings raised by rayft's own code reach the terminal


class Console:
    """rayft's terminal: lines that stay, a live block redrawn in place, and the libraries' output in a log file.

    Args:
        stream: where rayft's lines go (default: ``sys.stdout`` as it is now).
        live: redraw the live block in place (default: whether ``stream`` is a terminal).
        verbose: once :meth:`log_to` runs, show the libraries' output on the terminal too.
    """

    def __init__(self, stream: IO[str] | None = None, *, live: bool | None = None, verbose: bool = False) -> None:
        self.stream = stream or sys.stdout
        self.live_view = _isatty(self.stream) if live is None else live
        self.verbose = verbose
        self.log_path: Path | None = None
        self._block: list[str] = []
        self._lock = threading.RLock()
        self._redirect: _Redirect | None = None
        self._handler: _WarningLines | None = None
        self._showwarning: Any = None
        from rayft.exits import ray_running

        self._owns_ray = not ray_running()  # a Ray that starts from now on is this command's, to shut down

    # -- output -----------------------------------------------------------------------------------------------
    def line(self, text: str = "") -> None:
        """Print ``text`` (one or more lines) above the live block; it stays on the terminal."""
        with self._lock:
            self._erase()
            self.stream.write(text + "\n")
            self._draw()
            self.stream.flush()

    def warn(self, text: str) -> None:
        """One ``warning:`` line (the first line of ``text``)."""
        first = (str(text).strip().splitlines() or [""])[0]
        self.line(f"warning: {first}")

    def live(self, lines: list[str]) -> None:
        """Show ``lines`` as the live block, replacing the previous one (a terminal only; elsewhere nothing)."""
        if not self.live_view:
            return
        with self._lock:
            self._erase()
            self._block = list(lines)
            self._draw()
            self.stream.flush()

    def end_live(self) -> None:
        """Leave the live block where it is, as lines that stay."""
        with self._lock:
            self._block = []

    def _erase(self) -> None:
        if self._block:
            self.stream.write(f"\x1b[{len(self._block)}F" + "".join(CLEAR_LINE + "\n" for _ in self._block)
                              + f"\x1b[{len(self._block)}F")

    def _draw(self) -> None:
        width = _width(self.stream)
        for text in self._block:
            self.stream.write(text[:width - 1] + "\n")

    # -- the log file -----------------------------------------------------------------------------------------
    def log_to(self, path: str | os.PathLike[str]) -> Path:
        """From now on, send this process's output (descriptors 1 and 2, ``sys.stdout``/``sys.stderr``) to
        ``path`` (appended), echoed to the terminal with ``verbose``; prints where it goes. Once only: later
        calls return the first path."""
        if self._redirect is not None:
            return self.log_path  # type: ignore[return-value]
        self.log_path = Path(path).resolve()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.stream = _own_stream(self.stream)
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")  # plain "(Actor pid=...)" prefixes in the file
        self._redirect = _Redirect(self.log_path, echo=self.stream if self.verbose else None)
        self._handler = _WarningLines(self)
        for name in ACTIONABLE_LOGGERS:
            logging.getLogger(name).addHandler(self._handler)
        self._showwarning, warnings.showwarning = warnings.showwarning, self._show_warning
        self.line(f"log: {self.log_path}" + ("" if self.verbose else " (Ray, DeepSpeed and W&B output; -v shows it)"))
        return self.log_path

    def _show_warning(self, message: Any, category: type, filename: str, lineno: int, file: Any = None,
                      line: str | None = None) -> None:
        if str(filename).startswith(RAYFT_DIR):
            self.warn(str(message))
        else:  # the libraries' own (deprecations, internals): to the log
            self._showwarning(message, category, filename, lineno, file, line)

    def close(self) -> None:
        """Shut down a Ray this process started, then give the terminal back (idempotent)."""
        from rayft.exits import shutdown_ray

        try:
            if self._owns_ray:
                shutdown_ray()
        finally:
            if self._redirect is not None:
                for name in ACTIONABLE_LOGGERS:
                    logging.getLogger(name).removeHandler(self._handler)  # type: ignore[arg-type]
                warnings.showwarning = self._showwarning
                self._redirect.close()
                self._redirect = None
            self.end_live()
            if active() is self:
                _set_active(None)

    def __enter__(self) -> Console:
        _set_active(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _WarningLines(logging.Handler):
    """A logging handler that puts each record on the console as one warning line."""

    def __init__(self, console: Console) -> None:
        super().__init__(logging.WARNING)
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        self.console.warn(record.getMessage())


class _Redirect:
    """Descriptors 1 and 2 and ``sys.stdout``/``sys.stderr`` pointed at a log file (and a copy on ``echo``) until
    :meth:`close` restores them."""

    def __init__(self, path: Path, echo: IO[str] | None = None) -> None:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        self.saved = {fd: os.dup(fd) for fd in (1, 2)}
        self.log = open(path, "ab", buffering=0)  # noqa: SIM115 - closed in close()
        self.echo, self.thread = echo, None
        target = self.log.fileno()
        if echo is not None:  # a pipe read by a thread that writes the log and the terminal
            read_fd, target = os.pipe()
            self.thread = threading.Thread(target=self._tee, args=(read_fd,), name="rayft-log-tee", daemon=True)
            self.thread.start()
        for fd in (1, 2):
            os.dup2(target, fd)
        if echo is not None:
            os.close(target)
        self.streams = sys.stdout, sys.stderr
        # Python-level writers (print, Ray's forwarded worker lines, logging handlers created from now on).
        sys.stdout = open(os.dup(1), "w", buffering=1, errors="replace")  # noqa: SIM115
        sys.stderr = open(os.dup(2), "w", buffering=1, errors="replace")  # noqa: SIM115

    def _tee(self, read_fd: int) -> None:
        with open(read_fd, "rb", buffering=0) as pipe:
            for chunk in iter(lambda: pipe.read(65536), b""):
                self.log.write(chunk)
                with contextlib.suppress(Exception):
                    self.echo.write(chunk.decode(errors="replace"))  # type: ignore[union-attr]
                    self.echo.flush()  # type: ignore[union-attr]

    def close(self) -> None:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        ours = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = self.streams
        for fd, saved in self.saved.items():
            os.dup2(saved, fd)  # the pipe's last writers close here (children may still hold it)
            os.close(saved)
        for stream in ours:
            with contextlib.suppress(Exception):
                stream.close()
        if self.thread is not None:
            self.thread.join(timeout=2)
        if self.thread is None or not self.thread.is_alive():
            self.log.close()


def _own_stream(stream: IO[str]) -> IO[str]:
    """``stream``, or a copy of it that keeps the terminal once descriptors 1 and 2 point at the log."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return stream  # not backed by a descriptor (a test's capture): unaffected by the redirection
    if fd not in (1, 2):
        return stream
    stream.flush()
    return open(os.dup(fd), "w", buffering=1, errors="replace")  # noqa: SIM115 - lives as long as the console


_active: Console | None = None


def active() -> Console | None:
    """The console of the command running in this process (inside its ``with`` block), if any."""
    return _active


def _set_active(console: Console | None) -> None:
    global _active
    _active = console


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _width(stream: IO[str]) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        return 160


def fmt(value: Any) -> str:
    """A number as people read it in a progress line: 4 significant digits, no trailing zeros."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "-" if value is None else str(value)
    if isinstance(value, int):
        return str(value)
    return f"{value:.3g}" if abs(value) < 1e-2 or abs(value) >= 1e4 else f"{value:.4f}".rstrip("0").rstrip(".")


def duration(seconds: float) -> str:
    """``seconds`` as ``1m05s`` / ``42s``."""
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


__all__ = ["Console", "LOG_NAME", "active", "duration", "fmt"]
