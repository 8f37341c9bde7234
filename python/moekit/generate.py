"""Generate text with a gpt-oss checkpoint, on one process or tensor-parallel under torchrun.

    python -m moekit.generate [--checkpoint DIR] [--prompt TEXT] [--max-new-tokens N]
        [--device cpu|cuda|cuda:N] [--backend nccl|gloo] [--temperature T] [--top-p P] [--seed S]
        [--eager] [--repack-experts] [--no-set-device] [--dist-timeout SECONDS] [--preflight NPROC] [--chat]
    torchrun --nproc-per-node N -m moekit.generate ...

Every rank loads its shard (see moekit.models.TensorParallel) and generates; rank 0 prints its
text, then for each other rank whether it produced the same tokens, then tokens per second.
On CUDA each rank uses cuda:LOCAL_RANK, passed explicitly everywhere; --no-set-device skips
torch.cuda.set_device to show nothing depends on the current device. Backend: NCCL on CUDA,
gloo on CPU. The default checkpoint is the tiny model shipped in moekit/models/tiny_gpt_oss.
Every argument, the launch environment, the checkpoint's config, the prompt's length against
the model's context and the output path are checked before any work, each failure a one-line
error. Collectives wait at most --dist-timeout seconds for a peer (gloo raises, and the rank
ends with a one-line error; NCCL's watchdog ends the process with its own report).
Exit status: 0, 1 if ranks disagree, 2 for bad arguments or a checkpoint that cannot be used,
3 if a peer rank stopped answering.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import List, NamedTuple, NoReturn, Optional

import torch
import torch.distributed as dist

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "models" / "tiny_gpt_oss"
DEFAULT_PROMPT = "The old man walked into the city and"
DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m moekit.generate", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT,
                   help="gpt-oss checkpoint directory in either published layout: a Hugging Face repository's root "
                        "or its original/ folder (config.json, *.safetensors; tokenizer.json in it or its parent); "
                        "default: the shipped tiny model")
    p.add_argument("--chat", action="store_true",
                   help="the prompt as a user message in the checkpoint's chat template (gpt-oss: harmony); the reply "
                        "stops at the end of the assistant's turn")
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help=f"text to continue (default: {DEFAULT_PROMPT!r})")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--device", default=None,
                   help="cpu, cuda (each rank on cuda:LOCAL_RANK) or cuda:N (every rank on GPU N, e.g. to "
                        "share one GPU); default: cuda if available and moekit has its CUDA backend, else cpu")
    p.add_argument("--backend", choices=["nccl", "gloo"], default=None,
                   help="torch.distributed backend; default: nccl on CUDA, gloo on CPU")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16",
                   help="activations and dense weights (experts stay MXFP4)")
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0, help="sampling seed (the same on every rank), in [0, 2^64)")
    p.add_argument("--eager", action="store_true",
                   help="run each decode step eagerly instead of replaying it from a CUDA graph (the same tokens)")
    p.add_argument("--repack-experts", action="store_true",
                   help="also hold the experts in the layout of moekit's Hopper main loop, which the prompt's "
                        "prefill then runs on (sm_90): twice the experts' memory")
    p.add_argument("--no-set-device", action="store_true",
                   help="do not call torch.cuda.set_device (the model never relies on it)")
    p.add_argument("--no-progress", action="store_true", help="no loading progress bar")
    p.add_argument("--output-json", type=Path, default=None,
                   help="rank 0 writes every rank's prompt and generated token ids here")
    p.add_argument("--dist-timeout", type=float, default=300.0,
                   help="seconds a rank waits for its peers in any collective (default 300)")
    p.add_argument("--preflight", type=int, default=None, metavar="NPROC",
                   help="check everything a launch of NPROC ranks would check (arguments, checkpoint, prompt, "
                        "devices), then exit without loading: 0 if fine, 2 with the error (make run does this "
                        "before torchrun, whose own report would bury the message)")
    args = p.parse_args(argv)
    if args.device is not None and not re.fullmatch(r"cpu|cuda(:\d+)?", args.device):
        p.error(f"--device expected cpu, cuda or cuda:N, got {args.device!r}")
    try:
        args.prompt.encode("utf-8")
    except UnicodeEncodeError:
        p.error("--prompt expected UTF-8 text, got bytes that are not")
    if args.max_new_tokens < 0:
        p.error(f"--max-new-tokens expected >= 0, got {args.max_new_tokens}")
    if not (args.temperature >= 0 and math.isfinite(args.temperature)):
        p.error(f"--temperature expected a finite number >= 0, got {args.temperature}")
    if not 0 < args.top_p <= 1:
        p.error(f"--top-p expected in (0, 1], got {args.top_p}")
    if not 0 <= args.seed < 2 ** 64:
        p.error(f"--seed expected an int in [0, 2^64), got {args.seed}")
    if args.preflight is not None and args.preflight < 1:
        p.error(f"--preflight expected a number of ranks >= 1, got {args.preflight}")
    if not (args.dist_timeout > 0 and math.isfinite(args.dist_timeout)):
        p.error(f"--dist-timeout expected a finite number of seconds > 0, got {args.dist_timeout}")
    if args.output_json is not None:
        problem = _unwritable(args.output_json, args.checkpoint)
        if problem:
            p.error(f"--output-json {args.output_json}: {problem}")
    return args


def _unwritable(path: Path, checkpoint: Path) -> Optional[str]:
    """Why ``path`` cannot be written, or None: it must not be a directory, nor inside the
    checkpoint, nor a file the runner reads beside it."""
    if path.is_dir():
        return "is a directory"
    target, ckpt = path.resolve(), checkpoint.resolve()
    from moekit.models.checkpoint import CONFIG_FILE, TOKENIZER_FILES

    beside = (CONFIG_FILE, *TOKENIZER_FILES)  # what the runner reads beside an original/ folder
    if ckpt in target.parents or (target.parent == ckpt.parent and target.name in beside):
        return f"would overwrite the checkpoint's files ({checkpoint}); write it elsewhere"
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        return f"the directory {parent} does not exist"
    if not os.access(path if path.exists() else parent, os.W_OK):
        return "not writable"
    return None


class LaunchEnv(NamedTuple):
    world: int
    rank: int
    local_rank: int


def launch_env() -> LaunchEnv:
    """WORLD_SIZE, RANK and LOCAL_RANK as torchrun sets them (1, 0, 0 without torchrun)."""
    values = {}
    for name, default in (("WORLD_SIZE", "1"), ("RANK", "0"), ("LOCAL_RANK", "0")):
        text = os.environ.get(name, default)
        if not re.fullmatch(r"\d+", text):
            _fail(f"{name}={text!r}: expected a non-negative integer (torchrun sets it)")
        values[name] = int(text)
    world, rank, local_rank = values["WORLD_SIZE"], values["RANK"], values["LOCAL_RANK"]
    if world < 1 or rank >= world:
        _fail(f"RANK={rank} and WORLD_SIZE={world}: expected 0 <= RANK < WORLD_SIZE")
    if world > 1:
        missing = [n for n in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(n)]
        if missing:
            _fail(f"WORLD_SIZE={world} is set, but {' and '.join(missing)} are not: launch several ranks with "
                  f"torchrun --nproc-per-node {world} -m moekit.generate ...")
    return LaunchEnv(world, rank, local_rank)


def _fail(message: str, code: int = 2) -> NoReturn:
    print(f"moekit.generate: error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def _cuda_backend_available() -> bool:
    import moekit  # noqa: F401  (registers torch.ops.moekit)
    return torch._C._dispatch_has_kernel_for_dispatch_key("moekit::moe_mlp", "CUDA")


def pick_device(requested: Optional[str], local_rank: int) -> torch.device:
    kind = requested or ("cuda" if torch.cuda.is_available() and _cuda_backend_available() else "cpu")
    if kind == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        _fail(f"--device {kind}: CUDA is not available")
    index = int(kind.split(":")[1]) if ":" in kind else local_rank
    count = torch.cuda.device_count()
    if index >= count:
        source = f"--device {kind}" if ":" in kind else f"LOCAL_RANK {local_rank}"
        _fail(f"{source} needs cuda:{index}, but only {count} CUDA device(s) are visible")
    return torch.device("cuda", index)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    env = LaunchEnv(args.preflight, 0, 0) if args.preflight else launch_env()
    world, rank = env.world, env.rank

    ckpt: Path = args.checkpoint
    if not ckpt.is_dir():
        hint = " (the shipped tiny model is missing: pass --checkpoint DIR)" if ckpt == DEFAULT_CHECKPOINT else ""
        _fail(f"checkpoint directory not found: {ckpt}{hint}")
    from tokenizers import Tokenizer

    from moekit import chat
    from moekit.models import CheckpointError, TensorParallel, find_tokenizer, read_config

    tokenizer_path = find_tokenizer(ckpt)
    if tokenizer_path is None:
        _fail(f"checkpoint {ckpt}: tokenizer.json not found (looked in it and in its parent)")

    try:
        config = read_config(ckpt)
    except (CheckpointError, FileNotFoundError, ValueError, TypeError) as e:
        _fail(str(e))
    try:  # every rank's shard exists (the preflight's NPROC ranks, or torchrun's)
        TensorParallel.plan(config, 0, world)
    except ValueError as e:
        _fail(f"{world} rank(s): {e}")
    try:
        tokenizer = Tokenizer.from_file(str(tokenizer_path))
    except Exception as e:
        _fail(f"{tokenizer_path}: cannot read the tokenizer: {e}")
    text, stop_ids = args.prompt, []
    if args.chat:
        try:
            text = chat.chat_prompt(ckpt, args.prompt)
            stop_ids = chat.stop_ids(ckpt, tokenizer)
        except CheckpointError as e:
            _fail(f"--chat: {e}")
        if text is None:
            _fail(f"--chat: checkpoint {ckpt} ships no chat template (chat_template.jinja or tokenizer_config.json's "
                  f"chat_template, in it or its parent)")
    prompt_ids = tokenizer.encode(text, add_special_tokens=not args.chat).ids  # a chat template has its own
    if not prompt_ids:
        _fail(f"the prompt {args.prompt!r} encodes to no tokens")
    if max(prompt_ids) >= config.vocab_size:
        _fail(f"the tokenizer gives id {max(prompt_ids)}, outside the model's vocabulary of {config.vocab_size}")
    context = config.max_context_length
    if len(prompt_ids) + args.max_new_tokens > context:
        _fail(f"--max-new-tokens {args.max_new_tokens}: with the prompt's {len(prompt_ids)} tokens that exceeds the "
              f"{context} positions the model supports (at most {max(context - len(prompt_ids), 0)} new tokens)")

    device = pick_device(args.device, env.local_rank)
    backend = args.backend or ("nccl" if device.type == "cuda" else "gloo")
    if world > 1 and backend == "nccl" and device.type != "cuda":
        _fail("--backend nccl needs --device cuda")
    if args.preflight:
        for local_rank in range(1, world):  # every rank of the launch finds its device
            pick_device(args.device, local_rank)
        return 0
    if device.type == "cuda" and not args.no_set_device:
        torch.cuda.set_device(device)

    try:
        if world > 1:
            timeout = datetime.timedelta(seconds=args.dist_timeout)
            if backend == "nccl":
                dist.init_process_group("nccl", device_id=device, timeout=timeout)
            else:
                dist.init_process_group("gloo", timeout=timeout)
        return _generate(args, tokenizer, prompt_ids, stop_ids, env, device)
    except RuntimeError as e:
        if world == 1 or not _is_lost_peer(e):
            raise
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        _fail(f"rank {rank}: lost the other ranks (no answer within --dist-timeout {args.dist_timeout:g} s, or a peer "
              f"closed its connection): {first_line}", code=3)
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _is_lost_peer(e: RuntimeError) -> bool:
    """A collective or rendezvous that timed out or whose peer went away (gloo raises these as plain
    RuntimeErrors from its transport)."""
    return isinstance(e, dist.DistError) or "gloo" in str(e)


def _generate(args: argparse.Namespace, tokenizer, prompt_ids: List[int], stop_ids: List[int], env: LaunchEnv,
              device: torch.device) -> int:
    """Loads this rank's shard, generates, and on rank 0 reports (and writes --output-json)."""
    from moekit.models import CheckpointError, load_model

    world, rank = env.world, env.rank
    try:
        model = load_model(args.checkpoint, device, rank=rank, world_size=world, progress=not args.no_progress,
                           dtype=DTYPES[args.dtype], repack_experts=args.repack_experts)
    except (CheckpointError, FileNotFoundError) as e:
        _fail(str(e))

    _sync(device)
    start = time.perf_counter()
    new_ids = model.generate(prompt_ids, args.max_new_tokens, temperature=args.temperature,
                             top_p=args.top_p, seed=args.seed, stop_ids=stop_ids,
                             graph=False if args.eager else None)
    _sync(device)
    seconds = time.perf_counter() - start

    all_ids = [new_ids]
    if world > 1:
        all_ids = gather_ids(new_ids, args.max_new_tokens, world, device)
    status = 0
    if rank == 0:
        # A chat reply keeps its harmony markers (channels, end of turn) in view.
        def decode(ids: List[int]) -> str:
            return tokenizer.decode(ids, skip_special_tokens=not args.chat)

        status = report(decode, args.prompt, prompt_ids, all_ids, seconds, world, device)
        if args.output_json is not None:
            try:
                args.output_json.write_text(json.dumps({
                    "world_size": world, "device": str(device), "dtype": args.dtype,
                    "prompt_ids": prompt_ids, "ranks": all_ids,
                    "text": decode(new_ids), "tokens_per_second": len(new_ids) / max(seconds, 1e-9),
                }) + "\n")
            except OSError as e:  # a full disk, /dev/full: the text above is already out
                print(f"moekit.generate: error: --output-json {args.output_json}: {e.strerror or e}", file=sys.stderr)
                status = 1
    return status


