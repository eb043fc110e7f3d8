#!/usr/bin/env python3
"""Writes the committed seed corpora under fuzz/seeds/ from real files, made small.

    python3 fuzz/make_seeds.py [SmolLM2-135M-Instruct.Q4_1.gguf]

- gguf_reader: each fixture model (tests/fixtures/*.gguf) and SmolLM2's header, with every array
  cut to its first entries and every tensor shrunk to one block per row (same names, types and
  number of dimensions; offsets recomputed), data filled with a fixed pattern.
- tokenizer: each vocabulary (engine/tests/data/vocab/*.gguf, the fixtures, SmolLM2) cut to its
  first 160 tokens plus the last 24 (where control tokens live), the merges that stay inside them,
  with a few lines of the vocabulary's own test input (.inp) as text.
- chat_template: every `tokenizer.chat_template` in those files, plus a few hand-written ones.
- sampler: NaN, infinities, all-equal and ordinary logits under several settings.
"""
import glob
import os
import struct
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "fuzz", "seeds")

BLOCK = {0: (1, 4), 1: (1, 2), 30: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24),
         8: (32, 34), 12: (256, 144), 13: (256, 176), 14: (256, 210), 39: (32, 17)}
SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


class Reader:
    def __init__(self, data):
        self.d, self.p = data, 0

    def take(self, fmt):
        v = struct.unpack_from(fmt, self.d, self.p)[0]
        self.p += struct.calcsize(fmt)
        return v

    def string(self):
        n = self.take("<Q")
        s = self.d[self.p:self.p + n]
        self.p += n
        return s

    def value(self, ty):
        if ty in SCALAR:
            return self.take(SCALAR[ty])
        if ty == 8:
            return self.string()
        if ty == 9:
            et, n = self.take("<I"), self.take("<Q")
            return (et, [self.value(et) for _ in range(n)])
        raise ValueError(ty)


def read(path, limit=None):
    with open(path, "rb") as f:
        data = f.read(limit) if limit else f.read()
    r = Reader(data)
    assert r.d[:4] == b"GGUF"
    r.p = 4
    version, n_tensors, n_kv = r.take("<I"), r.take("<Q"), r.take("<Q")
    kvs = []
    for _ in range(n_kv):
        key = r.string()
        ty = r.take("<I")
        kvs.append((key, ty, r.value(ty)))
    tensors = []
    for _ in range(n_tensors):
        name = r.string()
        dims = [r.take("<Q") for _ in range(r.take("<I"))]
        ty, offset = r.take("<I"), r.take("<Q")
        tensors.append((name, dims, ty))
    return version, kvs, tensors


class Writer:
    def __init__(self):
        self.b = bytearray()

    def put(self, fmt, v):
        self.b += struct.pack(fmt, v)

    def string(self, s):
        self.put("<Q", len(s))
        self.b += s

    def value(self, ty, v):
        if ty in SCALAR:
            self.put(SCALAR[ty], v)
        elif ty == 8:
            self.string(v)
        else:
            et, items = v
            self.put("<I", et)
            self.put("<Q", len(items))
            for item in items:
                self.value(et, item)


def write(version, kvs, tensors, alignment=32):
    w = Writer()
    w.b += b"GGUF"
    w.put("<I", version)
    w.put("<Q", len(tensors))
    w.put("<Q", len(kvs))
    for key, ty, v in kvs:
        w.string(key)
        w.put("<I", ty)
        w.value(ty, v)
    offset, sizes = 0, []
    for name, dims, ty in tensors:
        w.string(name)
        w.put("<I", len(dims))
        for d in dims:
            w.put("<Q", d)
        w.put("<I", ty)
        w.put("<Q", offset)
        block, nbytes = BLOCK[ty]
        n = 1
        for d in dims:
            n *= d
        size = n // block * nbytes
        sizes.append(size)
        offset += (size + alignment - 1) // alignment * alignment
    w.b += bytes(-len(w.b) % alignment)
    for size in sizes:
        w.b += bytes((i * 37 + 11) % 251 for i in range(size))
        w.b += bytes(-len(w.b) % alignment)
    return bytes(w.b)


def cut_vocab(kvs, head=160, tail=24):
    """Keeps tokens [0, head) and the last `tail`; drops merges that leave them; remaps ids."""
    d = {k: (ty, v) for k, ty, v in kvs}
    tokens = d.get(b"tokenizer.ggml.tokens", (None, (8, [])))[1][1]
    n = len(tokens)
    keep = list(range(min(head, n))) + list(range(max(head, n - tail), n))
    new_id = {old: i for i, old in enumerate(keep)}
    kept = {tokens[i] for i in keep}
    out = []
    for key, ty, v in kvs:
        if key in (b"tokenizer.ggml.tokens", b"tokenizer.ggml.scores", b"tokenizer.ggml.token_type"):
            v = (v[0], [v[1][i] for i in keep])
        elif key == b"tokenizer.ggml.merges":
            merges = []
            for m in v[1]:
                left, _, right = m.partition(b" ")
                if left in kept and right in kept and left + right in kept:
                    merges.append(m)
            v = (8, merges[:200])
        elif key.startswith(b"tokenizer.ggml.") and key.endswith(b"_token_id"):
            v = new_id.get(v, 0)
        elif ty == 9:
            v = (v[0], v[1][:64])
        out.append((key, ty, v))
    return out


