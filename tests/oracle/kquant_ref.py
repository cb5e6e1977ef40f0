#!/usr/bin/env python3
# The k-quant dequantizers of llama.cpp's own gguf-py (gguf/quants.py, numpy), as the
# independent reference for llmq's: reads raw blocks of one ggml type, writes the f32 values.
# gguf-py comes with the llama.cpp source that node-llama-cpp ships (scripts/fetch_data
# clones it into data/llamacpp/src); only its quants/constants/lazy modules are loaded.
# usage: kquant_ref.py GGUF_PY_DIR TYPE_ID BLOCKS.bin OUT.bin
import importlib, sys, types
import numpy as np

gguf_py, type_id, src, dst = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
pkg = types.ModuleType('gguf')  # the package without its __init__ (which imports the world)
pkg.__path__ = [gguf_py + '/gguf']
sys.modules['gguf'] = pkg
quants = importlib.import_module('gguf.quants')
constants = importlib.import_module('gguf.constants')
qtype = constants.GGMLQuantizationType(type_id)
block_elems, block_bytes = constants.GGML_QUANT_SIZES[qtype]
raw = np.fromfile(src, dtype=np.uint8)
assert raw.size % block_bytes == 0, (raw.size, block_bytes)
out = quants.dequantize(raw.reshape(1, -1), qtype).astype(np.float32)
assert out.size == raw.size // block_bytes * block_elems
out.tofile(dst)
