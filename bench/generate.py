"""Batch-1 decode of gpt-oss at the published shapes, random weights: moekit's runner beside OpenAI's
gpt_oss.triton in one process, on one GPU (docs/decode.md, issue 20's benchmark).

    python3 bench/generate.py [--shapes 20b 120b] [--peer-dir .peers] [--out bench/results/NAME.json]

For each shape: a checkpoint in the published original/ layout with random weights (20b: written
once under --checkpoint-root and reused; 120b: 65 GB fit no disk of the GPU machine, so its model is
made on the GPU without a file), loaded by the runner (moekit.models.load_model), greedy decode after
a --prompt-tokens prompt. tokens/s comes from the difference of two runs of different lengths
(prefill and capture excluded), median of --reps pairs; with the CUDA-graph step (the default) and
the eager one, whose first 64 tokens must equal the graph's. Also: the bytes a token reads, the
limit they give at the copy ceiling measured in the same run, and where one decode step's GPU time
goes (torch.profiler over eager steps, by module: attention projections, attention, MoE, norms,
unembedding, the rest). With --peer-dir holding gpt_oss-0.0.9 and triton_kernels-3.6.0, OpenAI's
gpt_oss.triton TokenGenerator (triton_kernels MoE, decode step in a CUDA graph) decodes the same
checkpoint in the same process, timed the same way (bench/gpt_oss_triton_peer.py). With
--transformers, transformers' own model with moekit's MoE (moekit.transformers_gpt_oss) too, with a
static cache, transformers compiling its decode step ("reduce-overhead", fullgraph); and, where the
GPU's free memory holds it, transformers' own model with the experts dequantized to bf16 (what its
Mxfp4Config(dequantize=True) gives users, run by its grouped_mm experts), timed the same way.
"""

import argparse
import datetime
import json
import math
import statistics
import time
from pathlib import Path

import torch

from common import ceilings, commit_of, driver_version
from moekit.models import GptOss, GptOssConfig, checkpoint_tensors, load_model
from moekit.models.decode import Decoder

SHAPES = {  # the published configs
    "20b": dict(num_hidden_layers=24, num_experts=32),
    "120b": dict(num_hidden_layers=36, num_experts=128),
}
COMMON = dict(experts_per_token=4, vocab_size=201088, hidden_size=2880, intermediate_size=2880, head_dim=64,
              num_attention_heads=64, num_key_value_heads=8, swiglu_limit=7.0, sliding_window=128,
              initial_context_length=4096, rope_theta=150000.0, rope_scaling_factor=32.0, rope_ntk_alpha=1.0,
              rope_ntk_beta=32.0)
MXFP4_BYTES = 0.5 + 1 / 32  # per weight: a nibble, and a scale byte per 32


def config_of(shape: str) -> GptOssConfig:
    return GptOssConfig(**SHAPES[shape], **COMMON)


# ---------------------------------------------------------------------------- random weights

def random_tensor(name: str, shape, dtype: str, device, gen) -> torch.Tensor:
    """Values a trained model could hold: codes any byte, scales 2^-5..2^-2 (weights ~0.01-0.4),
    dense weights ~N(0, 1/fan_in), norms ~1, small biases and sinks."""
    if dtype == "U8":
        if name.endswith("scales"):
            return torch.randint(122, 126, shape, device=device, generator=gen, dtype=torch.uint8)
        return torch.randint(0, 256, shape, device=device, generator=gen, dtype=torch.uint8)
    t = torch.randn(shape, device=device, generator=gen)
    if name.endswith("norm.scale"):
        t = 1.0 + 0.1 * t
    elif name.endswith(("bias", "sinks")):
        t = 0.1 * t
    elif name != "embedding.weight":
        t = t * shape[-1] ** -0.5
    return t.to(torch.bfloat16)


