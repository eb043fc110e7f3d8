#!/usr/bin/env python3
"""Random GGUF blocks of every quantized type and gguf-py's dequantization of them.

    PYTHONPATH=<llama.cpp-converter>/gguf-py python3 make_quant_vectors.py

For each type writes <TYPE>.raw (8 blocks of raw bytes) and <TYPE>.f32 (gguf-py's output,
little-endian float32). Bytes are random except the f16 scale fields, which are set to finite values
of a sensible size, and MXFP4's shared exponents, kept within 2^-17 .. 2^13, so that every output is
finite and the comparison means something.
"""

import numpy as np
from pathlib import Path

import gguf
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize

rng = np.random.default_rng(20261122)
BLOCKS = 8


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
    elif qtype == T.BF16:
        raw = (rng.normal(0, 1, size=256).astype("<f4").view("<u4") >> 16).astype("<u2").view(np.uint8).reshape(256, 2)
    values = dequantize(raw.reshape(-1), qtype).astype("<f4").reshape(-1)
    assert values.size == raw.shape[0] * block_size and np.isfinite(values).all(), qtype
    return raw.reshape(-1).tobytes(), values.tobytes()


here = Path(__file__).parent
for qtype in (T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q4_K, T.Q5_K, T.Q6_K, T.MXFP4):
    raw, values = make(qtype)
    (here / f"{qtype.name}.raw").write_bytes(raw)
    (here / f"{qtype.name}.f32").write_bytes(values)
    print(qtype.name, len(raw), "bytes ->", len(values) // 4, "values")
