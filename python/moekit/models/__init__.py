"""Model code built on moekit's ops: gpt-oss (inference with MXFP4 MoE layers), its checkpoint
format, and a plain-PyTorch reference of the same architecture.

    from moekit.models import load_model
    model = load_model("path/to/checkpoint", "cuda:0")
    new_ids = model.generate(prompt_ids, max_new_tokens=32)
"""

from moekit.models.checkpoint import (
    CheckpointError,
    CheckpointNotFoundError,
    checkpoint_tensors,
    float_tensor_shapes,
    load_model,
    read_config,
    save_checkpoint,
)
from moekit.models.gpt_oss import GptOss, GptOssConfig, KVCache, TensorParallel, sample_next
from moekit.models.gpt_oss_reference import ReferenceGptOss

__all__ = [
    "CheckpointError",
    "CheckpointNotFoundError",
    "GptOss",
    "GptOssConfig",
    "KVCache",
    "ReferenceGptOss",
    "TensorParallel",
    "checkpoint_tensors",
    "float_tensor_shapes",
    "load_model",
    "read_config",
    "sample_next",
    "save_checkpoint",
]
