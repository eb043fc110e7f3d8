"""`engine serve` driven by OpenAI's official Python client, the way users and tools reach it.

Starts a real `engine serve` binary on a free loopback port over the default model
(SmolLM2-135M-Instruct on the CPU; the binary fetches it once into its cache, as `cargo test`
does) and checks, through `openai`: chat and completions, whole and streamed; usage; stop
strings; seeds; n; logprobs; the API key; and every refusal the client can meet (400 naming the
field, 404, 401, 413, 429 with Retry-After, a prompt longer than the context), the raw ones it
cannot send (malformed JSON) through urllib; a stream closed early frees its sequence; SIGTERM
exits 0.

    python3 -m pip install openai
    cargo build --profile test -p engine --bin engine      # target/debug/engine, optimized
    python3 engine/tests/openai_client/test_server.py      # ENGINE_BIN=... for another binary

Only the standard library and `openai`; `.ci/run` runs it after `cargo test`.
"""

import json
import os
import re
import signal
import subprocess
import threading
import time
import unittest
import urllib.error
import urllib.request
from pathlib import Path

import openai

ROOT = Path(__file__).resolve().parents[3]
BINARY = os.environ.get("ENGINE_BIN", str(ROOT / "target" / "debug" / "engine"))
KEY = "client-test-key"
CTX = 512
MODEL = "smollm2"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


class Server:
    """An `engine serve` process on a free loopback port, ready when constructed."""

    def __init__(self, *flags):
        args = [BINARY, "serve", "--port", "0", "--ctx-size", str(CTX), "--model-name", MODEL, *flags]
        self.process = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
        self.log = []
        deadline = time.time() + 600  # the first run may fetch the model
        while True:
            line = self.process.stderr.readline()
            if not line:
                raise RuntimeError(f"engine serve exited: {''.join(self.log)}")
            self.log.append(line)
            found = re.search(r"listening on (http://[0-9.:]+)", line)
            if found:
                self.url = found.group(1)
                break
            if time.time() > deadline:
                raise RuntimeError("engine serve did not start listening")
        # stderr keeps coming; drain it so that the process never blocks on a full pipe.
        self.drain = threading.Thread(target=self._drain, daemon=True)
        self.drain.start()
        while self.status("/health") != 200:
            if self.process.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"engine serve never became healthy: {''.join(self.log)}")
            time.sleep(0.1)

    def _drain(self):
        for line in self.process.stderr:
            self.log.append(line)

    def status(self, path, key=None, body=None):
        return self.request(path, key, body)[0]

    def request(self, path, key=None, body=None):
        """(status, headers, body text) of a GET, or of a POST of `body` (bytes)."""
        request = urllib.request.Request(self.url + path, data=body, method="POST" if body is not None else "GET")
        request.add_header("Content-Type", "application/json")
        if key:
            request.add_header("Authorization", f"Bearer {key}")
        try:
            with urllib.request.urlopen(request, timeout=300) as response:
                return response.status, response.headers, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.headers, error.read().decode()
        except (urllib.error.URLError, ConnectionError):
            return None, None, ""

    def metric(self, name, key=KEY):
        _, _, text = self.request("/metrics", key)
        for line in text.splitlines():
            if line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"no {name} in /metrics:\n{text}")

    def wait_until_idle(self, key=KEY):
        deadline = time.time() + 30
        while time.time() < deadline:
            busy = sum(self.metric(m, key) for m in
                       ("engine_requests_running", "engine_requests_waiting", "engine_kv_cache_usage_ratio"))
            if busy == 0:
                return
            time.sleep(0.05)
        raise AssertionError("the engine did not return to idle")

    def client(self, key=KEY, **options):
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=300, **options)

    def stop(self):
        """SIGTERM, as a service manager stops it; the exit status."""
        self.process.send_signal(signal.SIGTERM)
        status = self.process.wait(timeout=60)
        self.drain.join(timeout=10)
        self.process.stderr.close()
        return status


SERVER = None


def setUpModule():
    global SERVER
    SERVER = Server("--api-key", KEY, "--max-seqs", "4", "--max-body-bytes", "65536")


def tearDownModule():
    if SERVER is not None:
        status = SERVER.stop()
        assert status == 0, f"engine serve exited {status} on SIGTERM:\n{''.join(SERVER.log)}"


def greedy_chat(max_tokens=8, **extra):
    return SERVER.client().chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=max_tokens, temperature=0, **extra)


