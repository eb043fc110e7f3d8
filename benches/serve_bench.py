#!/usr/bin/env python3
"""A serving benchmark client for OpenAI-compatible servers (`engine serve`, llama-server, vLLM).

Sends `--num-prompts` requests of random token-id prompts to `/v1/completions`, streamed, either
all at once under `--max-concurrency` or arriving as a Poisson process at `--request-rate`, and
reports what `vllm bench serve` reports, with its definitions:

  request throughput   completed requests / benchmark duration
  output throughput    generated tokens / duration;  total: (prompt + generated) / duration
  TTFT   time to first token: from sending the request to the first chunk that carries text
  TPOT   time per output token, per request: (e2e latency - TTFT) / (output tokens - 1), for
         requests of more than one output token
  ITL    inter-token latency: the gaps between successive text chunks, over all requests
  E2EL   end-to-end latency: from sending the request to its last byte
each as mean, median and p99 (p99 by linear interpolation, as numpy's percentile). Output tokens
are the server's own count (`usage.completion_tokens`, asked with `stream_options`), else the
number of text chunks. Random prompts are token ids drawn uniformly from `--token-range`, as vLLM's
random dataset draws them; `ignore_eos` (vLLM's and llama-server's field, and ours) keeps every
output at its drawn length. Only the standard library.

    python3 benches/serve_bench.py --base-url http://127.0.0.1:8080 --max-concurrency 8 \\
        --num-prompts 100 --input-len 128 --output-len 64
"""

import argparse
import http.client
import json
import random
import statistics
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass, field


@dataclass
class Result:
    ok: bool = False
    error: str = ""
    prompt_tokens: int = 0
    output_tokens: int = 0
    ttft: float = 0.0
    latency: float = 0.0
    itl: list = field(default_factory=list)
    text: str = ""


