#!/usr/bin/env python3
"""Time the CPU route a Python user would take for deltacome's main cost:
the SVD of each linear projection's delta with numpy's LAPACK
(numpy.linalg.svd, gesdd, float32), as Delta-CoMe's reference code does.

Usage: scripts/numpy-route.py BASE FT
  BASE, FT  safetensors files, or folders of them (bf16, f16 or f32)

Every 2-D tensor of a numbered block ("layers.N.") whose name ends in
".weight" and whose shape matches the base's is decomposed, as deltacome's
default selection does. It prints one line per tensor and, last, the total
seconds of SVD work as "numpy_svd_s N" (reading the files is not counted).
Quantizing the factors, which the route would still need, is not counted
either: the figure is a lower bound on that route's time. numpy's BLAS uses
the cores the process may run on (taskset) unless OPENBLAS_NUM_THREADS or
OMP_NUM_THREADS says otherwise.
"""
import json
import os
import re
import struct
import sys
import time

import numpy as np

BLOCK = re.compile(r"\.(layers|h|blocks|block|layer)\.\d+\.")


def tensors(path):
    """Yield (name, dtype, shape, file, offset, length) for each tensor."""
    files = [path]
    if os.path.isdir(path):
        files = sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(".safetensors"))
    for f in files:
        with open(f, "rb") as fh:
            n = struct.unpack("<Q", fh.read(8))[0]
            header = json.loads(fh.read(n))
        for name, info in header.items():
            if name == "__metadata__":
                continue
            start, end = info["data_offsets"]
            yield name, info["dtype"], info["shape"], f, 8 + n + start, end - start


def load(dtype, shape, f, offset, length):
    with open(f, "rb") as fh:
        fh.seek(offset)
        raw = fh.read(length)
    if dtype == "BF16":
        u = np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16
        return u.view(np.float32).reshape(shape)
    if dtype == "F16":
        return np.frombuffer(raw, dtype=np.float16).astype(np.float32).reshape(shape)
    if dtype == "F32":
        return np.frombuffer(raw, dtype=np.float32).reshape(shape)
    raise SystemExit(f"numpy-route: {f}: unsupported dtype {dtype}")


def main():
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    base = {t[0]: t for t in tensors(sys.argv[1])}
    total = 0.0
    for name, dtype, shape, f, off, length in tensors(sys.argv[2]):
        b = base.get(name)
        if len(shape) != 2 or not name.endswith(".weight") or not BLOCK.search("." + name) or b is None or b[2] != shape:
            continue
        delta = load(dtype, shape, f, off, length) - load(*b[1:])
        start = time.perf_counter()
        np.linalg.svd(delta, full_matrices=False)
        took = time.perf_counter() - start
        total += took
        print(f"{name} {shape[0]}x{shape[1]} {took:.2f} s", flush=True)
    print(f"numpy_svd_s {total:.2f}")


if __name__ == "__main__":
    main()
