"""A minimal OpenAI-compatible server for tests: serves a local transformers model.

``python openai_server.py MODEL_DIR [--idle-timeout S]`` binds 127.0.0.1 on an ephemeral port,
prints ``PORT <n>`` on stdout, and serves ``/v1/completions``, ``/v1/chat/completions`` and
``/v1/models`` (sampling with ``temperature``/``top_p``/``max_tokens``/``seed``; ``usage`` and
``finish_reason`` as vLLM reports them). It stops by itself after ``--idle-timeout`` seconds
without a request, or when its parent process goes away.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--idle-timeout", type=float, default=60.0)
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    eos = tok.eos_token_id
    lock = threading.Lock()
    last = [time.monotonic()]

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
