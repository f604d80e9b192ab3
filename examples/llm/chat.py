#!/usr/bin/env python3
"""Streams one chat completion from an OpenAI-compatible endpoint with the `openai` package, as
any OpenAI client would, printing each token as it arrives, then the usage and the rates.

usage: chat.py BASE_URL [PROMPT] [--max-tokens N] [--host NAME] [--quiet]
  BASE_URL  e.g. http://127.0.0.1:18080/v1 (a port-forward to the ModelService's Service)
  --host    the Host header: the ModelService's name when BASE_URL is a port-forward to a
            sidecar, which finds the ModelService by it
Prints a last line of JSON: {"ttft_s", "tokens", "tokens_per_s", "usage"}.
"""
import argparse
import json
import sys
import time

from openai import OpenAI


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("base_url")
    p.add_argument("prompt", nargs="?", default="Name three colours of the rainbow.")
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--host", help="Host header (the ModelService's name through a port-forward)")
    p.add_argument("--quiet", action="store_true", help="print only the summary line")
    a = p.parse_args()
    client = OpenAI(
        base_url=a.base_url,
        api_key="none",
        timeout=120,
        max_retries=0,
        default_headers={"Host": a.host} if a.host else None,
    )
    start = time.monotonic()
    first = None
    pieces = 0
    usage = None
    stream = client.chat.completions.create(
        model="smollm2",
        messages=[
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": a.prompt},
        ],
        max_tokens=a.max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage.model_dump()
        for choice in chunk.choices:
            text = choice.delta.content or ""
            if text:
                first = first or time.monotonic()
                pieces += 1
                if not a.quiet:
                    print(text, end="", flush=True)
    end = time.monotonic()
    if not a.quiet:
        print()
    if first is None or usage is None:
        print("no tokens or no usage in the stream", file=sys.stderr)
        return 1
    generated = usage.get("completion_tokens") or pieces
    decode = max(end - first, 1e-6)
    print(json.dumps({
        "ttft_s": round(first - start, 3),
        "tokens": generated,
        # The first token comes with the prefill; the rate is of the tokens after it.
        "tokens_per_s": round((generated - 1) / decode, 1),
        "usage": usage,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
