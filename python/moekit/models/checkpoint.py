"""gpt-oss checkpoints: read either published layout into :class:`GptOss`, write one from floats.

A checkpoint is a directory with ``config.json``, one or more ``*.safetensors`` files (with
``model.safetensors.index.json`` when sharded) and, for the runner, ``tokenizer.json`` (HF
``tokenizers`` format) in it or, for an ``original/`` folder, in its parent. Two layouts are
read (:mod:`moekit.models.layouts`): the original one (OpenAI's ``original/`` folder, the one
:func:`save_checkpoint` writes) and the Hugging Face repository's. Tensors are named here by
the original layout (see :func:`checkpoint_tensors`): the MoE weights are MXFP4 pairs
``block.N.mlp.mlp1_weight.blocks`` [E, 2I, H/32, 16] / ``.scales`` [E, 2I, H/32] (uint8) and
``mlp2_weight`` [E, H, I/32, 16] / [E, H, I/32]; everything else is bfloat16.

Every problem is reported as :class:`CheckpointError` (a ValueError; the not-found cases are
also FileNotFoundError) naming the file and tensor, what was expected and what was found.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Dict, List, Mapping, NamedTuple, Optional, Tuple, Union

import torch

from moekit.models import layouts
from moekit.models.gpt_oss import MXFP4_BLOCK, GptOss, GptOssConfig, TensorParallel

PathLike = Union[str, Path]

CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
# The files beside the weights that a checkpoint ships for its tokenizer and generation (in it or,
# for an original/ folder, its parent): the converter copies them, outputs must not overwrite them.
TOKENIZER_FILES = (TOKENIZER_FILE, "tokenizer_config.json", "chat_template.jinja", "generation_config.json",
                   "special_tokens_map.json")
# The terms a checkpoint ships with (the published repository's root): the converter copies them too.
NOTICE_FILES = ("LICENSE", "NOTICE", "USAGE_POLICY")
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

class CheckpointError(ValueError):
    """A gpt-oss checkpoint that cannot be loaded or written; the message says what and where."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint directory, its config.json or its safetensors files are missing."""


class TensorSpec(NamedTuple):
    shape: Tuple[int, ...]
    dtype: str          # safetensors dtype name: "BF16" or "U8"
    dims: str           # how the shape follows from config.json, for messages


