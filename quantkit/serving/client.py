"""Streaming OpenAI-API requests (chat and completion) with per-request timing.

TTFT is measured to the first streamed text; TPOT is (last - first) / (output tokens - 1), with
the output token count from the server's usage record (speculative decoding can deliver
several tokens in one streamed chunk, so chunks are not tokens).
"""

from __future__ import annotations

import json
import queue
import threading
import time
from dataclasses import asdict, dataclass, field

import httpx

from quantkit.serving.budget import wait_for
from quantkit.serving.metrics import percentile


@dataclass
class Request:
    id: str
    kind: str  # "chat" | "completion"
    prompt: str
    max_tokens: int


@dataclass
class RequestResult:
    id: str
    kind: str
    ok: bool
    text: str = ""
    output_tokens: int = 0
    ttft_s: float | None = None
    tpot_s: float | None = None
    latency_s: float | None = None
    error: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def send(client: httpx.Client, base_url: str, model: str, req: Request) -> RequestResult:
    body: dict = {"model": model, "max_tokens": req.max_tokens, "temperature": 0.0, "stream": True,
                  "stream_options": {"include_usage": True}}
    if req.kind == "chat":
        url, body["messages"] = f"{base_url}/v1/chat/completions", [{"role": "user", "content": req.prompt}]
    else:
        url, body["prompt"] = f"{base_url}/v1/completions", req.prompt
    start = time.monotonic()
    first = last = None
    parts: list[str] = []
    tokens = 0
    try:
        with client.stream("POST", url, json=body) as r:
            if r.status_code != 200:
                return RequestResult(
                    req.id, req.kind, False, error=f"HTTP {r.status_code}: {r.read().decode(errors='replace')[:300]}"
                )
            for line in r.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if event.get("usage"):
                    tokens = int(event["usage"].get("completion_tokens") or 0)
                for choice in event.get("choices") or []:
                    piece = (choice.get("delta") or {}).get("content") if req.kind == "chat" else choice.get("text")
                    if piece:
                        now = time.monotonic()
                        first = first if first is not None else now
                        last = now
                        parts.append(piece)
    except (httpx.HTTPError, json.JSONDecodeError) as e:
        return RequestResult(req.id, req.kind, False, error=f"{type(e).__name__}: {e}")
    end = time.monotonic()
    text = "".join(parts)
    if not text.strip():
        return RequestResult(
            req.id, req.kind, False, text=text, output_tokens=tokens, latency_s=end - start, error="empty output"
        )
    return RequestResult(
        req.id,
        req.kind,
        True,
        text=text,
        output_tokens=tokens,
        ttft_s=first - start,
        tpot_s=(last - first) / (tokens - 1) if tokens > 1 else None,
        latency_s=end - start,
    )


@dataclass
class WorkloadRun:
    concurrency: int
    wall_s: float
    results: list[RequestResult] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return sum(not r.ok for r in self.results)

    def summary(self) -> dict:
        ok = [r for r in self.results if r.ok]
        out_tokens = sum(r.output_tokens for r in ok)
        return {
            "concurrency": self.concurrency,
            "requests": len(self.results),
            "failed": self.failed,
            "output_tokens": out_tokens,
            "wall_s": round(self.wall_s, 3),
            "output_tokens_per_s": out_tokens / self.wall_s if self.wall_s > 0 else None,
            "ttft_p50_s": percentile([r.ttft_s for r in ok], 50),
            "ttft_p95_s": percentile([r.ttft_s for r in ok], 95),
            "tpot_p50_s": percentile([r.tpot_s for r in ok], 50),
            "tpot_p95_s": percentile([r.tpot_s for r in ok], 95),
        }


def run_workload(base_url: str, model: str, requests: list[Request], concurrency: int, timeout: float = 600.0,
                 deadline: float | None = None) -> WorkloadRun:
    """Every request once, `concurrency` in flight at a time; results in request order.

    The requests run in daemon threads and this thread waits (quantkit.serving.budget): a signal is
    raised here at once, and ServeTimeout when `deadline` passes; the caller then stops the server,
    which ends the requests in flight (their client is left to them, not closed under them)."""
    results: list[RequestResult | None] = [None] * len(requests)
    todo: queue.SimpleQueue[tuple[int, Request]] = queue.SimpleQueue()
    for item in enumerate(requests):
        todo.put(item)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    client = httpx.Client(timeout=httpx.Timeout(timeout, connect=10.0), limits=limits)

    errors: list[Exception] = []

    def worker() -> None:
        while True:
            try:
                i, req = todo.get_nowait()
            except queue.Empty:
                return
            try:
                results[i] = send(client, base_url, model, req)
            except Exception as e:  # raised in the waiting thread, as a thread pool's map would
                errors.append(e)
                return

    threads = [threading.Thread(target=worker, name=f"quantkit-serve-{n}", daemon=True)
               for n in range(max(1, min(concurrency, len(requests))))]
    start = time.monotonic()
    for t in threads:
        t.start()
    wait_for(threads, deadline)
    client.close()
    if errors:
        raise errors[0]
    return WorkloadRun(concurrency, time.monotonic() - start, [r for r in results if r is not None])


def complete_token_ids(base_url: str, model: str, prompt: str, max_tokens: int, timeout: float = 300.0) -> list[int]:
    """Greedy completion's token ids (vLLM's `return_token_ids`)."""
    r = httpx.post(
        f"{base_url}/v1/completions",
        timeout=timeout,
        json={"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0, "return_token_ids": True},
    )
    r.raise_for_status()
    ids = r.json()["choices"][0].get("token_ids")
    if ids is None:
        raise ValueError("the server does not return token ids (return_token_ids)")
    return list(ids)


def get_text(base_url: str, path: str, timeout: float = 30.0) -> str:
    r = httpx.get(f"{base_url}{path}", timeout=timeout)
    r.raise_for_status()
    return r.text
