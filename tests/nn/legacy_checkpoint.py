"""The checkpoint format before safetensors (an uncompressed .npz with a ``__checkpoint__``
header entry), written the way the library wrote it, so tests can make old run folders."""
import hashlib
import json
import math

import numpy as np


def save_npz(obj, path, compress=False):
    """A checkpoint in the previous format (uncompressed .npz + __checkpoint__ header), as
    the library wrote until it moved to safetensors: what old run folders hold."""
    arrays, records = [], []

    def encode(value):
        if isinstance(value, np.generic):
            arrays.append(np.asarray(value))
            tag = "$scalar"
        elif isinstance(value, np.ndarray):
            arrays.append(np.asarray(value, order="C"))
            tag = "$array"
        elif isinstance(value, dict):
            return {"$dict": [[k, encode(v)] for k, v in value.items()]}
        elif isinstance(value, (list, tuple)):
            return {"$tuple" if isinstance(value, tuple) else "$list": [encode(v) for v in value]}
        elif isinstance(value, float) and not math.isfinite(value):
            return {"$float": repr(value)}
        else:
            return value
        a = arrays[-1]
        records.append({"dtype": a.dtype.str, "shape": list(a.shape), "sha256": hashlib.sha256(
            a.reshape(-1).view(np.uint8)).hexdigest()})
        return {tag: len(arrays) - 1}

    tree = encode(obj)
    entries = {f"a{k}": a for k, a in enumerate(arrays)}
    write_raw(path, {"format": "numba-dl-checkpoint", "version": 1, "arrays": records,
                      "tree": tree}, compress=compress, **entries)


def write_raw(path, header, compress=False, **arrays):
    text = json.dumps(header, separators=(",", ":")).encode()
    raw = np.frombuffer(hashlib.sha256(text).hexdigest().encode() + text, np.uint8)
    with open(path, "wb") as f:  # a file object: np.savez would add ".npz" to a name
        (np.savez_compressed if compress else np.savez)(f, __checkpoint__=raw, **arrays)
