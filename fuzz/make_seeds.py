#!/usr/bin/env python3
"""Writes small seed corpora for the fuzzers: make_seeds.py OUT_DIR creates
OUT_DIR/{safetensors,idx,cifar,worker_request,container,onnx}/. Standard library only; deterministic."""

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


def varint(v):
    v &= (1 << 64) - 1
    out = b""
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def field(num, value):
    """One protobuf field: an int (varint) or bytes (length-delimited)."""
    if isinstance(value, int):
        return varint(num << 3) + varint(value)
    return varint((num << 3) | 2) + varint(len(value)) + value


def record(kind, msg):
    """A request as fuzz_worker_request reads it."""
    return bytes([kind]) + struct.pack("<H", len(msg)) + msg


def chunk(handle, rows, cols, values, dtype=1):
    data = struct.pack("<%df" % len(values), *values)
    return field(1, handle) + field(2, rows) + field(3, cols) + field(4, dtype) + field(5, data)


def compute(op, x, y, geometry=None):
    msg = field(1, op) + field(2, field(1, x)) + field(3, field(1, y))
    if geometry:
        msg += field(4, b"".join(field(i + 1, v) for i, v in enumerate(geometry)))
    return msg


def worker_requests():
    put1 = record(1, chunk(1, 2, 3, [1, 2, 3, 4, 5, 6]))
    put2 = record(1, chunk(2, 4, 3, [0.5] * 12))
    split = record(1, chunk(3, 2, 2, [1, 2])) + record(1, field(5, struct.pack("<2f", 3, 4)))
    conv_x = record(1, chunk(4, 1, 9, [1] * 9))
    conv_w = record(1, chunk(5, 2, 9, [0.1] * 18))
    # n c h w o k s p oh ow
    geometry = [1, 1, 3, 3, 2, 3, 1, 1, 3, 3]
    return {
        "products": put1 + put2 + record(2, compute(1, 1, 2)) + record(2, compute(3, 1, 1)) +
                    record(3, field(1, field(1, 1))) + record(4, b""),
        "split_put": split + record(2, compute(2, 3, 3)),
        "conv": conv_x + conv_w + record(2, compute(4, 4, 5, geometry)),
        "mismatch": put1 + record(2, compute(2, 1, 1)) + record(2, compute(1, 1, 99)),
        "hello": record(0, field(1, 1) + field(2, b"client")) + record(7, b""),
        "run": record(6, field(1, field(1, 1) + field(2, 9))) + record(6, field(2, chunk(1, 2, 3, [1] * 6))) +
               record(6, field(2, chunk(2, 4, 3, [0.5] * 12))) + record(6, field(3, compute(1, 1, 2))) +
               record(6, field(3, compute(3, 1, 1))),
        "reply": record(5, chunk(0, 2, 2, [1, 2, 3, 4])) + record(5, field(5, b"\0" * 8)),
    }


# ---- ONNX (onnx.proto's field numbers) ----


def onnx_tensor(name, dims, floats=None, ints=None):
    msg = b"".join(field(1, d) for d in dims) + field(2, 1 if floats is not None else 7) + field(8, name.encode())
    if floats is not None:
        msg += field(9, struct.pack("<%df" % len(floats), *floats))
    else:
        msg += field(9, struct.pack("<%dq" % len(ints), *ints))
    return msg


def onnx_attr(name, i=None, ints=None, f=None):
    msg = field(1, name.encode())
    if i is not None:
        return msg + field(3, i) + field(20, 2)
    if f is not None:
        return msg + varint((2 << 3) | 5) + struct.pack("<f", f) + field(20, 1)
    return msg + b"".join(field(8, v) for v in ints) + field(20, 7)


def onnx_node(op, inputs, outputs, name, attrs=()):
    return (b"".join(field(1, x.encode()) for x in inputs) + b"".join(field(2, x.encode()) for x in outputs) +
            field(3, name.encode()) + field(4, op.encode()) + b"".join(field(5, a) for a in attrs))


def onnx_value(name, dims):
    shape = b"".join(field(1, field(2, b"batch") if d < 0 else field(1, d)) for d in dims)
    return field(1, name.encode()) + field(2, field(1, field(1, 1) + field(2, shape)))


def onnx_model(nodes, inits, in_dims, out_dims, opset=13):
    graph = (b"".join(field(1, n) for n in nodes) + field(2, b"g") + b"".join(field(5, t) for t in inits) +
             field(11, onnx_value("input", in_dims)) + field(12, onnx_value("logits", out_dims)))
    return field(1, 8) + field(8, field(1, b"") + field(2, opset)) + field(7, graph)