def write_checkpoint(path: Path, config: GptOssConfig, device, layers_per_file: int = 4) -> None:
    """The original/ layout: config.json and safetensors files of a few layers each."""
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator(device=device).manual_seed(0)
    groups = {}
    for name, spec in checkpoint_tensors(config).items():
        key = int(name.split(".")[1]) // layers_per_file if name.startswith("block.") else -1
        groups.setdefault(key, []).append((name, spec))
    files = sorted(groups)
    for i, key in enumerate(files):
        tensors = {name: random_tensor(name, spec.shape, spec.dtype, device, gen).cpu()
                   for name, spec in groups[key]}
        save_file(tensors, str(path / f"model-{i + 1:05d}-of-{len(files):05d}.safetensors"), metadata={"format": "pt"})
    config.to_json(path / "config.json")  # last: a folder with config.json is complete


def random_model(config: GptOssConfig, device) -> GptOss:
    """The runner's model with random weights made on the GPU, without a file."""
    model = GptOss(config, device, dtype=torch.bfloat16)
    gen = torch.Generator(device=device).manual_seed(0)
    specs = checkpoint_tensors(config)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            t.copy_(random_tensor(name, tuple(t.shape), specs[name].dtype, device, gen))
    return model.eval()


# -------------------------------------------------------------------------------- measuring

def bytes_per_token(config: GptOssConfig, context: float) -> float:
    """What one decode step reads at least: every dense weight once, the k experts' MXFP4 weights and
    biases, the norms, one embedding row, the unembedding, and the KV cache up to ``context`` keys
    (the window on sliding layers)."""
    c = config
    H, I, E, k, d = c.hidden_size, c.intermediate_size, c.num_experts, c.experts_per_token, c.head_dim
    qkv = d * (c.num_attention_heads + 2 * c.num_key_value_heads)
    attention = 2 * (qkv * H + qkv + H * d * c.num_attention_heads + H) + 4 * c.num_attention_heads
    experts = k * (MXFP4_BYTES * 3 * H * I + 2 * (2 * I + H))
    gate = 2 * (E * H + E)
    norms = 2 * 4 * H
    kv = sum(2 * 2 * c.num_key_value_heads * d * (min(context, c.sliding_window) if i % 2 == 0 else context)
             for i in range(c.num_hidden_layers))
    return c.num_hidden_layers * (attention + experts + gate + norms) + kv + 2 * H + 4 * H + 2 * c.vocab_size * H


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def tokens_per_second(run, short: int, long: int, reps: int, device) -> dict:
    """run(n) generates n tokens; the rate of the extra long - short tokens, median over reps."""
    def timed(n):
        sync(device)
        start = time.perf_counter()
        run(n)
        sync(device)
        return time.perf_counter() - start

    run(long)  # warm-up: capture, autotuning, allocations
    rates = []
    for _ in range(reps):
        t_short, t_long = timed(short), timed(long)
        rates.append((long - short) / (t_long - t_short))
    rate = statistics.median(rates)
    return {"tokens_per_s": rate, "ms_per_token": 1e3 / rate, "runs": rates, "new_tokens": [short, long]}


KERNEL_PARTS = (  # kernel name fragments -> part of the decode step
    ("add_rms_norm", "norms"),
    ("attention_decode", "attention"),
    ("matmul_ogs_gemv", "linear"),  # the attention output projection (before matmul_ogs: first match wins)
    ("matmul_ogs", "moe"), ("moe_decode", "moe"), ("combine", "moe"), ("route", "moe"), ("group_by_expert", "moe"),
    ("topk", "moe"), ("plan_tiles", "moe"),
    ("gemv", "linear"), ("gemm", "linear"), ("nvjet", "linear"), ("xmma", "linear"), ("cutlass", "linear"),
    ("splitK", "linear"),
)