def percentile(values, q):
    """numpy.percentile's default (linear interpolation between closest ranks)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def one_request(url, headers, body, timeout):
    """Streams one completion; the Result with its timings."""
    result = Result(prompt_tokens=len(body["prompt"]))
    parts = urllib.parse.urlsplit(url)
    connection_type = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    connection = connection_type(parts.hostname, parts.port, timeout=timeout)
    start = time.perf_counter()
    last = start
    chunks = 0
    try:
        connection.request("POST", parts.path.rstrip("/") + "/v1/completions", json.dumps(body), headers)
        response = connection.getresponse()
        if response.status != 200:
            result.error = f"HTTP {response.status}: {response.read()[:300]!r}"
            return result
        done = False
        while not done:
            line = response.readline()
            if not line:
                break
            line = line.strip()
            if not line.startswith(b"data:"):
                continue  # blank lines between events, keep-alive comments
            data = line[5:].strip()
            if data == b"[DONE]":
                done = True
                break
            chunk = json.loads(data)
            now = time.perf_counter()
            choices = chunk.get("choices") or []
            text = (choices[0].get("text") or "") if choices else ""
            if text:
                if chunks == 0:
                    result.ttft = now - start
                else:
                    result.itl.append(now - last)
                last = now
                chunks += 1
                result.text += text
            usage = chunk.get("usage")
            if usage and usage.get("completion_tokens") is not None:
                result.output_tokens = usage["completion_tokens"]
                result.prompt_tokens = usage.get("prompt_tokens") or result.prompt_tokens
        result.latency = time.perf_counter() - start
        if not done:
            result.error = "the stream ended before data: [DONE]"
            return result
        if result.output_tokens == 0:
            result.output_tokens = chunks
        result.ok = chunks > 0
        if not result.ok:
            result.error = "no text came back"
    except (OSError, http.client.HTTPException, json.JSONDecodeError) as error:
        result.error = f"{type(error).__name__}: {error}"
    finally:
        connection.close()
    return result


def make_requests(args):
    rng = random.Random(args.seed)
    low, high = args.token_range
    requests = []
    for _ in range(args.num_prompts):
        scale = lambda n: max(1, round(n * rng.uniform(1 - args.range_ratio, 1 + args.range_ratio)))
        prompt = [rng.randrange(low, high) for _ in range(scale(args.input_len))]
        body = {"prompt": prompt, "max_tokens": scale(args.output_len), "stream": True,
                "stream_options": {"include_usage": True}, "temperature": 0.0, "ignore_eos": not args.no_ignore_eos}
        if args.model:
            body["model"] = args.model
        requests.append(body)
    return requests


def run(args):
    headers = {"Content-Type": "application/json"}
    if args.api_key:
        headers["Authorization"] = f"Bearer {args.api_key}"
    requests = make_requests(args)
    warm = one_request(args.base_url, headers, {**requests[0], "max_tokens": 4}, args.timeout)
    if not warm.ok:
        sys.exit(f"the warm-up request failed: {warm.error}")
    results = [None] * len(requests)
    limit = threading.Semaphore(args.max_concurrency or len(requests))
    rng = random.Random(args.seed + 1)

    def worker(index):
        with limit:
            results[index] = one_request(args.base_url, headers, requests[index], args.timeout)

    threads = []
    start = time.perf_counter()
    for index in range(len(requests)):
        thread = threading.Thread(target=worker, args=(index,))
        thread.start()
        threads.append(thread)
        if args.request_rate != float("inf"):
            time.sleep(rng.expovariate(args.request_rate))
    for thread in threads:
        thread.join()
    duration = time.perf_counter() - start
    return summarize(args, results, duration)


def summarize(args, results, duration):
    done = [r for r in results if r.ok]
    failed = [r for r in results if not r.ok]
    ms = 1000.0
    summary = {
        "base_url": args.base_url,
        "max_concurrency": args.max_concurrency,
        "request_rate": args.request_rate,
        "num_prompts": len(results),
        "completed": len(done),
        "failed": len(failed),
        "errors": sorted({r.error for r in failed})[:5],
        "duration_s": duration,
        "total_input_tokens": sum(r.prompt_tokens for r in done),
        "total_output_tokens": sum(r.output_tokens for r in done),
    }
    summary["request_throughput"] = len(done) / duration
    summary["output_throughput"] = summary["total_output_tokens"] / duration
    summary["total_token_throughput"] = (summary["total_input_tokens"] + summary["total_output_tokens"]) / duration
    series = {
        "ttft": [r.ttft * ms for r in done],
        "tpot": [(r.latency - r.ttft) / (r.output_tokens - 1) * ms for r in done if r.output_tokens > 1],
        "itl": [gap * ms for r in done for gap in r.itl],
        "e2el": [r.latency * ms for r in done],
    }
    for name, values in series.items():
        summary[f"mean_{name}_ms"] = statistics.fmean(values) if values else 0.0
        summary[f"median_{name}_ms"] = statistics.median(values) if values else 0.0
        summary[f"p99_{name}_ms"] = percentile(values, 99)
    return summary


def print_summary(s):
    line = lambda label, value: print(f"{label:<40}{value:>12}")
    print("{s:{c}^52}".format(s=" Serving Benchmark Result ", c="="))
    line("Successful requests:", s["completed"])
    line("Failed requests:", s["failed"])
    for error in s["errors"]:
        print(f"  {error}")
    line("Maximum request concurrency:", s["max_concurrency"] or "none")
    line("Request rate (req/s):", s["request_rate"])
    line("Benchmark duration (s):", f"{s['duration_s']:.2f}")
    line("Total input tokens:", s["total_input_tokens"])
    line("Total generated tokens:", s["total_output_tokens"])
    line("Request throughput (req/s):", f"{s['request_throughput']:.2f}")
    line("Output token throughput (tok/s):", f"{s['output_throughput']:.2f}")
    line("Total token throughput (tok/s):", f"{s['total_token_throughput']:.2f}")
    for name, title in [("ttft", "Time to First Token"), ("tpot", "Time per Output Token (excl. 1st token)"),
                        ("itl", "Inter-token Latency"), ("e2el", "End-to-end Latency")]:
        print("{s:{c}^52}".format(s=f" {title} ", c="-"))
        for stat in ("mean", "median", "p99"):
            line(f"{stat.capitalize() if stat != 'p99' else 'P99'} {name.upper()} (ms):", f"{s[f'{stat}_{name}_ms']:.2f}")
    print("=" * 52)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8080")
    parser.add_argument("--model", help="the model field of each request (default: none sent)")
    parser.add_argument("--api-key")
    parser.add_argument("--num-prompts", type=int, default=200)
    parser.add_argument("--input-len", type=int, default=256)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--range-ratio", type=float, default=0.0,
                        help="lengths drawn uniformly in [len * (1 - r), len * (1 + r)]")
    parser.add_argument("--token-range", type=int, nargs=2, default=[1000, 20000], metavar=("LOW", "HIGH"),
                        help="prompt token ids are drawn from [LOW, HIGH)")
    parser.add_argument("--max-concurrency", type=int, default=0, help="most requests in flight (0: no limit)")
    parser.add_argument("--request-rate", type=float, default=float("inf"),
                        help="requests per second, Poisson arrivals (default inf: all at once)")
    parser.add_argument("--no-ignore-eos", action="store_true", help="let outputs end at end-of-sequence")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    if args.num_prompts < 1 or args.input_len < 1 or args.output_len < 1:
        parser.error("--num-prompts, --input-len and --output-len must be at least 1")
    if not 0 <= args.range_ratio < 1:
        parser.error("--range-ratio must be in [0, 1)")
    if args.token_range[0] >= args.token_range[1] or args.token_range[0] < 0:
        parser.error("--token-range LOW HIGH: 0 <= LOW < HIGH")
    summary = run(args)
    print_summary(summary)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(summary, out, indent=2)
    if summary["failed"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
