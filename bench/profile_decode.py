"""Where a gpt-oss-20b-shaped model's decode time goes: the runner's model (moekit.models.GptOss)
with random weights at the published shapes (MXFP4 experts), made on the GPU without a file;
tokens/s of greedy decode after a prompt, then one decode step under torch.profiler: GPU time
per kernel family, GPU busy time against the step's wall time, CPU time per op.

    python3 bench/profile_decode.py [--layers 24] [--experts 32] [--prompt-tokens 32] [--new-tokens 16]
"""

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from moekit.models import GptOss, GptOssConfig


def random_model(args, device):
    config = GptOssConfig(num_hidden_layers=args.layers, num_experts=args.experts, experts_per_token=4,
                          vocab_size=201088, hidden_size=2880, intermediate_size=2880, head_dim=64,
                          num_attention_heads=64, num_key_value_heads=8)
    model = GptOss(config, device, dtype=torch.bfloat16)
    g = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.dtype == torch.uint8:  # codes: any byte; scales: 2^-2..2^-5 (weights ~0.03-0.3)
                t.copy_(torch.randint(122, 126, t.shape, device=device, generator=g, dtype=torch.int32)
                        if name.endswith("scales") else
                        torch.randint(0, 256, t.shape, device=device, generator=g, dtype=torch.int32))
            elif name.endswith("scale"):
                t.fill_(1.0)
            else:
                t.copy_(torch.randn(t.shape, device=device, generator=g) * (t.shape[-1] ** -0.5))
    return model.eval()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=24)
    p.add_argument("--experts", type=int, default=32)
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--device", default="cuda", help="cuda (the current GPU) or cpu (a smoke test)")
    args = p.parse_args()
    device = torch.device("cuda", torch.cuda.current_device()) if args.device == "cuda" else torch.device("cpu")
    model = random_model(args, device)
    prompt = list(range(1000, 1000 + args.prompt_tokens))
    model.generate(prompt, 2)  # warm-up
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda d: None)
    sync(device)
    start = time.perf_counter()
    model.generate(prompt, args.new_tokens)
    sync(device)
    seconds = time.perf_counter() - start
    print(f"{args.new_tokens} new tokens after {args.prompt_tokens}: {seconds:.3f} s, "
          f"{args.new_tokens / seconds:.1f} tokens/s (prefill included)")
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        model.generate(prompt, 5)
        sync(device)
    events = prof.key_averages()
    gpu = sorted((e for e in events if e.device_type == torch.autograd.DeviceType.CUDA),
                 key=lambda e: -e.self_device_time_total)
    total = sum(e.self_device_time_total for e in gpu)
    print(f"GPU time over prefill + 4 decode steps: {total / 1e3:.1f} ms; top kernels:")
    for e in gpu[:15]:
        print(f"  {e.self_device_time_total / 1e3:8.2f} ms {e.count:6d}x  {e.key[:90]}")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=50))


if __name__ == "__main__":
    main()
