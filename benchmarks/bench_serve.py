"""The OpenAI-compatible server under load vs sequential generation through the pipeline (the embedded model).

The same requests (chat prompts, every other one with a GUIDE span, greedy, a
fixed ``max_tokens``) are answered

* sequentially: ``pipeline(messages, max_new_tokens=..., delta_mid=...)``, one after another,
  on one worker thread as the server generates (on a loaded CPU, torch in the main thread
  ran several times slower here than in any other thread, which would flatter the server);
* by ``attnlens serve`` (in this process, on 127.0.0.1) through the ``openai``
  client from 1, 4 and 16 concurrent clients (threads), each sending its share in turn,
  once generating batch by batch and once with continuous batching (the default).

Prints requests per second, latency p50/p95 per request, the throughput ratio
against the sequential run, and how many server answers equal the pipeline's.
Wall time; on an accelerator, synchronised by the answers themselves.

    python benchmarks/bench_serve.py [--requests 16] [--max-tokens 16] [--clients 1,4,16]
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

from _model import add_model_args, describe, load_bridge

TOPICS = ["the sea", "a city at night", "bread", "the moon", "winter", "a library", "trains", "a garden",
          "music", "rain", "mountains", "a market", "the desert", "bicycles", "coffee", "an old clock"]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    low, high = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (k - low)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=16, help="requests per measurement")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--clients", default="1,4,16", help="concurrent clients, comma-separated")
    parser.add_argument("--delta", type=float, default=2.0)
    parser.add_argument("--batch-size", type=int, default=16, help="the server's largest batch")
    add_model_args(parser)
    args = parser.parse_args()

    import openai
    import torch

    import attnlens as al
    from attnlens.api.server import start_server

    model = load_bridge(args.shape, args.device, args.dtype)
    pipe = al.pipeline("pay-attention", model=model)
    requests = []
    for i in range(args.requests):
        topic = TOPICS[i % len(TOPICS)]
        text = (f"<!!-> Answer in French. <-!!> Write two sentences about {topic}." if i % 2 == 0
                else f"Write two sentences about {topic}.")
        requests.append([{"role": "user", "content": text}])
    n = args.max_tokens

    def alone(messages):
        return pipe(messages, max_new_tokens=n, delta_mid=args.delta)[0]["generated_text"]

    def sequential():
        alone(requests[0])  # warm-up
        latencies, answers = [], []
        start = time.perf_counter()
        for messages in requests:
            t = time.perf_counter()
            answers.append(alone(messages))
            latencies.append(time.perf_counter() - t)
        return time.perf_counter() - start, latencies, answers

    with ThreadPoolExecutor(1) as worker:
        elapsed, latencies, answers = worker.submit(sequential).result()
    rows = [("pipeline, sequential", 1, len(requests) / elapsed, latencies, len(requests))]

    peaks = {}
    for continuous in (False, True):
        kind = "continuous" if continuous else "batch by batch"
        with start_server(model, model_name="bench", max_batch_size=args.batch_size,
                          continuous=continuous) as server:
            client = openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=600)

            def ask(messages):
                t = time.perf_counter()
                reply = client.chat.completions.create(model="bench", messages=messages, max_tokens=n,
                                                       extra_body={"attnlens": {"delta_mid": args.delta}})
                return reply.choices[0].message.content, time.perf_counter() - t

            ask(requests[0])  # warm-up
            for clients in [int(c) for c in args.clients.split(",")]:
                start = time.perf_counter()
                with ThreadPoolExecutor(clients) as pool:
                    served = list(pool.map(ask, requests))
                elapsed = time.perf_counter() - start
                equal = sum(text == want for (text, _), want in zip(served, answers))
                rows.append((f"server ({kind}), {clients} client(s)", clients, len(requests) / elapsed,
                             [s[1] for s in served], equal))
            peaks[kind] = server.engine.stats.peak

    print(f"{describe(args.shape, args.device, args.dtype)}, {len(requests)} chat requests (half with a GUIDE span, "
          f"delta {args.delta}), greedy, max_tokens {n}, torch threads {torch.get_num_threads()}")
    base = rows[0][2]
    print(f"  {'':<38} {'req/s':>7} {'p50 s':>7} {'p95 s':>7} {'vs sequential':>14} {'equal answers':>14}")
    for name, _, rate, lat, equal in rows:
        print(f"  {name:<38} {rate:7.2f} {statistics.median(lat):7.2f} {percentile(lat, 0.95):7.2f} "
              f"{rate / base:13.2f}x {equal:>8}/{len(requests)}")
    print("  most rows generated at once: " + ", ".join(f"{k} {v}" for k, v in peaks.items()))


if __name__ == "__main__":
    main()
