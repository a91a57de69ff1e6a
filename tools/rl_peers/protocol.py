"""The line protocol between `tools/bench_rl_step.py` and a peer worker, both sides.

The parent starts a worker as `PYTHON WORKER CONFIG_JSON` (`Peer.start`); the worker builds its
trainer once and says `{"ready": true, ...}` on one line. Then, for each step, the parent writes
one JSON line (a request, e.g. `{"threads": 1}`) on the worker's stdin and the worker runs one
step and answers one JSON line (`{"step_s": ..., ...}`). A worker that fails answers
`{"error": "..."}` and exits. Everything else a library prints goes to the worker's stderr, which
the parent keeps in a log file (its tail is the error text of a worker that died).
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
import traceback
from typing import Any


class Channel:
    """The worker's side: replies on the process's original stdout, library prints moved to stderr."""

    def __init__(self):
        self._out = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
        os.dup2(2, 1)  # fd 1 is stderr from now on: stray prints cannot break the protocol
        sys.stdout = sys.stderr

    def send(self, message: dict[str, Any]) -> None:
        self._out.write(json.dumps(message) + "\n")
        self._out.flush()

    def receive(self) -> dict[str, Any] | None:
        """The next request, or None when the parent closed stdin."""
        line = sys.stdin.readline()
        return json.loads(line) if line.strip() else None

    def fail(self, error: BaseException) -> None:
        """Report `error` (with its traceback on stderr) and leave the caller to exit."""
        traceback.print_exc(file=sys.stderr)
        self.send({"error": f"{type(error).__name__}: {error}"})


class PeerError(RuntimeError):
    """A worker failed to start, answered an error, died or timed out; the message says which."""


class Peer:
    """The parent's side of one worker process."""

    def __init__(self, name: str, proc: subprocess.Popen, log_path: str, log_file: Any):
        self.name, self.proc, self.log_path, self._log = name, proc, log_path, log_file
        self.info: dict[str, Any] = {}

    @classmethod
    def start(cls, name: str, python: str, worker: str, config: dict[str, Any], *, log_path: str,
              timeout_s: float, env: dict[str, str] | None = None) -> Peer:
        """Launch `python worker CONFIG_JSON` and wait up to `timeout_s` for its ready line."""
        log = open(log_path, "w", encoding="utf-8")
        proc = subprocess.Popen([python, worker, json.dumps(config)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=log, text=True, env={**os.environ, **(env or {})})
        peer = cls(name, proc, log_path, log)
        peer.info = peer._read(timeout_s, "building its trainer")
        return peer

    def request(self, message: dict[str, Any], *, timeout_s: float) -> dict[str, Any]:
        """Send one request line and return the reply (raises `PeerError`)."""
        try:
            self.proc.stdin.write(json.dumps(message) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise PeerError(f"{self.name} worker is gone (exit code {self.proc.poll()}): {self.log_tail()}") from None
        return self._read(timeout_s, f"answering {message}")

    def _read(self, timeout_s: float, doing: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self.close(kill=True)
                raise PeerError(f"{self.name} worker timed out after {timeout_s:.0f} s {doing}: {self.log_tail()}")
            ready, _, _ = select.select([self.proc.stdout], [], [], min(left, 5.0))
            if ready:
                break
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait(timeout=30)
            raise PeerError(f"{self.name} worker exited (code {code}) while {doing}: {self.log_tail()}")
        reply = json.loads(line)
        if "error" in reply:
            self.close(kill=True)  # it exits after reporting; do not wait for it
            raise PeerError(f"{self.name} worker failed while {doing}: {reply['error']}")
        return reply

    def log_tail(self, lines: int = 15) -> str:
        """The last lines of the worker's stderr (where its tracebacks go)."""
        if not self._log.closed:
            self._log.flush()
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                tail = [line.rstrip() for line in f.readlines()[-lines:]]
        except OSError:
            return "(no log)"
        return " | ".join(t for t in tail if t) or "(empty log)"

    def close(self, *, kill: bool = False) -> None:
        """Close stdin (the worker exits on EOF) and wait up to a minute; `kill`: end it at once."""
        if self.proc.poll() is None and not kill:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                pass  # a worker that did not exit on EOF is killed just below
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if not self._log.closed:
            self._log.close()
