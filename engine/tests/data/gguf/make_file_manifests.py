#!/usr/bin/env python3
"""What gguf-py's reader sees in three real GGUF files, for the Rust reader to be checked against.

    PYTHONPATH=<llama.cpp-converter>/gguf-py python3 make_file_manifests.py

Writes <file>.json beside this script: version, alignment, data offset, every metadata key with its
type and value (arrays as their element type, length, first and last elements) and every tensor's
name, dims (ggml order), type, offset in the data section and first and last stored f32 values.
"""

import json
from pathlib import Path

import numpy as np
from gguf import GGUFReader, GGUFValueType

here = Path(__file__).parent
engine = here.parent.parent.parent
FILES = {
    "llama.gguf": engine.parent / "tests/fixtures/llama.gguf",
    "ggml-vocab-gpt-2.gguf": engine / "tests/data/vocab/ggml-vocab-gpt-2.gguf",
    "ggml-vocab-llama-spm.gguf": engine / "tests/data/vocab/ggml-vocab-llama-spm.gguf",
}
TYPE_NAMES = {
    GGUFValueType.UINT8: "u8", GGUFValueType.INT8: "i8", GGUFValueType.UINT16: "u16",
    GGUFValueType.INT16: "i16", GGUFValueType.UINT32: "u32", GGUFValueType.INT32: "i32",
    GGUFValueType.FLOAT32: "f32", GGUFValueType.BOOL: "bool", GGUFValueType.STRING: "string",
    GGUFValueType.ARRAY: "array", GGUFValueType.UINT64: "u64", GGUFValueType.INT64: "i64",
    GGUFValueType.FLOAT64: "f64",
}


def plain(v):
    """A JSON value; floats as their f64 bit pattern in hex, so nothing is lost in printing."""
    if isinstance(v, (float, np.floating)):
        return {"f64_bits": np.float64(v).view(np.uint64).item().to_bytes(8, "big").hex()}
    if isinstance(v, np.integer):
        return v.item()
    return v


def manifest(path):
    reader = GGUFReader(path)
    metadata = []
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        entry = {"key": key, "type": TYPE_NAMES[field.types[0]]}
        if field.types[0] == GGUFValueType.ARRAY:
            items = field.contents()
            entry.update(element=TYPE_NAMES[field.types[-1]], len=len(items))
            if items:
                entry.update(first=plain(items[0]), last=plain(items[-1]))
        else:
            entry["value"] = plain(field.contents())
        metadata.append(entry)
    tensors = []
    for t in reader.tensors:
        entry = {
            "name": t.name,
            "dims": [int(d) for d in t.shape],
            "type": t.tensor_type.name,
            "offset": int(t.data_offset) - int(reader.data_offset),
            "n_bytes": int(t.n_bytes),
        }
        if t.tensor_type.name == "F32":
            values = np.asarray(t.data, dtype=np.float32).reshape(-1)
            entry.update(first=plain(values[0]), last=plain(values[-1]))
        tensors.append(entry)
    return {
        "version": int(reader.fields["GGUF.version"].parts[-1][0]),
        "alignment": int(reader.alignment),
        "data_offset": int(reader.data_offset),
        "metadata": metadata,
        "tensors": tensors,
    }


for name, path in FILES.items():
    out = here / f"{name}.json"
    out.write_text(json.dumps(manifest(path), indent=1, ensure_ascii=False) + "\n")
    print(out.name, out.stat().st_size, "bytes")
