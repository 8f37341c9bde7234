"""Writes a gpt-oss checkpoint in either published layout from one in either layout.

    python -m moekit.models.convert SRC DST --layout hf|original [--max-shard-mb N] [--force]

The tensors are copied as they are (the MXFP4 blocks and scales byte for byte; q, k and v split
from or stacked into qkv), config.json is rewritten in the target layout's keys (an hf config
keeps the token ids and transformers_version of the HF config it came from, SRC's or, for an
``original/`` folder, its repository's; original gets dtypes.json beside it), and the tokenizer
files (tokenizer.json, tokenizer_config.json, chat_template.jinja, generation_config.json,
special_tokens_map.json) and the terms (LICENSE, NOTICE, USAGE_POLICY) are copied from SRC or,
for an ``original/`` folder, its parent. Shards hold at most --max-shard-mb each, with model.safetensors.index.json
when there are several or the layout is hf (default: 5000 MB for hf, one file for original).

DST may be a new folder, or one that holds no checkpoint (the published repository's root holds
original/: converting original/ into its parent is allowed). A DST that holds a checkpoint is
refused unless --force, which replaces that checkpoint's files and leaves the rest of the folder.
Nothing is written onto SRC. The new files are written into a hidden folder inside DST and moved
into place at the end, config.json last, after the old checkpoint's files are gone: a conversion
stopped at any point leaves DST with its old checkpoint, or without config.json (which refuses
to load), or the complete new one, never a mix (a killed conversion leaves its hidden
.moekit-convert-PID folder behind, which nothing reads and the next conversion into DST
removes). One conversion at a time writes into a folder (a lock on it); a second is refused. A
loader that opens DST while a conversion replaces it refuses it (config.json, gone first and
back last, is not the same file after its shards were opened as before).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import sys
from pathlib import Path
from typing import Dict, List, Optional

from moekit.models import layouts
from moekit.models.checkpoint import (CONFIG_FILE, INDEX_FILE, NOTICE_FILES, TOKENIZER_FILES, CheckpointError,
                                      CheckpointTensors, PathLike, find_beside, read_config, read_json_object,
                                      within_its_folder)

BYTES = {"BF16": 2, "U8": 1}
DTYPES_FILE = "dtypes.json"  # original/: each tensor's element type
STAGING_PREFIX = ".moekit-convert-"  # + the writing process's id: a conversion's files until they are complete


def checkpoint_files(folder: Path, tokenizer: bool) -> List[Path]:
    """The files of a checkpoint (either layout) directly in ``folder``: config.json, the index,
    the shards, and with ``tokenizer`` its tokenizer files."""
    if not folder.is_dir():
        return []
    names = {CONFIG_FILE, INDEX_FILE, DTYPES_FILE, *((*TOKENIZER_FILES, *NOTICE_FILES) if tokenizer else ())}
    return sorted(f for f in folder.iterdir() if f.is_file() and (f.name in names or f.suffix == ".safetensors"))


def convert_checkpoint(src: PathLike, dst: PathLike, layout: str, max_shard_bytes: Optional[int] = None,
                       force: bool = False) -> Path:
    """Writes checkpoint ``src`` to directory ``dst`` in ``layout`` ("hf" or "original"); a ``dst``
    that holds a checkpoint is refused unless ``force`` (see the module docstring)."""
    if layout not in (layouts.HF, layouts.ORIGINAL):
        raise ValueError(f"convert_checkpoint: layout expected 'hf' or 'original', got {layout!r}")
    src, dst = Path(src), Path(dst)
    if dst.exists() and not dst.is_dir():
        raise ValueError(f"convert_checkpoint: destination {dst} exists and is not a folder")
    if dst.resolve() == src.resolve() or src.resolve() in dst.resolve().parents:
        raise ValueError(f"convert_checkpoint: destination {dst} is the source {src} or inside it")
    config = read_config(src)
    if max_shard_bytes is None:
        max_shard_bytes = 5_000_000_000 if layout == layouts.HF else 2 ** 62
    dst.mkdir(parents=True, exist_ok=True)
    with _only_conversion_into(dst):
        held = checkpoint_files(dst, tokenizer=False)
        if held and not force:
            raise ValueError(f"convert_checkpoint: destination {dst} already holds a checkpoint ({held[0].name}, ...): "
                             f"pass --force (force=True) to replace it")
        old = checkpoint_files(dst, tokenizer=True) if force else held  # a replaced checkpoint's tokenizer files go too
        for stale in dst.glob(STAGING_PREFIX + "*"):  # left by killed conversions: none other runs now
            shutil.rmtree(stale, ignore_errors=True)
        staging = dst / f"{STAGING_PREFIX}{os.getpid()}"
        staging.mkdir()
        try:
            _write(src, staging, config, layout, max_shard_bytes)
            _move_into_place(staging, dst, old)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return dst


@contextlib.contextmanager
def _only_conversion_into(dst: Path):
    """Holds an exclusive lock on the folder ``dst`` itself (flock: released when the process ends,
    however it ends) for one conversion at a time; another is refused rather than interleaved."""
    import fcntl

    fd = os.open(dst, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(f"convert_checkpoint: another conversion is writing into {dst}") from None
        except OSError as e:  # a file system without locks: refused rather than unguarded
            raise ValueError(f"convert_checkpoint: cannot lock {dst} for the conversion ({e.strerror})") from None
        yield
    finally:
        os.close(fd)


def _move_into_place(staging: Path, dst: Path, old: List[Path]) -> None:
    """The old checkpoint's files out (config.json first, so the folder refuses to load until the
    end), the new ones in (config.json last)."""
    for f in sorted(old, key=lambda f: f.name != CONFIG_FILE):
        f.unlink()
    new = sorted(staging.iterdir(), key=lambda f: f.name == CONFIG_FILE)
    mode = (staging / CONFIG_FILE).stat().st_mode & 0o777  # written as any file (the umask's mode)
    for f in new:
        os.chmod(f, mode)  # safetensors writes its shards 0600
        os.replace(f, dst / f.name)


def _write(src: Path, dst: Path, config, layout: str, max_shard_bytes: int) -> None:
    """Every file of the converted checkpoint into the empty folder ``dst``."""
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
    if layout == layouts.HF:
        out_config = layouts.config_to_hf(config)
        source = _hf_config_beside(src)
        out_config.update({k: source[k] for k in layouts.HF_PASSTHROUGH_KEYS if k in source})
    else:
        out_config = config.to_dict()
        dtypes = layouts.dtypes_of({name: spec.dtype for name, spec in tensors.specs.items()})
        (dst / DTYPES_FILE).write_text(json.dumps(dtypes, indent=2) + "\n")
    (dst / CONFIG_FILE).write_text(json.dumps(out_config, indent=2) + "\n")
    for name in (*TOKENIZER_FILES, *NOTICE_FILES):
        found = find_beside(src, name)
        if found is not None:
            shutil.copyfile(found, dst / name)


def _hf_config_beside(src: Path) -> dict:
    """The HF config.json of ``src`` or, for an ``original/`` folder, of the repository around it
    ({} if neither is one): where the keys moekit's config does not hold come from."""
    for folder in (src, src.parent):
        file = folder / CONFIG_FILE
        if not file.is_file():
            continue
        try:
            d = read_json_object(within_its_folder(file))
        except CheckpointError:  # the parent's config.json need not be a checkpoint's
            continue
        if layouts.detect(d) == layouts.HF:
            return d
    return {}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m moekit.models.convert", description=__doc__.splitlines()[0])
    p.add_argument("src", type=Path, metavar="SRC",
                   help="a gpt-oss checkpoint folder in either layout (a Hugging Face repository's root or its "
                        "original/ folder)")
    p.add_argument("dst", type=Path, metavar="DST",
                   help="the folder to write (created if missing; one holding a checkpoint needs --force)")
    p.add_argument("--layout", choices=[layouts.HF, layouts.ORIGINAL], required=True,
                   help="hf: config.json with Hugging Face keys, sharded safetensors and an index; original: "
                        "OpenAI's original/ layout")
    p.add_argument("--max-shard-mb", type=float, default=None,
                   help="largest shard in MB (default 5000 for hf, one file for original)")
    p.add_argument("--force", action="store_true", help="replace a checkpoint that DST already holds")
    args = p.parse_args(argv)
    if args.max_shard_mb is not None and not (args.max_shard_mb > 0 and math.isfinite(args.max_shard_mb)):
        p.error(f"--max-shard-mb expected a finite number > 0, got {args.max_shard_mb}")
    try:
        out = convert_checkpoint(args.src, args.dst, args.layout,
                                 None if args.max_shard_mb is None else int(args.max_shard_mb * 1e6), args.force)
    except (CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"moekit.models.convert: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({args.layout} layout)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
