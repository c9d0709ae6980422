"""Time to the first token and tokens per second of `aitraining chat`, as the page gets them.

The command serves a finished run on a free port of this machine; each prompt is POSTed to /api/chat (greedy,
compare on: the trained model, then its starting point), and the clock runs on this side of the HTTP connection:
the time to the first token is from sending the request (the trained side) or from the starting model's `start`
event to the first `token` event; tokens per second are the tokens after the first over the time from the first to
the last. A first request, not counted, loads the model.

    python bench/chat_speed.py --project-name demo-orpo [--max-new-tokens 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time

import httpx

PROMPTS = ("Add 4 and 53.", "What month is after March?", "How many letters does 'chicken' have?")


def ask(url: str, run: str, prompt: str, max_new_tokens: int, answer_id: str) -> dict[str, dict[str, float]]:
    """Per side: seconds to the first token, tokens after it per second, and the server's own two numbers."""
    messages = [{"role": "user", "content": prompt}]
    body = {"run": run, "id": answer_id, "messages": messages, "base_messages": messages,
            "settings": {"greedy": True, "max_new_tokens": max_new_tokens}}
    sent, seen = time.perf_counter(), {}
    with httpx.stream("POST", f"{url}api/chat", json=body, timeout=600) as response:
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            event, now = json.loads(line[6:]), time.perf_counter()
            side = seen.setdefault(event.get("side", ""), {"start": sent})
            if event["type"] == "start" and event["side"] == "base":
                side["start"] = now
            elif event["type"] == "token":
                side.setdefault("first", now)
                side["last"] = now
            elif event["type"] == "done":
                side.update(tokens=event["tokens"], server_first=event["first_token_s"],
                            server_rate=event["tokens_per_s"])
            elif event["type"] == "error":
                sys.exit(f"error: {event['message']}")
    timings = {}
    for name in ("trained", "base"):
        side = seen[name]
        spread = side["last"] - side["first"]
        timings[name] = {"first_token_s": side["first"] - side["start"], "tokens": side["tokens"],
                         "tokens_per_s": (side["tokens"] - 1) / spread if spread > 0 else float("nan"),
                         "server_first_token_s": side["server_first"], "server_tokens_per_s": side["server_rate"]}
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project-name", required=True)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    command = [sys.executable, "-m", "autotrain", "chat", "--project-name", args.project_name, "--port", "0"]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        found = re.match(r"aitraining chat: (http://\S+/) ", server.stdout.readline())
        if not found:
            sys.exit("the server did not start")
        url, run = found.group(1), os.path.basename(os.path.abspath(args.project_name))
        started = time.perf_counter()
        ask(url, run, "Hello.", 4, "warm-up")
        print(f"load (both sides) and a 4-token warm-up: {time.perf_counter() - started:.1f} s")
        rows = [ask(url, run, prompt, args.max_new_tokens, f"{i}-{n}")
                for i in range(args.repeats) for n, prompt in enumerate(PROMPTS)]
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(60)
    print(f"{len(rows)} answers (greedy, at most {args.max_new_tokens} new tokens); median [min-max]; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print("| side | first token (s) | tokens/s | tokens | server: first token (s) | server: tokens/s |")
    print("|---|---|---|---|---|---|")
    for name in ("trained", "base"):
        cells = []
        for key in ("first_token_s", "tokens_per_s", "tokens", "server_first_token_s", "server_tokens_per_s"):
            values = [row[name][key] for row in rows]
            cells.append(f"{statistics.median(values):.3g} [{min(values):.3g}-{max(values):.3g}]")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
