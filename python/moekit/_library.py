"""Loads the compiled op library (torch.ops.moekit) and registers its fake kernels and gradients.

The library is found by the import system, as the module ``moekit._moekit_ops`` (it is a plain
shared library, loaded with torch.ops.load_library, not imported): beside this file in an
installed wheel, or in site-packages under an editable install (``pip install -e .``), whose
import hook serves the Python files from the source tree.
"""

import importlib.util

import torch

_SPEC = importlib.util.find_spec("moekit._moekit_ops")
if _SPEC is None or not _SPEC.origin:
    raise ImportError("moekit: the op library moekit/_moekit_ops.so is not installed; from the repository, run "
                      "`make install` (or `pip install --no-build-isolation -e .` in an environment with torch)")
torch.ops.load_library(_SPEC.origin)

from moekit import _fake  # noqa: E402,F401
from moekit import _autograd  # noqa: E402,F401