class Chat(unittest.TestCase):
    def test_whole_and_streamed_give_the_same_greedy_text_and_usage(self):
        whole = greedy_chat()
        self.assertTrue(whole.id.startswith("chatcmpl-"))
        self.assertEqual(whole.object, "chat.completion")
        self.assertEqual(whole.model, MODEL)
        choice = whole.choices[0]
        self.assertEqual(choice.message.role, "assistant")
        self.assertTrue(choice.message.content)
        self.assertIn(choice.finish_reason, ("stop", "length"))
        usage = whole.usage
        self.assertGreater(usage.prompt_tokens, 5)
        self.assertLessEqual(usage.completion_tokens, 8)
        self.assertEqual(usage.total_tokens, usage.prompt_tokens + usage.completion_tokens)

        stream = SERVER.client().chat.completions.create(
            model=MODEL, messages=QUESTION, max_tokens=8, temperature=0, stream=True,
            stream_options={"include_usage": True})
        chunks = list(stream)
        self.assertEqual(len({c.id for c in chunks}), 1, "one id per response")
        self.assertEqual(chunks[0].choices[0].delta.role, "assistant")
        self.assertEqual(chunks[-1].choices, [], "the usage chunk has no choices")
        self.assertEqual(chunks[-1].usage.completion_tokens, usage.completion_tokens)
        self.assertEqual(chunks[-1].usage.prompt_tokens, usage.prompt_tokens)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        self.assertEqual(text, choice.message.content)
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        self.assertEqual(finishes, [choice.finish_reason])

    def test_logprobs_with_alternatives(self):
        response = greedy_chat(max_tokens=4, logprobs=True, top_logprobs=3)
        content = response.choices[0].logprobs.content
        self.assertEqual(len(content), response.usage.completion_tokens)
        for entry in content:
            self.assertEqual(len(entry.top_logprobs), 3)
            self.assertEqual(entry.token, entry.top_logprobs[0].token, "greedy takes the likeliest")
            self.assertLessEqual(entry.logprob, 0.0)

    def test_n_choices_and_seeds(self):
        ask = dict(model=MODEL, messages=QUESTION, max_tokens=6, temperature=1.0, seed=7, n=3)
        first = SERVER.client().chat.completions.create(**ask)
        second = SERVER.client().chat.completions.create(**ask)
        texts = [c.message.content for c in first.choices]
        self.assertEqual([c.index for c in first.choices], [0, 1, 2])
        self.assertEqual(texts, [c.message.content for c in second.choices], "same seed, same texts")
        self.assertTrue(3 <= first.usage.completion_tokens <= 18, first.usage)
        other = SERVER.client().chat.completions.create(**{**ask, "seed": 8})
        self.assertNotEqual(texts, [c.message.content for c in other.choices], "another seed, other texts")


def SERVER_TOKENS(text):
    """The tokens of `text` as the server counts them (/tokenize)."""
    _, _, body = SERVER.request("/tokenize", KEY, json.dumps({"prompt": text}).encode())
    return json.loads(body)["tokens"]