def checkpoint_tensors(config: GptOssConfig) -> Dict[str, TensorSpec]:
    """Every tensor a checkpoint of ``config`` holds, in loading order, with shape and dtype."""
    c = config
    E, H, I, V, d = c.num_experts, c.hidden_size, c.intermediate_size, c.vocab_size, c.head_dim
    nq, nkv, B = c.num_attention_heads, c.num_key_value_heads, MXFP4_BLOCK
    bf16 = lambda shape, dims: TensorSpec(tuple(shape), "BF16", dims)  # noqa: E731
    u8 = lambda shape, dims: TensorSpec(tuple(shape), "U8", dims)  # noqa: E731
    specs = {"embedding.weight": bf16((V, H), "vocab_size, hidden_size")}
    for n in range(c.num_hidden_layers):
        p = f"block.{n}."
        specs.update({
            p + "attn.norm.scale": bf16((H,), "hidden_size"),
            p + "attn.qkv.weight": bf16((d * (nq + 2 * nkv), H),
                                        "head_dim*(num_attention_heads+2*num_key_value_heads), hidden_size"),
            p + "attn.qkv.bias": bf16((d * (nq + 2 * nkv),), "head_dim*(num_attention_heads+2*num_key_value_heads)"),
            p + "attn.sinks": bf16((nq,), "num_attention_heads"),
            p + "attn.out.weight": bf16((H, d * nq), "hidden_size, head_dim*num_attention_heads"),
            p + "attn.out.bias": bf16((H,), "hidden_size"),
            p + "mlp.norm.scale": bf16((H,), "hidden_size"),
            p + "mlp.gate.weight": bf16((E, H), "num_experts, hidden_size"),
            p + "mlp.gate.bias": bf16((E,), "num_experts"),
            p + "mlp.mlp1_weight.blocks": u8((E, 2 * I, H // B, 16),
                                             "num_experts, 2*intermediate_size, hidden_size/32, 16"),
            p + "mlp.mlp1_weight.scales": u8((E, 2 * I, H // B), "num_experts, 2*intermediate_size, hidden_size/32"),
            p + "mlp.mlp1_bias": bf16((E, 2 * I), "num_experts, 2*intermediate_size"),
            p + "mlp.mlp2_weight.blocks": u8((E, H, I // B, 16), "num_experts, hidden_size, intermediate_size/32, 16"),
            p + "mlp.mlp2_weight.scales": u8((E, H, I // B), "num_experts, hidden_size, intermediate_size/32"),
            p + "mlp.mlp2_bias": bf16((E, H), "num_experts, hidden_size"),
        })
    specs["norm.scale"] = bf16((H,), "hidden_size")
    specs["unembedding.weight"] = bf16((V, H), "vocab_size, hidden_size")
    return specs


def float_tensor_shapes(config: GptOssConfig) -> Dict[str, Tuple[int, ...]]:
    """The float state dict :func:`save_checkpoint` takes (ReferenceGptOss's parameter names):
    the checkpoint's names with ``mlp1_weight`` [E, 2I, H] / ``mlp2_weight`` [E, H, I] unquantized."""
    shapes: Dict[str, Tuple[int, ...]] = {}
    for name, spec in checkpoint_tensors(config).items():
        if name.endswith("_weight.scales"):
            continue
        if name.endswith("_weight.blocks"):
            *lead, groups, _ = spec.shape
            shapes[name[: -len(".blocks")]] = (*lead, groups * MXFP4_BLOCK)
        else:
            shapes[name] = spec.shape
    return shapes


def _fmt_shape(shape) -> str:
    return "[" + ", ".join(str(int(s)) for s in shape) + "]"


def _names(names: List[str], limit: int = 6) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


# ------------------------------------------------------------------------------------- saving

def save_checkpoint(path: PathLike, config: GptOssConfig, float_state_dict: Mapping[str, torch.Tensor],
                    tokenizer_path: Optional[PathLike] = None) -> Path:
    """Writes a gpt-oss checkpoint directory from float weights.

    ``float_state_dict`` has the names of :func:`float_tensor_shapes` (a ReferenceGptOss's
    ``state_dict()``): ``block.N.mlp.mlp1_weight`` [E, 2I, H] and ``mlp2_weight`` [E, H, I] are
    quantized with :func:`moekit.quantize_mxfp4` into ``.blocks``/``.scales``; every other tensor
    is cast to bfloat16. Writes config.json, model.safetensors and (if given) a copy of
    ``tokenizer_path`` as tokenizer.json. Returns the directory.
    """
    import moekit
    from safetensors.torch import save_file

    if not isinstance(config, GptOssConfig):
        raise TypeError(f"save_checkpoint: config expected a GptOssConfig, got {type(config).__name__}")
    config.validate()
    expected = float_tensor_shapes(config)
    given = set(float_state_dict)
    missing = [n for n in expected if n not in given]
    extra = sorted(given - set(expected))
    if missing:
        raise CheckpointError(f"save_checkpoint: float_state_dict lacks tensor(s) {_names(missing)}")
    if extra:
        raise CheckpointError(f"save_checkpoint: float_state_dict has unexpected tensor(s) {_names(extra)}")
    tensors: Dict[str, torch.Tensor] = {}
    for name, shape in expected.items():
        t = float_state_dict[name]
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise CheckpointError(f"save_checkpoint: tensor {name!r} expected a float tensor, got "
                                  f"{getattr(t, 'dtype', type(t).__name__)}")
        if tuple(t.shape) != shape:
            raise CheckpointError(f"save_checkpoint: tensor {name!r} expected shape {_fmt_shape(shape)}, "
                                  f"got {_fmt_shape(t.shape)}")
        t = t.detach().to("cpu")
        if not torch.isfinite(t).all():
            raise CheckpointError(f"save_checkpoint: tensor {name!r} holds non-finite values")
        if name.endswith(("mlp1_weight", "mlp2_weight")):
            blocks, scales = moekit.quantize_mxfp4(t.float().contiguous())
            tensors[name + ".blocks"] = blocks.contiguous()
            tensors[name + ".scales"] = scales.contiguous()
        else:
            tensors[name] = t.to(torch.bfloat16).contiguous()
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    config.to_json(out / CONFIG_FILE)
    if tokenizer_path is not None:
        src = Path(tokenizer_path)
        if not src.is_file():
            raise CheckpointNotFoundError(f"save_checkpoint: tokenizer file not found: {src}")
        if src.resolve() != (out / TOKENIZER_FILE).resolve():
            shutil.copyfile(src, out / TOKENIZER_FILE)
    return out


# ------------------------------------------------------------------------------------ reading

def within_its_folder(file: Path) -> Path:
    """``file``, refused when it is a link that leaves the folder it is in: a checkpoint folder is
    input, and a link could make any file of the machine part of it. A Hugging Face cache
    snapshot (``.../models--NAME/snapshots/REV/``) links into the cache's own ``blobs/``, which
    stays allowed."""
    folder = file.parent.resolve()
    allowed = [folder]
    if folder.parent.name == "snapshots":
        allowed.append(folder.parent.parent)
    target = file.resolve()
    if not any(a == target.parent or a in target.parents for a in allowed):
        raise CheckpointError(f"{file}: a link out of its folder (to {target}); copy the file into the checkpoint "
                              "instead")
    return file


def _config_json(path: Path) -> dict:
    if not path.exists():
        raise CheckpointNotFoundError(f"gpt-oss checkpoint directory not found: {path}")
    if not path.is_dir():
        raise CheckpointNotFoundError(f"gpt-oss checkpoint {path} is not a directory")
    config_path = path / CONFIG_FILE
    if not config_path.is_file():
        raise CheckpointNotFoundError(f"gpt-oss checkpoint {path}: {CONFIG_FILE} not found")
    within_its_folder(config_path)
    try:
        return read_json_object(config_path)
    except CheckpointError as e:
        raise CheckpointError(f"gpt-oss checkpoint: invalid {CONFIG_FILE}: {e}") from None


def read_utf8(file: Path) -> str:
    """A checkpoint's text file; not UTF-8 is one CheckpointError naming the file."""
    try:
        return file.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{file}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def read_json_object(file: Path) -> dict:
    """A checkpoint's JSON file as an object; every way it can fail is one CheckpointError naming
    the file: not UTF-8, not JSON (numbers past Python's 4300 digits too), nested too deep for
    the parser, not an object."""
    text = read_utf8(file)
    try:
        d = json.loads(text)
    except RecursionError:
        raise CheckpointError(f"{file}: not valid JSON (nested too deeply)") from None
    except ValueError as e:
        raise CheckpointError(f"{file}: not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise CheckpointError(f"{file}: expected a JSON object, got {type(d).__name__}")
    return d


def checkpoint_layout(path: PathLike) -> str:
    """"original" or "hf": the layout of checkpoint directory ``path`` (from its config.json)."""
    return layouts.detect(_config_json(Path(path)))


def read_config(path: PathLike) -> GptOssConfig:
    """The config of checkpoint directory ``path``, in either layout (errors name the file)."""
    path = Path(path)
    return _config_from(_config_json(path), path)


def _config_from(d: dict, path: Path) -> GptOssConfig:
    """The config that checkpoint ``path``'s config.json, read as ``d``, describes."""
    try:
        if layouts.detect(d) == layouts.HF:
            return layouts.config_from_hf(d, source=str(path / CONFIG_FILE))
        return GptOssConfig.from_dict(d, source=str(path / CONFIG_FILE))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"gpt-oss checkpoint: invalid {CONFIG_FILE}: {e}") from None


def find_beside(path: PathLike, name: str) -> Optional[Path]:
    """File ``name`` in checkpoint directory ``path`` or, as the published repository keeps its
    tokenizer beside its ``original/`` folder, in the parent directory."""
    path = Path(path)
    for directory in (path, path.parent):
        if (directory / name).is_file():
            return within_its_folder(directory / name)
    return None


def find_tokenizer(path: PathLike) -> Optional[Path]:
    """tokenizer.json of checkpoint directory ``path`` (see :func:`find_beside`), or None."""
    return find_beside(path, TOKENIZER_FILE)


def find_chat_template(path: PathLike) -> Optional[str]:
    """The chat template the checkpoint ships (chat_template.jinja, or tokenizer_config.json's
    ``chat_template``), or None."""
    found = chat_template_source(path)
    return None if found is None else found[0]


def chat_template_source(path: PathLike) -> Optional[Tuple[str, Path]]:
    """The chat template the checkpoint ships and the file it comes from (see
    :func:`find_chat_template`), or None."""
    jinja = find_beside(path, "chat_template.jinja")
    if jinja is not None:
        return read_utf8(jinja), jinja
    config = find_beside(path, "tokenizer_config.json")
    if config is not None:
        template = read_json_object(config).get("chat_template")
        if isinstance(template, list):  # named templates: transformers takes the one named "default"
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            if not isinstance(named.get("default"), str):
                raise CheckpointError(f"{config}: chat_template lists named templates {sorted(map(str, named))} "
                                      "but none named 'default' (the one a chat prompt uses)")
            return named["default"], config
        if isinstance(template, str):
            return template, config
    return None


class _Index:
    """Open safetensors files of one checkpoint: tensor name -> (file, handle), validated. With
    model.safetensors.index.json, its files and only those, each tensor where the index says."""

    def __init__(self, path: Path, stack: contextlib.ExitStack):
        from safetensors import safe_open

        weight_map = self._weight_map(path)
        if weight_map is not None:
            self.files = [path / f for f in sorted(set(weight_map.values()))]
            for file in self.files:
                if not file.is_file():
                    raise CheckpointNotFoundError(f"gpt-oss checkpoint {path}: {file.name}, listed in {INDEX_FILE}, "
                                                  f"not found")
        else:
            self.files = sorted(p for p in path.glob("*.safetensors") if p.is_file())
        if not self.files:
            raise CheckpointNotFoundError(f"gpt-oss checkpoint {path}: no *.safetensors file")
        for file in self.files:
            within_its_folder(file)
        self.where: Dict[str, Tuple[Path, object]] = {}
        for file in self.files:
            try:
                handle = stack.enter_context(safe_open(str(file), framework="pt", device="cpu"))
                keys = list(handle.keys())
            except Exception as e:  # safetensors raises its own SafetensorError, or OSError
                raise CheckpointError(f"{file}: not a readable safetensors file (corrupt or truncated?): "
                                      f"{e}") from None
            for key in keys:
                if key in self.where:
                    raise CheckpointError(f"tensor {key!r} is in two files: {self.where[key][0]} and {file}")
                if weight_map is not None and weight_map.get(key) != file.name:
                    raise CheckpointError(f"{path / INDEX_FILE}: tensor {key!r} is in {file.name}, the index says "
                                          f"{weight_map.get(key)!r}")
                self.where[key] = (file, handle)
        if weight_map is not None:
            lost = sorted(set(weight_map) - set(self.where))
            if lost:
                raise CheckpointError(f"{path / INDEX_FILE}: tensor(s) {_names(lost)} listed but in no file")

    @staticmethod
    def _weight_map(path: Path) -> Optional[Dict[str, str]]:
        index = path / INDEX_FILE
        if not index.is_file():
            return None
        within_its_folder(index)
        weight_map = read_json_object(index).get("weight_map")
        if weight_map is None:
            raise CheckpointError(f"{index}: not a safetensors index (a JSON object with 'weight_map')")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise CheckpointError(f"{index}: 'weight_map' expected an object of tensor name -> file name")
        # Names only, checked before anything is opened: a path could reach any file of the machine,
        # and errors that differ would tell which exist.
        for name, file in weight_map.items():
            if file in ("", ".", "..") or "/" in file or "\\" in file or "\0" in file:
                raise CheckpointError(f"{index}: tensor {name!r} is mapped to {file!r}; expected the name of a file in "
                                      "the checkpoint folder (no path)")
        return weight_map

    def meta(self, name: str) -> Tuple[Tuple[int, ...], str]:
        file, handle = self.where[name]
        try:
            s = handle.get_slice(name)
            return tuple(s.get_shape()), s.get_dtype()
        except Exception as e:
            raise CheckpointError(f"{file}: cannot read tensor {name!r}: {e}") from None

    def read(self, name: str, index: tuple) -> torch.Tensor:
        file, handle = self.where[name]
        try:
            return handle.get_slice(name)[index]
        except Exception as e:
            raise CheckpointError(f"{file}: cannot read tensor {name!r}: {e}") from None


def _file_identity(file: Path) -> Optional[tuple]:
    """Which file ``file`` names now (None: none): replacing it, even with the same bytes, changes this."""
    try:
        st = file.stat()
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _changed(path: Path) -> CheckpointError:
    return CheckpointError(f"gpt-oss checkpoint {path}: its files changed while they were being opened (a conversion "
                           f"writing into the folder?); load it again once that has finished")


class CheckpointTensors:
    """A checkpoint's tensors under original-layout names, whichever layout it is stored in,
    validated on opening (every tensor present, nothing extra, the dtypes and shapes config.json
    implies; refused if a conversion replaced the folder's files meanwhile), read by assembling
    each from its stored parts. The files stay open as long as ``stack``."""

    def __init__(self, path: Path, config: GptOssConfig, stack: contextlib.ExitStack):
        # A conversion into a folder takes its config.json away first and puts the new one in last
        # (convert.py): while config.json stays the same file, every shard opened belongs to the
        # checkpoint that ``config`` describes, and the open files keep their contents.
        before = _file_identity(path / CONFIG_FILE)
        d = _config_json(path)  # read once: the config to check and the layout
        if _config_from(d, path) != config:
            raise _changed(path)
        hf = layouts.detect(d) == layouts.HF
        self.index = _Index(path, stack)
        self.specs = checkpoint_tensors(config)
        self.parts = {name: layouts.hf_parts(config, name) if hf else [layouts.Part(name, 0, -1)]
                      for name in self.specs}
        self.stored: Dict[str, TensorSpec] = {}
        for name, spec in self.specs.items():
            for p in self.parts[name]:
                shape = spec.shape if p.stop < 0 else (p.stop - p.start, *spec.shape[1:])
                dims = spec.dims if p.stop < 0 else f"rows {p.start}..{p.stop} of {name} ({spec.dims})"
                self.stored[p.name] = TensorSpec(shape, spec.dtype, dims)
        _check_tensors(path, config, self.index, self.stored)
        if _file_identity(path / CONFIG_FILE) != before:
            raise _changed(path)

    def file(self, name: str) -> Path:
        return self.index.where[self.parts[name][0].name][0]

    def read(self, name: str, index: tuple) -> torch.Tensor:
        parts = self.parts[name]
        if parts[0].stop < 0:
            return self.index.read(parts[0].name, index)
        rows, rest = index[0], index[1:]
        start, stop, _ = rows.indices(parts[-1].stop)
        return torch.cat([self.index.read(p.name, (slice(a, b), *rest))
                          for p, a, b in layouts.split_rows(parts, start, stop)])

    def read_checked(self, name: str, index: tuple) -> torch.Tensor:
        """:meth:`read`, refusing values no gpt-oss checkpoint holds (every loader reads through
        it): non-finite weights, and the MXFP4 scale 255, which decodes to NaN."""
        t = self.read(name, index)
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise CheckpointError(f"{self.file(name)}: tensor {name!r} holds non-finite values (corrupt file?)")
        if name.endswith(".scales") and (t == 255).any():
            raise CheckpointError(f"{self.file(name)}: tensor {name!r} holds the MXFP4 NaN scale 255 (corrupt file?)")
        return t


def _check_tensors(path: Path, config: GptOssConfig, index: _Index, specs: Dict[str, TensorSpec]) -> None:
    present = set(index.where)
    missing = [n for n in specs if n not in present]
    extra = sorted(present - set(specs))
    layer_of = re.compile(r"(?:block|model\.layers)\.(\d+)\.")
    blocks_present = {int(m.group(1)) for m in map(layer_of.match, present) if m}
    n_layers = max(blocks_present) + 1 if blocks_present else 0
    if n_layers != config.num_hidden_layers and blocks_present:
        raise CheckpointError(
            f"gpt-oss checkpoint {path}: config.json does not match the tensors: config.json says "
            f"num_hidden_layers={config.num_hidden_layers}, the safetensors files hold blocks 0..{n_layers - 1}")
    if missing:
        raise CheckpointError(f"gpt-oss checkpoint {path}: missing tensor(s) {_names(missing)} "
                              f"(looked in {', '.join(f.name for f in index.files)})")
    if extra:
        where = sorted({index.where[n][0].name for n in extra})
        raise CheckpointError(f"gpt-oss checkpoint {path}: unexpected tensor(s) {_names(extra)} in "
                              f"{', '.join(where)}")
    for name, spec in specs.items():
        shape, dtype = index.meta(name)
        file = index.where[name][0]
        if dtype != spec.dtype:
            raise CheckpointError(f"{file}: tensor {name!r} expected dtype {spec.dtype}, got {dtype}")
        if shape != spec.shape:
            raise CheckpointError(
                f"{file}: tensor {name!r} expected shape {_fmt_shape(spec.shape)} ({spec.dims} from config.json), "
                f"got {_fmt_shape(shape)}: the tensor or config.json is wrong")


def load_model(path: PathLike, device: Union[str, torch.device], *, rank: Optional[int] = None,
               world_size: Optional[int] = None, progress: bool = True, dtype: torch.dtype = torch.bfloat16,
               group=None, repack_experts: bool = False) -> GptOss:
    """Loads the checkpoint directory ``path`` as a :class:`GptOss` on ``device``.

    ``rank``/``world_size`` default to torch.distributed's when it is initialised (else 0 and 1);
    with world_size > 1 only this rank's shard of each tensor is read (safetensors slices), as
    :class:`TensorParallel` describes. ``dtype`` is the dense weights' and activations' dtype
    (bfloat16 as stored, or float32). A progress bar goes to stderr on rank 0 if ``progress``.
    Tensors are read on the CPU and copied to ``device`` one at a time. ``repack_experts``: the
    experts also in the layout of moekit's Hopper main loop (:meth:`GptOss.repack_experts`), which
    the prefill then runs on (sm_90), at twice the experts' memory.
    """
    import torch.distributed as dist
    from tqdm import tqdm

    path = Path(path)
    config = read_config(path)
    initialised = dist.is_available() and dist.is_initialized()
    if world_size is None:
        world_size = dist.get_world_size(group) if initialised else 1
    if rank is None:
        rank = dist.get_rank(group) if initialised else 0
    try:
        tp = TensorParallel.plan(config, rank, world_size)
    except ValueError as e:
        raise CheckpointError(f"gpt-oss checkpoint {path}: {e}") from None
    specs = checkpoint_tensors(config)
    with contextlib.ExitStack() as stack:
        tensors = CheckpointTensors(path, config, stack)
        model = GptOss(config, device, dtype=dtype, tp=tp, group=group)
        dest = model.state_dict()
        plan = [(name, tp.slices(config, name)) for name in specs]
        plan = [(name, slices) for name, slices in plan if slices is not None]
        total = sum(math.prod(specs[n].shape) * (2 if specs[n].dtype == "BF16" else 1) for n, _ in plan)
        # A bar on a terminal; in a log (no terminal), one line once loaded instead of a frozen bar.
        report = progress and tp.rank == 0
        interactive = sys.stderr.isatty()
        start = time.perf_counter()
        bar = tqdm(total=total, unit="B", unit_scale=True, desc=f"loading {path.name}", file=sys.stderr,
                   disable=not (report and interactive), leave=False)
        with bar, torch.no_grad():
            for name, slices in plan:
                parts = [tensors.read_checked(name, s) for s in slices]
                t = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
                target = dest[name]
                if tuple(t.shape) != tuple(target.shape):  # cannot happen for a checked checkpoint
                    raise CheckpointError(f"tensor {name!r}: rank {tp.rank} shard has shape {_fmt_shape(t.shape)}, "
                                          f"the model expects {_fmt_shape(target.shape)}")
                target.copy_(t)
                bar.update(math.prod(specs[name].shape) * (2 if specs[name].dtype == "BF16" else 1))
        if report and not interactive:
            print(f"loaded {path.name}: {total / 1e6:.1f} MB in {time.perf_counter() - start:.2f} s", file=sys.stderr,
                  flush=True)
    model.eval()
    if repack_experts:
        model.repack_experts()
    return model
