"""Loads the compiled op library (torch.ops.moekit) and registers its fake kernels."""

from pathlib import Path

import torch

_LIBRARY = Path(__file__).with_name("_moekit_ops.so")
if not _LIBRARY.exists():
    raise ImportError(f"moekit: the op library {_LIBRARY} is missing; install moekit with `pip install .`")
torch.ops.load_library(str(_LIBRARY))

from moekit import _fake  # noqa: E402,F401