class Completions(unittest.TestCase):
    PROMPT = "The capital of France is"

    def greedy(self, **extra):
        ask = dict(model=MODEL, prompt=self.PROMPT, max_tokens=8, temperature=0)
        return SERVER.client().completions.create(**{**ask, **extra})

    def test_whole_and_streamed(self):
        whole = self.greedy()
        self.assertEqual(whole.object, "text_completion")
        text = whole.choices[0].text
        self.assertTrue(text)
        chunks = list(self.greedy(stream=True, stream_options={"include_usage": True}))
        self.assertEqual("".join(c.choices[0].text for c in chunks if c.choices), text)
        self.assertEqual(chunks[-1].usage.completion_tokens, whole.usage.completion_tokens)
        self.assertEqual(whole.usage.prompt_tokens, len(SERVER_TOKENS(self.PROMPT)))

    def test_a_stop_string_ends_the_text_before_it(self):
        text = self.greedy().choices[0].text
        words = [w for w in text.split(" ") if w.strip()]
        self.assertGreater(len(words), 1, text)
        stop = words[len(words) // 2].strip()
        stopped = self.greedy(stop=[stop, "zzzz"])
        self.assertEqual(stopped.choices[0].text, text[:text.index(stop)])
        self.assertEqual(stopped.choices[0].finish_reason, "stop")

    def test_logprobs(self):
        response = self.greedy(logprobs=2, max_tokens=4)
        logprobs = response.choices[0].logprobs
        self.assertEqual(len(logprobs.tokens), response.usage.completion_tokens)
        self.assertEqual(len(logprobs.token_logprobs), len(logprobs.tokens))
        self.assertTrue(all(len(top) == 2 for top in logprobs.top_logprobs))
        self.assertEqual("".join(logprobs.tokens), response.choices[0].text)

    def test_token_ids_as_the_prompt(self):
        ids = SERVER_TOKENS(self.PROMPT)
        by_ids = SERVER.client().completions.create(model=MODEL, prompt=ids, max_tokens=8, temperature=0)
        self.assertEqual(by_ids.choices[0].text, self.greedy().choices[0].text)


class Refusals(unittest.TestCase):
    def assertRefused(self, error, status, param=None, code=None):
        self.assertEqual(error.status_code, status)
        body = error.body
        self.assertIsInstance(body, dict, error)
        for field in ("message", "type", "param", "code"):
            self.assertIn(field, body, body)
        if param is not None:
            self.assertEqual(body["param"], param, body)
        if code is not None:
            self.assertEqual(body["code"], code, body)

    def test_wrong_types_and_out_of_range_values_name_the_field(self):
        client = SERVER.client()
        for extra, param in [
            (dict(temperature=3.5), "temperature"),
            (dict(top_p=0), "top_p"),
            (dict(max_tokens=0), "max_tokens"),
            (dict(n=100), "n"),
            (dict(presence_penalty=9), "presence_penalty"),
            (dict(extra_body={"temperature": "hot"}), "temperature"),
            (dict(extra_body={"stop": 7}), "stop"),
            (dict(logprobs=True, top_logprobs=50), "top_logprobs"),
            (dict(extra_body={"reasoning_effort": "max"}), "reasoning_effort"),
        ]:
            with self.subTest(param=param), self.assertRaises(openai.BadRequestError) as caught:
                client.chat.completions.create(model=MODEL, messages=QUESTION, **extra)
            self.assertRefused(caught.exception, 400, param)
        with self.assertRaises(openai.BadRequestError) as caught:
            client.chat.completions.create(model=MODEL, messages=[{"role": "robot", "content": "hi"}])
        self.assertRefused(caught.exception, 400, "messages[0].role")

    def test_malformed_json_is_400(self):
        status, _, body = SERVER.request("/v1/chat/completions", KEY, b'{"messages": [')
        self.assertEqual(status, 400)
        error = json.loads(body)["error"]
        self.assertEqual(error["code"], "invalid_json")
        self.assertEqual(error["type"], "invalid_request_error")

    def test_an_unknown_model_is_404(self):
        with self.assertRaises(openai.NotFoundError) as caught:
            SERVER.client().chat.completions.create(model="gpt-9", messages=QUESTION)
        self.assertRefused(caught.exception, 404, "model", "model_not_found")

    def test_a_prompt_longer_than_the_context_is_400(self):
        with self.assertRaises(openai.BadRequestError) as caught:
            SERVER.client().completions.create(model=MODEL, prompt="word " * (CTX + 10), max_tokens=1)
        self.assertRefused(caught.exception, 400, "prompt", "context_length_exceeded")

    def test_a_body_over_the_limit_is_413(self):
        with self.assertRaises(openai.APIStatusError) as caught:
            SERVER.client().completions.create(model=MODEL, prompt="a " * 40_000, max_tokens=1)
        self.assertRefused(caught.exception, 413)

    def test_the_api_key(self):
        for key in ("wrong", ""):
            with self.subTest(key=key), self.assertRaises(openai.AuthenticationError) as caught:
                SERVER.client(key=key or "none").models.list()
            self.assertRefused(caught.exception, 401)
        self.assertEqual(SERVER.status("/health"), 200, "/health needs no key")
        self.assertEqual(SERVER.status("/metrics"), 401)
        self.assertEqual([m.id for m in SERVER.client().models.list()], [MODEL])


class Overload(unittest.TestCase):
    def test_a_full_queue_is_429_and_a_closed_stream_frees_its_sequence(self):
        # One running sequence and no waiting room; its own server.
        server = Server("--max-seqs", "1", "--max-queue", "0")
        try:
            client = server.client(key="unused")
            stream = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=400, stream=True)
            chunks = iter(stream)
            next(chunks)
            next(chunks)
            with self.assertRaises(openai.RateLimitError) as caught:
                client.completions.create(model=MODEL, prompt="Hi", max_tokens=1)
            self.assertEqual(caught.exception.status_code, 429)
            self.assertEqual(caught.exception.response.headers.get("retry-after"), "1")
            self.assertEqual(server.metric("engine_requests_running", None), 1)
            stream.close()
            server.wait_until_idle(None)
            self.assertLess(server.metric("engine_generation_tokens_total", None), 400, "cancelled early")
            deadline = time.time() + 10
            while True:
                try:
                    done = client.completions.create(model=MODEL, prompt="Hi", max_tokens=1)
                    break
                except openai.RateLimitError:
                    if time.time() > deadline:
                        raise
                    time.sleep(0.05)
            self.assertEqual(done.usage.completion_tokens, 1)
        finally:
            self.assertEqual(server.stop(), 0)


class Shutdown(unittest.TestCase):
    def test_sigterm_ends_a_request_in_flight_within_the_grace_and_exits_0(self):
        server = Server("--shutdown-grace", "1")
        client = server.client(key="unused")
        stream = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=400, stream=True)
        chunks = iter(stream)
        next(chunks)
        next(chunks)
        signalled = time.time()
        server.process.send_signal(signal.SIGTERM)
        finish = None
        try:
            for chunk in chunks:  # the rest of the stream, cut by the grace
                if chunk.choices and chunk.choices[0].finish_reason:
                    finish = chunk.choices[0].finish_reason
        except openai.APIError:
            finish = "error event"
        self.assertIsNotNone(finish, "the stream ended with a finish chunk or an error event")
        self.assertLess(time.time() - signalled, 15)
        self.assertEqual(server.process.wait(timeout=30), 0, "".join(server.log))
        self.assertIsNone(server.status("/health"), "no longer listening")
        server.drain.join(timeout=10)
        server.process.stderr.close()


if __name__ == "__main__":
    unittest.main(verbosity=2)
