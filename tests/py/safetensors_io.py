"""Minimal safetensors reader/writer for Tempo's tests (Debian 12 has no
python3-safetensors). Supports the two dtypes Tempo uses: F32 (float32) and
I64 (int64). Standard library + numpy; torch is optional (load_torch, and
save() accepts torch tensors).

    save(path, {"w": np.zeros((2, 3), np.float32), "n": torch.tensor(5)})
    arrays = load(path)          # name -> numpy array
    tensors = load_torch(path)   # name -> torch tensor

Layout: u64 little-endian header length N, N bytes of JSON
{"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__"?},
then the raw little-endian data (offsets relative to the end of the header).
"""

import json
import os
import struct
import tempfile

import numpy as np

_TO_DTYPE = {"F32": np.dtype("<f4"), "I64": np.dtype("<i8")}
_FROM_DTYPE = {np.dtype("float32"): "F32", np.dtype("int64"): "I64"}


def _to_numpy(name, value):
    if hasattr(value, "detach"):  # torch.Tensor, without importing torch
        value = value.detach().cpu().contiguous().numpy()
    arr = np.asarray(value)
    if np.dtype(arr.dtype.name) not in _FROM_DTYPE:
        raise TypeError(f"tensor '{name}': dtype {arr.dtype} not supported (only float32 and int64)")
    # (not ascontiguousarray: it turns 0-d arrays into 1-d ones)
    return arr.astype(arr.dtype.newbyteorder("<"), order="C", copy=False)


def dumps(tensors, metadata=None):
    """Returns the file image (bytes) for a dict name -> array/tensor."""
    header, blobs, offset = {}, [], 0
    if metadata is not None:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    for name, value in tensors.items():
        if name == "__metadata__" or not name:
            raise ValueError(f"invalid tensor name {name!r}")
        arr = _to_numpy(name, value)
        data = arr.tobytes()
        header[name] = {
            "dtype": _FROM_DTYPE[np.dtype(arr.dtype.name)],
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def save(path, tensors, metadata=None):
    """Writes tensors (dict name -> numpy array or torch tensor) atomically."""
    image = dumps(tensors, metadata)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=os.path.basename(path) + ".tmp.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(image)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def loads(image, what="<bytes>"):
    """Parses a file image; returns dict name -> numpy array (in file order)."""
    def bad(msg):
        raise ValueError(f"{what}: {msg}")

    if len(image) < 8:
        bad("too short for a safetensors header")
    (n,) = struct.unpack_from("<Q", image, 0)
    if n > len(image) - 8:
        bad(f"header length {n} exceeds the file size")

    def no_dups(pairs):
        keys = [k for k, _ in pairs]
        if len(keys) != len(set(keys)):
            bad("duplicate key in header")
        return dict(pairs)

    try:
        header = json.loads(image[8:8 + n].decode("utf-8"), object_pairs_hook=no_dups)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        bad(f"header is not valid JSON ({e})")
    if not isinstance(header, dict):
        bad("header is not a JSON object")
    data = memoryview(image)[8 + n:]
    out, spans = {}, []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _TO_DTYPE.get(info.get("dtype"))
        if dtype is None:
            bad(f"tensor '{name}': dtype {info.get('dtype')!r} not supported")
        shape = [int(d) for d in info["shape"]]
        begin, end = (int(v) for v in info["data_offsets"])
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if any(d < 0 for d in shape) or not 0 <= begin <= end <= len(data) or end - begin != count * dtype.itemsize:
            bad(f"tensor '{name}': shape {shape} / data_offsets {[begin, end]} inconsistent")
        spans.append((begin, end, name))
        out[name] = np.frombuffer(data[begin:end], dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))
    pos = 0
    for begin, end, name in sorted(spans):
        if begin != pos:
            bad(f"tensor '{name}': data overlaps or leaves a gap")
        pos = end
    if pos != len(data):
        bad(f"{len(data) - pos} trailing bytes after the data")
    return out


def load(path):
    """Reads a safetensors file; returns dict name -> numpy array."""
    with open(path, "rb") as f:
        return loads(f.read(), path)


def load_torch(path):
    """Reads a safetensors file; returns dict name -> torch tensor."""
    import torch

    return {k: torch.from_numpy(v) for k, v in load(path).items()}
