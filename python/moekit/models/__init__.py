"""Model code built on moekit's ops: gpt-oss (inference with MXFP4 MoE layers), its checkpoints in
both published layouts (original/ and Hugging Face), and a plain-PyTorch reference of the same
architecture.

    from moekit.models import load_model
    model = load_model("path/to/checkpoint", "cuda:0")
    new_ids = model.generate(prompt_ids, max_new_tokens=32)
"""

from moekit.models.checkpoint import (
    CheckpointError,
    CheckpointNotFoundError,
    checkpoint_layout,
    checkpoint_tensors,
    find_chat_template,
    find_tokenizer,
    float_tensor_shapes,
    load_model,
    read_config,
    save_checkpoint,
)
from moekit.models.gpt_oss import GptOss, GptOssConfig, KVCache, TensorParallel, sample_next
from moekit.models.gpt_oss_reference import ReferenceGptOss


def __getattr__(name):
    # convert_checkpoint is imported on first use, so that ``python -m moekit.models.convert`` runs
    # a module the package has not imported yet (runpy warns otherwise).
    if name == "convert_checkpoint":
        from moekit.models.convert import convert_checkpoint

        return convert_checkpoint
    raise AttributeError(f"module 'moekit.models' has no attribute {name!r}")


__all__ = [
    "CheckpointError",
    "CheckpointNotFoundError",
    "GptOss",
    "GptOssConfig",
    "KVCache",
    "ReferenceGptOss",
    "TensorParallel",
    "checkpoint_layout",
    "checkpoint_tensors",
    "convert_checkpoint",
    "find_chat_template",
    "find_tokenizer",
    "float_tensor_shapes",
    "load_model",
    "read_config",
    "sample_next",
    "save_checkpoint",
]