def step_breakdown(model: GptOss, prompt, steps: int = 8) -> dict:
    """GPU time of one eager decode step by part (us per step), from torch.profiler's kernel records,
    classified by name; linear kernels after a step's last norm are the unembedding, the others after
    it the sampling. Also the kernels per step and the ten costliest kernels."""
    from torch.profiler import ProfilerActivity, profile

    decoder = Decoder(model, len(prompt) + steps + 1, 0.0, 1.0, graph=False)
    decoder.generate(prompt, 1, None, set(), 512)
    torch.cuda.synchronize(model.device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            decoder._step()
        torch.cuda.synchronize(model.device)
    kernels = sorted((e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA),
                     key=lambda e: e.time_range.start)
    per_step = len(kernels) // steps  # every step launches the same kernels
    parts, costliest = {}, {}
    for begin in range(0, per_step * steps, per_step):
        step = kernels[begin:begin + per_step]
        last_norm = max(i for i, k in enumerate(step) if "add_rms_norm" in k.name)
        for i, e in enumerate(step):
            name = next((part for fragment, part in KERNEL_PARTS if fragment in e.name), "other")
            if name == "linear":
                name = "unembedding" if i > last_norm else "attention projections"
            elif name == "other" and i > last_norm:
                name = "sampling"
            us = e.time_range.elapsed_us() / steps
            parts[name] = parts.get(name, 0.0) + us
            costliest[e.name[:80]] = costliest.get(e.name[:80], 0.0) + us
    result = {k: parts[k] for k in sorted(parts, key=lambda k: -parts[k])}
    result["total"] = sum(parts.values())
    result["kernels_per_step"] = len(kernels) / steps
    result["costliest"] = dict(sorted(costliest.items(), key=lambda kv: -kv[1])[:10])
    return result


def dequantize_experts(model) -> None:
    """Replaces every moekit MLP of a moekit.transformers_gpt_oss model by transformers' own
    GptOssMLP, its experts the checkpoint's MXFP4 weights dequantized to the model's dtype (transformers'
    layout: gate_up_proj [E, H, 2I], down_proj [E, I, H]) and run by its grouped_mm experts."""
    import moekit
    from moekit.transformers_gpt_oss import MoekitGptOssMLP
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssMLP

    config = model.config
    config._experts_implementation = "grouped_mm"
    for name, ours in list(model.named_modules()):
        if not isinstance(ours, MoekitGptOssMLP):
            continue
        dtype = ours.router.weight.dtype  # the model's (MXFP4 values are exact in bf16 and float32)
        with torch.device(ours.router.weight.device):
            mlp = GptOssMLP(config).to(dtype)
        e, theirs = ours.experts, mlp.experts
        mlp.router.load_state_dict(ours.router.state_dict())
        theirs.gate_up_proj.copy_(
            moekit.dequantize_mxfp4(e.gate_up_proj_blocks, e.gate_up_proj_scales, dtype=dtype).transpose(1, 2))
        theirs.down_proj.copy_(moekit.dequantize_mxfp4(e.down_proj_blocks, e.down_proj_scales, dtype=dtype).transpose(1, 2))
        theirs.gate_up_proj_bias.copy_(e.gate_up_proj_bias)
        theirs.down_proj_bias.copy_(e.down_proj_bias)
        theirs.limit = e.limit
        model.set_submodule(name, mlp)


def transformers_generator(checkpoint: Path, device, dequantized: bool = False):
    """run(prompt, n): transformers' GptOssForCausalLM with moekit's MoE (moekit.transformers_gpt_oss),
    or with its own experts dequantized to bf16, decoding greedily with a static cache. transformers'
    generate compiles the decode step itself when the cache is static and the model on a GPU (the
    prefill stays eager): here in "reduce-overhead" mode, the step replayed from a CUDA graph, and
    with fullgraph=True, so a graph break in the MoE would fail the run instead of slowing it.
    (Compiling model.forward by hand compiles the prefill too, whose cache writes then overwrite
    the decode graph's outputs.)"""
    from transformers import CompileConfig

    from moekit.transformers_gpt_oss import from_pretrained

    model = from_pretrained(checkpoint, device, dtype=torch.bfloat16)
    if dequantized:
        dequantize_experts(model)
    compile_config = CompileConfig(fullgraph=True, mode="reduce-overhead")

    def run(prompt, n):
        ids = torch.tensor([prompt], device=device)
        out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, eos_token_id=None,
                             pad_token_id=0, cache_implementation="static", compile_config=compile_config)
        return out[0, len(prompt):].tolist()
    return run


