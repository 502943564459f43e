"""A minimal OpenAI-compatible server for tests: serves a local transformers model.

``python openai_server.py MODEL_DIR [--idle-timeout S]`` binds 127.0.0.1 on an ephemeral port,
prints ``PORT <n>`` on stdout, and serves ``/v1/completions``, ``/v1/chat/completions`` and
``/v1/models`` (sampling with ``temperature``/``top_p``/``max_tokens``/``seed``; ``usage`` and
``finish_reason`` as vLLM reports them). It stops by itself after ``--idle-timeout`` seconds
without a request, or when its parent process goes away. Fault injection for the multi-server
tests: ``--delay S`` waits S seconds before answering each request (so requests overlap), and
``--die-after K`` makes the process exit abruptly (``os._exit``, like a killed server: open
connections, and so the requests still being answered, are reset; new ones are refused) when
request K+1 arrives; a base URL ``http://HOST:PORT/status-CODE/v1`` answers every request with
HTTP CODE (a server failing with 5xx).

:func:`start_server` runs it as a subprocess and returns the process and its URL
(:func:`start_servers` several at once).
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def start_server(model_dir: str | Path, *args: str) -> tuple[subprocess.Popen, str]:
    """Start this server on ``model_dir`` (extra command-line ``args``); returns the process
    and its base URL ``http://127.0.0.1:PORT``. Raises RuntimeError if it does not start."""
    return start_servers(model_dir, list(args))[0]


def start_servers(
    model_dir: str | Path, *arg_lists: list[str]
) -> list[tuple[subprocess.Popen, str]]:
    """Start one server per list of extra arguments, all at once (they load in parallel);
    returns ``(process, URL)`` of each. Raises RuntimeError (stopping them all) if one does not
    start."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), str(model_dir), *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        for args in arg_lists
    ]
    started = []
    try:
        for proc in procs:
            sel = selectors.DefaultSelector()
            sel.register(proc.stdout, selectors.EVENT_READ)
            if not sel.select(timeout=120):
                raise RuntimeError("test server did not start within 120 s")
            line = proc.stdout.readline()
            if not line.startswith("PORT "):
                raise RuntimeError(f"test server failed: {line!r} {proc.stderr.read()[-2000:]}")
            started.append((proc, f"http://127.0.0.1:{int(line.split()[1])}"))
    except BaseException:
        for proc in procs:
            stop_server(proc)
        raise
    return started


def stop_server(proc: subprocess.Popen) -> None:
    """Terminate a server started by :func:`start_server` (kill it after 10 s)."""
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--idle-timeout", type=float, default=60.0)
    ap.add_argument("--delay", type=float, default=0.0)
    ap.add_argument("--die-after", type=int, default=None)
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    eos = tok.eos_token_id
    lock = threading.Lock()
    last = [time.monotonic()]
    posts = [0]

    def complete(prompt: str, body: dict) -> tuple[str, int, str]:
        ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
        max_tokens = int(body.get("max_tokens", 16))
        temperature = float(body.get("temperature", 1.0))
        kwargs = {
            "do_sample": temperature > 0,
            "max_new_tokens": max_tokens,
            "pad_token_id": tok.pad_token_id,
            "eos_token_id": eos,
        }
        if temperature > 0:
            kwargs.update(temperature=temperature, top_p=float(body.get("top_p", 1.0)), top_k=0)
        with lock, torch.inference_mode():
            torch.manual_seed(int(body.get("seed", 0)))
            out = model.generate(**ids, **kwargs)
        new = out[0, ids["input_ids"].shape[1]:].tolist()
        if eos in new:
            k = new.index(eos)
            return tok.decode(new[:k], skip_special_tokens=True), k + 1, "stop"
        return tok.decode(new, skip_special_tokens=True), len(new), "length"

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a) -> None:  # quiet
            pass

        def _send(self, code: int, obj: dict) -> None:
            data = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            last[0] = time.monotonic()
            if self.path == "/v1/models":
                self._send(200, {"data": [{"id": args.model}]})
            else:
                self._send(404, {"error": "not found"})

        def do_POST(self) -> None:
            last[0] = time.monotonic()
            with lock:
                posts[0] += 1
                if args.die_after is not None and posts[0] > args.die_after:
                    os._exit(1)  # like a killed server: every open connection is reset
            if args.delay:
                time.sleep(args.delay)
            # fault injection: a base URL http://HOST:PORT/status-CODE/v1 answers HTTP CODE
            if self.path.startswith("/status-"):
                code = int(self.path.split("/")[1].split("-")[1])
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self._send(code, {"error": f"injected HTTP {code}"})
                return
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            # fault injection: served name MODEL#bad=FIELD answers with a bad FIELD
            bad = ""
            if str(body.get("model", "")).startswith(args.model + "#bad="):
                bad = body["model"].split("#bad=", 1)[1]
                body["model"] = args.model
            if body.get("model") != args.model:
                self._send(404, {"error": f"model {body.get('model')!r} not served"})
                return
            if self.path == "/v1/completions":
                text, n, reason = complete(body["prompt"], body)
                choice = {"index": 0, "text": text, "finish_reason": reason}
            elif self.path == "/v1/chat/completions":
                prompt = tok.apply_chat_template(
                    body["messages"], tokenize=False, add_generation_prompt=True
                )
                text, n, reason = complete(prompt, body)
                choice = {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": reason,
                }
            else:
                self._send(404, {"error": "not found"})
                return
            usage: dict = {"completion_tokens": n}
            if bad == "text":
                choice["text"] = 5
            elif bad == "tokens-negative":
                usage["completion_tokens"] = -5
            elif bad == "tokens-string":
                usage["completion_tokens"] = "many"
            self._send(200, {"choices": [choice], "usage": usage})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    parent = os.getppid()

    def watchdog() -> None:
        while True:
            time.sleep(0.5)
            if time.monotonic() - last[0] > args.idle_timeout or os.getppid() != parent:
                server.shutdown()
                return

    threading.Thread(target=watchdog, daemon=True).start()
    print(f"PORT {server.server_address[1]}", flush=True)
    server.serve_forever()
    server.server_close()
    sys.exit(0)


if __name__ == "__main__":
    main()
