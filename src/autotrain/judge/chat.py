"""A judge behind an OpenAI-compatible chat-completions URL (vLLM, llama.cpp's server, Ollama, a hosted API).

Each order is one request: the judge prompt as one user message, temperature 0, at most `MAX_TOKENS` tokens; the
verdict is the letter the reply starts with ("A", "B", "**A**", "[[B]]", "A." all read; anything else is
unreadable, counted as such, and that order counts as no verdict). The key is autotrain.judge.spec.api_key's, from
the environment, sent as a bearer token.

A request that fails for a reason that may pass (no connection, a timeout, HTTP 408, 429 or 5xx) is tried
`TRIES` times in all, waiting 1 s, then 2 s; one the server refuses for good (401, 403, 404, another 4xx) is not
tried again. Either way JudgeUnavailable stops the judging, the verdicts so far kept.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request

from autotrain.judge.base import A, B, JudgeUnavailable, Reply
from autotrain.judge.spec import api_key, fill, reason_of

MAX_TOKENS = 8
TRIES = 3
TIMEOUT_S = 120.0
_LETTER = re.compile(r"^[\s*_#`'\"\[\(]*(A|B)(?![A-Za-z0-9])")
_PASSING = {408, 429}


def read_letter(text: str) -> str | None:
    found = _LETTER.match(text or "")
    return found.group(1) if found else None


class ChatJudge:
    describe, calls_per_pair = "judge request", 2

    def __init__(self, url: str, model: str, template: str, wait: float = 1.0):
        self.url, self.model, self.template, self.wait = url, model, template, wait
        key = api_key(url)
        self.headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}

    def prefer(self, question: str, answer_a: str, answer_b: str) -> Reply:
        body = {"model": self.model, "temperature": 0, "max_tokens": MAX_TOKENS,
                "messages": [{"role": "user", "content": fill(self.template, question, answer_a, answer_b)}]}
        text = self._post(json.dumps(body).encode())
        choice = read_letter(text)
        return Reply(choice if choice in (A, B) else None, text=text)

    def _post(self, data: bytes) -> str:
        reason, tried = "", 0
        for attempt in range(TRIES):
            tried += 1
            if attempt:
                time.sleep(self.wait * 2 ** (attempt - 1))
            request = urllib.request.Request(self.url, data=data, headers=self.headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=TIMEOUT_S) as answer:
                    reply = json.loads(answer.read())
                return str(reply["choices"][0]["message"].get("content") or "")
            except urllib.error.HTTPError as exc:
                reason = reason_of(exc)
                if exc.code not in _PASSING and exc.code < 500:
                    break
            except (urllib.error.URLError, OSError) as exc:
                reason = reason_of(exc)
            except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
                raise JudgeUnavailable(f"the answer is not a chat completion: {exc}") from None
        raise JudgeUnavailable(f"{reason}, after {tried} {'try' if tried == 1 else 'tries'}")
