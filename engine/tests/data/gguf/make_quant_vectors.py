#!/usr/bin/env python3
"""Random GGUF blocks of every quantized type and gguf-py's dequantization of them.

    PYTHONPATH=<llama.cpp-converter>/gguf-py python3 make_quant_vectors.py

For each type writes <TYPE>.raw (8 blocks of raw bytes) and <TYPE>.f32 (gguf-py's output,
little-endian float32), and types.txt (gguf-py's type ids and block sizes). Bytes are random except
the f16 scale fields, which are set to finite values of a sensible size, and MXFP4's shared
exponents, kept within 2^-17 .. 2^13, so that every output is finite and the comparison means
something. F16 and BF16 are random normal values with their first 16 replaced by edge cases: signed
zeros, the smallest and largest subnormals, the smallest normal, the largest finite value,
infinities and a quiet NaN; BF16 also a signalling NaN, whose bits a shift keeps. (F16 signalling
NaNs are left out: numpy keeps their payload, while `half`, like the F16C instruction llama.cpp
uses on x86, sets the quiet bit.)
"""

import numpy as np
from pathlib import Path

import gguf
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize

rng = np.random.default_rng(20261122)
BLOCKS = 8
# Bit patterns: +0, -0, min subnormal (+/-), max subnormal, min normal (+/-), 1, -2, max finite (+/-),
# +inf, -inf, quiet NaN, 0.5 (for BF16 a signalling NaN instead), a value just above 1.
F16_EDGES = [0x0000, 0x8000, 0x0001, 0x8001, 0x03FF, 0x0400, 0x8400, 0x3C00, 0xC000, 0x7BFF, 0xFBFF,
             0x7C00, 0xFC00, 0x7E00, 0x3800, 0x3C01]
BF16_EDGES = [0x0000, 0x8000, 0x0001, 0x8001, 0x007F, 0x0080, 0x8080, 0x3F80, 0xC000, 0x7F7F, 0xFF7F,
              0x7F80, 0xFF80, 0x7FC0, 0x7FA0, 0x3F81]


def f16_bytes(values):
    return np.asarray(values, dtype="<f2").view(np.uint8)


def make(qtype):
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(BLOCKS, type_size), dtype=np.uint8)
    scales = lambda n: f16_bytes(rng.uniform(-0.1, 0.1, size=(BLOCKS, n)))
    if qtype in (T.Q8_0, T.Q4_0, T.Q5_0):
        raw[:, 0:2] = scales(1)
    elif qtype in (T.Q4_1, T.Q5_1):
        raw[:, 0:4] = scales(2)
    elif qtype in (T.Q4_K, T.Q5_K):
        raw[:, 0:4] = scales(2)  # d, dmin
    elif qtype == T.Q6_K:
        raw[:, 208:210] = scales(1)
    elif qtype == T.MXFP4:
        raw[:, 0] = rng.integers(110, 141, size=BLOCKS, dtype=np.uint8)
    elif qtype == T.F16:
        raw = f16_bytes(rng.normal(0, 1, size=256)).reshape(256, 2)
        raw[:16] = np.asarray(F16_EDGES, dtype="<u2").view(np.uint8).reshape(16, 2)
    elif qtype == T.BF16:
        raw = (rng.normal(0, 1, size=256).astype("<f4").view("<u4") >> 16).astype("<u2").view(np.uint8).reshape(256, 2)
        raw[:16] = np.asarray(BF16_EDGES, dtype="<u2").view(np.uint8).reshape(16, 2)
    values = dequantize(raw.reshape(-1), qtype).astype("<f4").reshape(-1)
    assert values.size == raw.shape[0] * block_size, qtype
    edges = 16 if qtype in (T.F16, T.BF16) else 0
    assert np.isfinite(values[edges:]).all(), qtype
    return raw.reshape(-1).tobytes(), values.tobytes()


here = Path(__file__).parent
for qtype in (T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q4_K, T.Q5_K, T.Q6_K, T.MXFP4):
    raw, values = make(qtype)
    (here / f"{qtype.name}.raw").write_bytes(raw)
    (here / f"{qtype.name}.f32").write_bytes(values)
    print(qtype.name, len(raw), "bytes ->", len(values) // 4, "values")

# gguf-py's type ids, block sizes and block bytes for the types the engine reads, one per line:
# NAME id block_size block_bytes.
lines = []
for qtype in (T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q4_K, T.Q5_K, T.Q6_K, T.MXFP4):
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    lines.append(f"{qtype.name} {int(qtype)} {block_size} {type_size}\n")
(here / "types.txt").write_text("".join(lines))