def first_difference(a, b) -> int:
    """How many leading tokens of a and b agree."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def transformers_row(checkpoint: Path, prompt, runner_ids, row: dict, args, device, dequantized: bool) -> dict:
    """transformers' model (moekit's MoE, or its own experts dequantized to bf16) timed as the runner
    is, and how many of its greedy tokens equal the runner's."""
    with torch.inference_mode():
        run = transformers_generator(checkpoint, device, dequantized)
        result = tokens_per_second(lambda n: run(prompt, n), *args.new_tokens, args.reps, device)
        result["fraction_of_limit"] = result["tokens_per_s"] / row["limit_tokens_per_s"]
        result["greedy_tokens_equal_to_runner"] = first_difference(runner_ids, run(prompt, 64))
    what = "experts dequantized to bf16 (grouped_mm)" if dequantized else "moekit MoE"
    print(f"{row['shape']}: transformers + {what}, static cache, compiled: {result['tokens_per_s']:.1f} tokens/s; "
          f"first {result['greedy_tokens_equal_to_runner']} greedy tokens equal the runner's", flush=True)
    return result


def transformers_bf16_row(checkpoint: Path, config: GptOssConfig, prompt, runner_ids, row: dict, args, device) -> dict:
    """transformers_row with the experts dequantized to bf16, where the GPU's free memory holds
    them; else (or if it fails) why not."""
    experts_bf16 = 2 * config.num_hidden_layers * config.num_experts * 3 * config.hidden_size * config.intermediate_size
    free = torch.cuda.mem_get_info(device)[0]
    if experts_bf16 * 1.3 > free:  # the rest of the model and a layer dequantized at a time beside it
        note = f"not run: its bf16 experts ({experts_bf16 / 1e9:.1f} GB) do not fit the {free / 1e9:.1f} GB free"
    else:
        try:
            return {**transformers_row(checkpoint, prompt, runner_ids, row, args, device, dequantized=True),
                    "experts_bf16_bytes": experts_bf16}
        except Exception as e:  # a compile failure is a result to report, not a reason to lose the others
            note = f"failed: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        finally:
            torch.cuda.empty_cache()
    print(f"{row['shape']}: transformers, experts dequantized to bf16: {note}", flush=True)
    return {"error": note}


# ------------------------------------------------------------------------------------- main