def gather_ids(ids: List[int], max_len: int, world: int, device: torch.device) -> List[List[int]]:
    """Every rank's ids (padded to ``max_len`` with -1 for the collective) on every rank. Uses
    tensors on this rank's device, so the NCCL backend never consults the current device."""
    mine = torch.full((max_len + 1,), -1, dtype=torch.int64, device=device)
    mine[0] = len(ids)
    if ids:
        mine[1:len(ids) + 1] = torch.tensor(ids, dtype=torch.int64, device=device)
    out = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(out, mine)
    result = []
    for t in out:
        t = t.cpu()
        result.append(t[1:int(t[0]) + 1].tolist())
    return result


def report(decode, prompt: str, prompt_ids: List[int], all_ids: List[List[int]], seconds: float,
           world: int, device: torch.device) -> int:
    mine = all_ids[0]
    print(f"prompt ({len(prompt_ids)} tokens): {prompt}")
    print(f"rank 0: {decode(mine)}")
    status = 0
    for r in range(1, world):
        other = all_ids[r]
        if other == mine:
            print(f"rank {r}: agrees with rank 0 token for token ({len(other)} tokens)")
        else:
            status = 1
            at = next((i for i, (a, b) in enumerate(zip(mine, other)) if a != b), min(len(mine), len(other)))
            print(f"rank {r}: DIFFERS from rank 0 from token {at} on: {decode(other)}")
    print(f"{len(mine)} tokens in {seconds:.3f} s: {len(mine) / max(seconds, 1e-9):.1f} tokens/s "
          f"(world size {world}, {device})", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
