#!/usr/bin/env python3
"""Writes small seed corpora for the fuzzers: make_seeds.py OUT_DIR creates
OUT_DIR/{safetensors,idx,cifar}/. Standard library only; deterministic."""

import gzip
import json
import os
import struct
import sys


def safetensors(tensors, metadata=None, pad=True):
    header, blobs, off = {}, [], 0
    if metadata:
        header["__metadata__"] = metadata
    for name, (dtype, shape, values) in tensors.items():
        fmt = "<%d%s" % (len(values), "f" if dtype == "F32" else "q")
        blob = struct.pack(fmt, *values)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(blob)]}
        blobs.append(blob)
        off += len(blob)
    text = json.dumps(header, separators=(",", ":")).encode()
    if pad:
        text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def idx(magic, dims, payload):
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims) + bytes(payload)


def cifar(labels):
    out = b""
    for i, label in enumerate(labels):
        out += bytes([label]) + bytes((k * 7 + i * 13) % 256 for k in range(3072))
    return out


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "seeds"
    seeds = {
        "safetensors": {
            "weights": safetensors({"0.weight": ("F32", [2, 1, 1, 2], [0.5, -1.0, 2.0, 3.0]),
                                    "0.bias": ("F32", [2], [0.0, 1.0])}),
            "scalar_i64": safetensors({"num_batches_tracked": ("I64", [], [7])}),
            "empty": safetensors({"e": ("F32", [0, 3], []), "s": ("F32", [], [1.5])}, pad=False),
            "metadata": safetensors({"x": ("I64", [2], [1, -1])}, metadata={"format": "pt"}),
            "dataset": safetensors({"images": ("F32", [2, 1, 1, 1], [0.0, 1.0]), "labels": ("I64", [2], [3, 9])}),
            "no_tensors": safetensors({}),
        },
        "idx": {
            "images": idx(0x803, [2, 3, 3], range(18)),
            "labels": idx(0x801, [4], [0, 9, 3, 1]),
            "images_gz": gzip.compress(idx(0x803, [1, 4, 4], range(16)), mtime=0),
            "labels_gz": gzip.compress(idx(0x801, [3], [1, 2, 3]), mtime=0),
            "two_members_gz": gzip.compress(b"\x00\x00\x08\x01", mtime=0) + gzip.compress(b"\x00\x00\x00\x01\x05", mtime=0),
        },
        "cifar": {
            "one": cifar([3]),
            "two": cifar([0, 9]),
        },
    }
    for target, files in seeds.items():
        d = os.path.join(out, target)
        os.makedirs(d, exist_ok=True)
        for name, data in files.items():
            with open(os.path.join(d, name), "wb") as f:
                f.write(data)


if __name__ == "__main__":
    main()
