"""One gpt-oss-20b-shaped MoE layer, timed, with its error against float64.

Builds random MXFP4 expert weights of gpt-oss-20b's shape (E=32, H=I=2880, k=4), runs
moekit.moe_mlp on the best available device, and prints its time and its error against a
float64 reference computed on the same dequantized weights.

    python -m moekit.demo [--tokens 4] [--experts 32] [--device cpu|cuda] [--seed 0]
"""

import argparse
import statistics
import time

import torch

import moekit


def has_cuda_backend() -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key("moekit::moe_mlp", "CUDA")


def best_device() -> str:
    return "cuda" if torch.cuda.is_available() and has_cuda_backend() else "cpu"


def step(message: str) -> None:
    print(f"[{time.perf_counter() - START:6.1f} s] {message}", flush=True)


START = time.perf_counter()


def make_layer(experts: int, hidden: int, inter: int, gen: torch.Generator):
    """Random gpt-oss-like weights; experts quantized one at a time to bound host memory."""
    def mxfp4_experts(name: str, rows: int, cols: int):
        blocks, scales = [], []
        for e in range(experts):
            w = torch.randn(rows, cols, generator=gen) / cols ** 0.5
            b, s = moekit.quantize_mxfp4(w)
            blocks.append(b)
            scales.append(s)
            if (e + 1) % 8 == 0 or e + 1 == experts:
                step(f"{name}: {e + 1}/{experts} experts of [{rows}, {cols}] drawn and quantized to MXFP4")
        return torch.stack(blocks), torch.stack(scales)

    return dict(
        gate_weight=(torch.randn(experts, hidden, generator=gen) / hidden ** 0.5).bfloat16(),
        gate_bias=(0.1 * torch.randn(experts, generator=gen)).bfloat16(),
        mlp1_weight=mxfp4_experts("mlp1", 2 * inter, hidden),
        mlp1_bias=(0.1 * torch.randn(experts, 2 * inter, generator=gen)).bfloat16(),
        mlp2_weight=mxfp4_experts("mlp2", hidden, inter),
        mlp2_bias=(0.1 * torch.randn(experts, hidden, generator=gen)).bfloat16(),
    )


def reference(x: torch.Tensor, layer: dict, k: int, alpha: float = 1.702, limit: float = 7.0) -> torch.Tensor:
    """float64 MoE layer on the dequantized weights of the experts the tokens pick."""
    f64 = torch.float64
    x = x.to(f64)
    logits = x @ layer["gate_weight"].to(f64).T + layer["gate_bias"].to(f64)
    top = torch.topk(logits, k, dim=-1)  # no exact ties in random data
    weights = torch.softmax(top.values, dim=-1)
    b1, s1 = layer["mlp1_weight"]
    b2, s2 = layer["mlp2_weight"]
    y = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for j in range(k):
            e = int(top.indices[t, j])
            w1 = moekit.dequantize_mxfp4(b1[e], s1[e], dtype=torch.float32).to(f64)
            w2 = moekit.dequantize_mxfp4(b2[e], s2[e], dtype=torch.float32).to(f64)
            h = w1 @ x[t] + layer["mlp1_bias"][e].to(f64)
            g, l = h[0::2].clamp(max=limit), h[1::2].clamp(-limit, limit)
            a = g * torch.sigmoid(alpha * g) * (l + 1)
            y[t] += weights[t, j] * (w2 @ a + layer["mlp2_bias"][e].to(f64))
    return y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4)
    parser.add_argument("--experts", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=2880)
    parser.add_argument("--intermediate", type=int, default=2880)
    parser.add_argument("--experts-per-token", type=int, default=4)
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    device = torch.device(args.device or best_device())

    gen = torch.Generator().manual_seed(args.seed)
    step(f"building a gpt-oss-shaped MoE layer: E={args.experts} H={args.hidden} I={args.intermediate} "
         f"k={args.experts_per_token}, MXFP4 experts")
    layer = make_layer(args.experts, args.hidden, args.intermediate, gen)
    x = torch.randn(args.tokens, args.hidden, generator=gen).bfloat16()

    moved = {name: tuple(t.to(device) for t in v) if isinstance(v, tuple) else v.to(device)
             for name, v in layer.items()}
    xd = x.to(device)

    def run():
        return moekit.moe_mlp(xd, **moved, experts_per_token=args.experts_per_token)

    step(f"timing moekit.moe_mlp on {device} ({args.repeats} runs after a warm-up)")
    y = run()  # warm-up
    times = []
    for _ in range(args.repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        y = run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)

    step("the float64 reference on the same dequantized weights")
    ref = reference(x, layer, args.experts_per_token)
    err = (y.cpu().double() - ref).norm() / ref.norm()
    print(f"device {device}  tokens {args.tokens}  moe_mlp median {statistics.median(times) * 1e3:.2f} ms "
          f"over {args.repeats} runs")
    print(f"relative error vs float64 reference: {err:.2e}")


if __name__ == "__main__":
    main()