def run_shape(shape: str, args, device, copy_bps: float) -> dict:
    config = config_of(shape)
    gen = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, config.vocab_size, (args.prompt_tokens,), generator=gen).tolist()
    short, long = args.new_tokens
    row = {"shape": shape, "layers": config.num_hidden_layers, "experts": config.num_experts,
           "prompt_tokens": len(prompt)}
    checkpoint = None
    start = time.perf_counter()
    if shape == "20b":
        checkpoint = args.checkpoint_root / "gpt-oss-20b-random" / "original"
        if not (checkpoint / "config.json").exists():
            write_checkpoint(checkpoint, config, device)
        model = load_model(checkpoint, device, progress=False)
        row["weights"] = f"random, published original/ layout, loaded from {checkpoint}"
    else:
        model = random_model(config, device)
        row["weights"] = "random, made on the GPU (no file: 65 GB fit no disk of the machine)"
    row["load_s"] = time.perf_counter() - start
    context = len(prompt) + (short + long) / 2
    row["bytes_per_token"] = bytes_per_token(config, context)
    row["limit_tokens_per_s"] = copy_bps / row["bytes_per_token"]

    with torch.inference_mode():
        graph = tokens_per_second(lambda n: model.generate(prompt, n), short, long, args.reps, device)
        graph_ids = model.generate(prompt, 64)
        eager_short, eager_long = args.eager_tokens
        eager = tokens_per_second(lambda n: model.generate(prompt, n, graph=False), eager_short, eager_long, 1, device)
        eager_ids = model.generate(prompt, 64, graph=False)
        row["breakdown_us"] = step_breakdown(model, prompt)
    row["moekit_graph"] = graph
    row["moekit_eager"] = eager
    row["graph_equals_eager_64"] = graph_ids == eager_ids
    for r in (graph, eager):
        r["fraction_of_limit"] = r["tokens_per_s"] / row["limit_tokens_per_s"]
    print(f"{shape}: moekit graph {graph['tokens_per_s']:.1f} tokens/s ({graph['ms_per_token']:.3f} ms, "
          f"{graph['fraction_of_limit']:.3f} of the {row['limit_tokens_per_s']:.0f} tokens/s limit), eager "
          f"{eager['tokens_per_s']:.1f}; graph == eager for 64 tokens: {row['graph_equals_eager_64']}", flush=True)
    parts = {k: v for k, v in row["breakdown_us"].items() if isinstance(v, float)}
    print("  one eager step's GPU time (us): " + ", ".join(f"{k} {v:.0f}" for k, v in parts.items()), flush=True)
    print("  costliest kernels (us per step): " + "; ".join(f"{k} {v:.0f}" for k, v in
                                                          row["breakdown_us"]["costliest"].items()), flush=True)
    del model
    torch.cuda.empty_cache()

    if checkpoint is not None and args.transformers:
        row["transformers_moekit_compiled"] = transformers_row(checkpoint, prompt, graph_ids, row, args, device,
                                                               dequantized=False)
        torch.cuda.empty_cache()
        row["transformers_bf16_compiled"] = transformers_bf16_row(checkpoint, config, prompt, graph_ids, row, args,
                                                                  device)

    if checkpoint is not None and args.peer_dir is not None:
        from gpt_oss_triton_peer import PeerGenerator

        peer = PeerGenerator(args.peer_dir, checkpoint, len(prompt) + long, device)
        result = tokens_per_second(lambda n: peer.generate(prompt, n), short, long, args.reps, device)
        result["fraction_of_limit"] = result["tokens_per_s"] / row["limit_tokens_per_s"]
        peer_ids = peer.generate(prompt, 64)
        row["gpt_oss_triton"] = result
        row["moekit_vs_gpt_oss_triton"] = graph["tokens_per_s"] / result["tokens_per_s"]
        row["greedy_tokens_equal_to_peer"] = first_difference(graph_ids, peer_ids)
        print(f"{shape}: gpt_oss.triton {result['tokens_per_s']:.1f} tokens/s: moekit is "
              f"{row['moekit_vs_gpt_oss_triton']:.2f}x; first {row['greedy_tokens_equal_to_peer']} greedy tokens agree",
              flush=True)
        del peer
        torch.cuda.empty_cache()
    return row


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=["20b", "120b"])
    p.add_argument("--prompt-tokens", type=int, default=100)
    p.add_argument("--new-tokens", type=int, nargs=2, default=[32, 160], metavar=("SHORT", "LONG"))
    p.add_argument("--eager-tokens", type=int, nargs=2, default=[8, 24], metavar=("SHORT", "LONG"))
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--checkpoint-root", type=Path, default=Path("/tmp/moekit-bench"))
    p.add_argument("--peer-dir", type=Path, default=None,
                   help="folder holding gpt_oss-0.0.9 and triton_kernels-3.6.0 (OpenAI's gpt_oss.triton and the "
                        "kernels it calls); the peer runs at 20b when given")
    p.add_argument("--transformers", action="store_true",
                   help="also time transformers' GptOssForCausalLM with moekit's MoE (static cache, torch.compile "
                        "reduce-overhead) on the 20b checkpoint")
    p.add_argument("--commit", default=None)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    device = torch.device("cuda", torch.cuda.current_device())
    props = torch.cuda.get_device_properties(device)
    ceil = ceilings(device)
    print(f"{props.name}: copy {ceil['copy_GBps']:.0f} GB/s, bf16 GEMM {ceil['bf16_gemm_TFLOPs']:.0f} TFLOP/s", flush=True)
    rows = [run_shape(shape, args, device, ceil["copy_GBps"] * 1e9) for shape in args.shapes]
    result = dict(gpu=props.name, driver=driver_version(), commit=commit_of(args), torch=torch.__version__,
                  date=datetime.date.today().isoformat(), ceilings=ceil, rows=rows)
    out = args.out or Path("bench/results") / f"generate_{props.name.replace(' ', '_')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=lambda v: None if isinstance(v, float) and math.isnan(v) else v)
                   + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