def shrink_tensors(tensors, limit=24):
    out = []
    for name, dims, ty in tensors[:limit]:
        block = BLOCK[ty][0]
        out.append((name, [block] + [2] * (len(dims) - 1), ty))
    return out


def save(target, name, data):
    os.makedirs(os.path.join(OUT, target), exist_ok=True)
    with open(os.path.join(OUT, target, name), "wb") as f:
        f.write(data)


def main():
    models = sorted(glob.glob(os.path.join(ROOT, "tests/fixtures/*.gguf")))
    if len(sys.argv) > 1:
        models.append(sys.argv[1])
    vocabs = sorted(glob.glob(os.path.join(ROOT, "engine/tests/data/vocab/*.gguf")))
    templates = {}
    for path in models + vocabs:
        base = os.path.basename(path).removesuffix(".gguf")
        version, kvs, tensors = read(path)
        small = cut_vocab(kvs)
        if path in models:
            save("gguf_reader", base, write(version, small, shrink_tensors(tensors)))
        vocab_only = [kv for kv in small if kv[0].startswith(b"tokenizer.ggml.")]
        image = write(version, vocab_only, [])
        inp = path + ".inp"
        lines = open(inp, "rb").read().split(b"\n__ggml_vocab_test__\n")[:6] if os.path.exists(inp) else [
            b"Hello world", b" <|im_start|>user\nhi<|im_end|>", b"\xe2\x96\x81x \t\n  3.14 caf\xc3\xa9"]
        for i, text in enumerate(lines[:3]):
            save("tokenizer", f"{base}-{i}", struct.pack("<I", len(image)) + image + bytes([i % 4]) + text)
        for key, ty, v in kvs:
            if key == b"tokenizer.chat_template":
                templates[v] = base
    for v, base in templates.items():
        save("chat_template", base, b"\x01" + v + b"\0<s>\0</s>\0system\0Be brief.\0user\0Hi\0assistant\0Hello")
    hand = {
        "chatml": b"{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}",
        "llama2": b"{{ bos_token }}{% for m in messages %}{% if m.role == 'user' %}[INST] {{ m.content.strip() }} [/INST]{% elif m.role == 'system' %}<<SYS>>{{ m.content }}<</SYS>>{% else %}{{ m.content + eos_token }}{% endif %}{% endfor %}",
        "loops": b"{% set ns = namespace(x='') %}{% for i in range(10) %}{% for m in messages %}{% set ns.x = ns.x ~ m.content[:3] %}{% endfor %}{% endfor %}{{ ns.x|length }}{% macro f(n) %}{% if n > 0 %}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(5) }}",
        "errors": b"{% if messages[0]['role'] != 'system' %}{{ raise_exception('first message must be system') }}{% endif %}{{ messages|tojson }}{{ 'x' * 3 }}{{ messages[1:]|map(attribute='content')|join(', ') }}",
    }
    for name, t in hand.items():
        save("chat_template", name, b"\x01" + t + b"\0<s>\0</s>\0system\0Be brief.\0user\0  Hi  \0assistant\0Hello")

    def sampler(settings, window, logits):
        t, p, mp, rp, pp, fp, k, n, seed = settings
        head = struct.pack("<6fQQQ", t, p, mp, rp, pp, fp, k, n, seed)
        return head + struct.pack("<8I", *window) + struct.pack(f"<{len(logits)}f", *logits)
    nan, inf = float("nan"), float("inf")
    default = (0.8, 0.95, 0.05, 1.1, 0.0, 0.0, 40, 64, 42)
    cases = {
        "ordinary": (default, [1, 2, 3, 1, 1, 0, 5, 7], [0.5 * i - 3 for i in range(64)]),
        "all-equal": (default, [0] * 8, [1.0] * 100),
        "nan": ((0.8, 0.5, 0.1, 1.3, 0.5, 0.5, 0, 8, 1), [1] * 8, [nan, 1.0, nan, 2.0, -inf, inf]),
        "all-nan": (default, [0] * 8, [nan] * 16),
        "infinities": ((1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 2, 0, 7), [0] * 8, [inf, inf, -inf, 3.0e38, -3.0e38]),
        "greedy": ((0.0, 0.9, 0.05, 1.0, 0.0, 0.0, 0, 64, 3), [2] * 8, [0.0, 2.0, 2.0, 1.0]),
        "tiny-temperature": ((1e-30, 0.2, 2.0, 0.5, -1.0, 3.0e38, 1, 1000, 9), [1, 2, 3, 4, 5, 6, 7, 8], [1e-3 * i for i in range(20)]),
        "empty": (default, [0] * 8, []),
    }
    for name, case in cases.items():
        save("sampler", name, sampler(*case))


if __name__ == "__main__":
    main()