def onnx_seeds():
    conv = onnx_node("Conv", ["input", "c.weight", "c.bias"], ["h1"], "conv",
                     [onnx_attr("kernel_shape", ints=[3, 3]), onnx_attr("pads", ints=[1, 1, 1, 1]),
                      onnx_attr("strides", ints=[1, 1])])
    bn = onnx_node("BatchNormalization", ["h1", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"],
                   ["h2"], "bn", [onnx_attr("epsilon", f=1e-5), onnx_attr("momentum", f=0.9)])
    relu = onnx_node("Relu", ["h2"], ["h3"], "relu")
    pool = onnx_node("MaxPool", ["h3"], ["h4"], "pool",
                     [onnx_attr("kernel_shape", ints=[2, 2]), onnx_attr("strides", ints=[2, 2])])
    flat = onnx_node("Reshape", ["h4", "shape"], ["h5"], "reshape")
    gemm = onnx_node("Gemm", ["h5", "fc.weight", "fc.bias"], ["logits"], "fc", [onnx_attr("transB", i=1)])
    inits = [onnx_tensor("c.weight", [2, 1, 3, 3], floats=[0.1] * 18), onnx_tensor("c.bias", [2], floats=[0, 1]),
             onnx_tensor("bn.weight", [2], floats=[1, 1]), onnx_tensor("bn.bias", [2], floats=[0, 0]),
             onnx_tensor("bn.running_mean", [2], floats=[0, 0]), onnx_tensor("bn.running_var", [2], floats=[1, 1]),
             onnx_tensor("shape", [2], ints=[0, -1]), onnx_tensor("fc.weight", [3, 8], floats=[0.5] * 24),
             onnx_tensor("fc.bias", [3], floats=[0, 0, 0])]
    cnn = onnx_model([conv, bn, relu, pool, flat, gemm], inits, [-1, 1, 4, 4], [-1, 3])
    # Generic operators: Add, Mul, Transpose, Softmax, MatMul of activations, Concat, Slice, Gather, Pad.
    gen = [onnx_node("Pad", ["input", "pads"], ["a"], "pad"),
           onnx_node("Slice", ["a", "starts", "ends", "axes"], ["b"], "slice"),
           onnx_node("Transpose", ["b"], ["c"], "tr", [onnx_attr("perm", ints=[0, 1, 3, 2])]),
           onnx_node("Mul", ["c", "p"], ["d"], "mul"), onnx_node("Softmax", ["d"], ["e"], "sm"),
           onnx_node("MatMul", ["e", "d"], ["f"], "mm"),
           onnx_node("Concat", ["f", "e"], ["g"], "cat", [onnx_attr("axis", i=1)]),
           onnx_node("Flatten", ["g"], ["h"], "flat", [onnx_attr("axis", i=1)]),
           onnx_node("Gather", ["h", "cols"], ["logits"], "gather", [onnx_attr("axis", i=1)])]
    gen_inits = [onnx_tensor("pads", [8], ints=[0, 0, 1, 1, 0, 0, 1, 1]), onnx_tensor("starts", [2], ints=[1, 1]),
                 onnx_tensor("ends", [2], ints=[5, 5]), onnx_tensor("axes", [2], ints=[2, 3]),
                 onnx_tensor("p", [4], floats=[1, 2, 3, 4]), onnx_tensor("cols", [3], ints=[0, 7, 31])]
    generic = onnx_model(gen, gen_inits, [-1, 1, 4, 4], [-1, 3])
    return {"cnn": cnn, "generic": generic, "opset11": onnx_model([relu], [], [-1, 2], [-1, 2], opset=11)}


def container(kind, wrap, chunk, size, body_extra=0):
    """An encrypted file's clear header with a consistent ciphertext length
    (random-looking bytes: authentication fails, the parsing is exercised)."""
    chunks = 1 if size == 0 else (size + chunk - 1) // chunk
    head = b"TEMPOENC" + struct.pack("<IIIIQ", 1, kind, wrap, chunk, size)
    head += bytes(range(16)) if wrap == 1 else bytes(80) if wrap == 2 else bytes(range(104))
    head += bytes(24)
    body = bytes((i * 7 + 3) % 256 for i in range(size + 17 * chunks + body_extra))
    return head + body


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
        "worker_request": worker_requests(),
        "onnx": onnx_seeds(),
        "container": {
            "data": container(1, 1, 64, 150),
            "model": container(2, 2, 1024, 10),
            "model-from-master": container(2, 3, 1024, 10),
            "checkpoint": container(3, 1, 16, 0),
            "trailing": container(1, 1, 64, 100, 5),
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
