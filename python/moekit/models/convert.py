"""Writes a gpt-oss checkpoint in either published layout from one in either layout.

    python -m moekit.models.convert SRC DST --layout hf|original [--max-shard-mb N]

The tensors are copied as they are (the MXFP4 blocks and scales byte for byte; q, k and v split
from or stacked into qkv), config.json is rewritten in the target layout's keys, and the
tokenizer files (tokenizer.json, tokenizer_config.json, chat_template.jinja,
generation_config.json, special_tokens_map.json) are copied from SRC or, for an ``original/``
folder, its parent. Shards hold at most --max-shard-mb each, with model.safetensors.index.json
when there are several or the layout is hf (default: 5000 MB for hf, one file for original).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import shutil
import sys
from pathlib import Path
from typing import Dict, Optional

from moekit.models import layouts
from moekit.models.checkpoint import (CONFIG_FILE, INDEX_FILE, CheckpointError, CheckpointTensors, PathLike,
                                      find_beside, read_config)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json",
                   "special_tokens_map.json")
BYTES = {"BF16": 2, "U8": 1}


def convert_checkpoint(src: PathLike, dst: PathLike, layout: str, max_shard_bytes: Optional[int] = None) -> Path:
    """Writes checkpoint ``src`` to directory ``dst`` in ``layout`` ("hf" or "original")."""
    if layout not in (layouts.HF, layouts.ORIGINAL):
        raise ValueError(f"convert_checkpoint: layout expected 'hf' or 'original', got {layout!r}")
    src, dst = Path(src), Path(dst)
    if max_shard_bytes is None:
        max_shard_bytes = 5_000_000_000 if layout == layouts.HF else 2 ** 62
    config = read_config(src)
    from safetensors.torch import save_file

    with contextlib.ExitStack() as stack:
        tensors = CheckpointTensors(src, config, stack)
        # target name -> (original name, rows or None for the whole tensor)
        plan: Dict[str, tuple] = {}
        sizes: Dict[str, int] = {}
        for name, spec in tensors.specs.items():
            parts = layouts.hf_parts(config, name) if layout == layouts.HF else [layouts.Part(name, 0, -1)]
            for p in parts:
                rows = None if p.stop < 0 else (p.start, p.stop)
                plan[p.name] = (name, rows)
                shape = (p.stop - p.start, *spec.shape[1:]) if rows else spec.shape
                sizes[p.name] = math.prod(shape) * BYTES[spec.dtype]
        shards = layouts.shard_plan(sizes, max_shard_bytes)
        files = layouts.shard_file_names(len(shards)) if len(shards) > 1 or layout == layouts.HF \
            else ["model.safetensors"]
        dst.mkdir(parents=True, exist_ok=True)
        weight_map = {}
        for file, names in zip(files, shards):
            out = {}
            for target in names:
                name, rows = plan[target]  # q, k and v read as their rows of qkv, not qkv thrice
                out[target] = tensors.read(name, (slice(*rows) if rows else slice(None),)).contiguous()
                weight_map[target] = file
            save_file(out, str(dst / file), metadata={"format": "pt"})
    if len(files) > 1 or layout == layouts.HF:
        (dst / INDEX_FILE).write_text(json.dumps({"metadata": {"total_size": sum(sizes.values())},
                                                  "weight_map": weight_map}, indent=2) + "\n")
    hf = layouts.config_to_hf(config) if layout == layouts.HF else config.to_dict()
    (dst / CONFIG_FILE).write_text(json.dumps(hf, indent=2) + "\n")
    for name in TOKENIZER_FILES:
        found = find_beside(src, name)
        if found is not None and found.resolve() != (dst / name).resolve():
            shutil.copyfile(found, dst / name)
    return dst


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m moekit.models.convert", description=__doc__.splitlines()[0])
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)
    p.add_argument("--layout", choices=[layouts.HF, layouts.ORIGINAL], required=True)
    p.add_argument("--max-shard-mb", type=float, default=None)
    args = p.parse_args(argv)
    if args.max_shard_mb is not None and not args.max_shard_mb > 0:
        p.error(f"--max-shard-mb expected > 0, got {args.max_shard_mb}")
    try:
        out = convert_checkpoint(args.src, args.dst, args.layout,
                                 None if args.max_shard_mb is None else int(args.max_shard_mb * 1e6))
    except (CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"moekit.models.convert: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({args.layout} layout)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
