"""Training through one frozen gpt-oss MoE layer (issue 21): forward and backward times and peak
memory of moekit.moe_mlp under autograd, beside the path users take today, the same layer with
its experts dequantized to bf16 and torch's autograd through torch._grouped_mm (bench/moe_layer.py's
peer layer), in the same process, on the same weights and inputs.

    python bench/train_layer.py [--experts 32 128] [--tokens 2048 8192] [--out bench/results/NAME.json]
        [--kernels]   (also prints the kernels of one moekit step, by time, from torch's profiler)
        [--repacked]  (moekit also with its experts in both layouts, repack_mxfp4's beside the
                       checkpoint's, as from_pretrained(..., repack_experts=True) holds them)

x requires grad, the weights are frozen (as when training modules around the model). moekit is
timed both ways it trains: moekit.moe_mlp in grad mode (its activations kept by autograd, mlp1's h
recomputed) and torch.ops.moekit.moe_mlp called directly (only its inputs kept, gate, routing and
mlp1 recomputed in the backward): the saved-against-recomputed choice of docs/design.md. Each rep
runs the forward and then the backward of a fresh graph, timed apart with CUDA events (eager,
median over reps). Peak memory: the most allocated during a step beyond what was held before it
(saved activations and intermediates); kept: what the forward leaves allocated for the backward,
its output included (what a model's layers add up between its forward and its backward). Weight memory: the layer's expert weights (MXFP4 blocks
and scales, or the bf16 copies). The gradient at x of each path against a float32 autograd
reference on the same weights: relative Frobenius error.
"""

import datetime
import json
import statistics

import torch

import moekit
from common import ceilings, commit_of, driver_version, sweep_arguments
from moe_layer import H, K, dequantized, grouped_mm_layer, make_layer, reference_f32


def moekit_layer(x, layer):
    return moekit.moe_mlp(x, layer["gate_weight"], layer["gate_bias"], layer["mlp1_weight"], layer["mlp1_bias"],
                          layer["mlp2_weight"], layer["mlp2_bias"], experts_per_token=K)


def moekit_op(x, layer):
    """The op called directly: its registered backward recomputes the layer's steps."""
    return torch.ops.moekit.moe_mlp(x, layer["gate_weight"], layer["gate_bias"], *layer["mlp1_weight"],
                                    layer["mlp1_bias"], *layer["mlp2_weight"], layer["mlp2_bias"], K, 1.702, 7.0)


def time_training(forward, x, grad_y, reps):
    """Median forward and backward ms of `forward(x)` then its backward, the step's peak bytes and the
    bytes the forward leaves held for the backward (its output included)."""
    fwd, bwd = [], []
    x.grad = None  # a previous path's gradient is not this one's memory
    torch.cuda.synchronize()
    held = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    for _ in range(reps + 2):  # two warm-up steps
        x.grad = None
        events = [torch.cuda.Event(enable_timing=True) for _ in range(3)]
        events[0].record()
        y = forward(x)
        events[1].record()
        kept = torch.cuda.memory_allocated() - held
        y.backward(grad_y)
        events[2].record()
        events[2].synchronize()
        fwd.append(events[0].elapsed_time(events[1]))
        bwd.append(events[1].elapsed_time(events[2]))
        del y
    peak = torch.cuda.max_memory_allocated() - held
    return statistics.median(fwd[2:]), statistics.median(bwd[2:]), peak, kept


def print_kernels(forward, x, grad_y):
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        forward(x).backward(grad_y)
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=20, max_name_column_width=70), flush=True)


def reference_grad(x, layer, w1, w2, grad_y):
    x32 = x.detach().float().requires_grad_()
    y, _ = reference_f32(x32, layer, w1, w2)
    y.backward(grad_y.float())
    return x32.grad


def rel_err(got, want):
    return float((got.float() - want).norm() / want.norm())


def main():
    p = sweep_arguments(__doc__.splitlines()[0])
    p.set_defaults(tokens=[2048, 8192], reps=10)
    p.add_argument("--kernels", action="store_true")
    p.add_argument("--repacked", action="store_true",
                   help="moekit also timed with its experts in both layouts (repack_mxfp4's beside the checkpoint's)")
    args = p.parse_args()
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(0)
    result = {"gpu": torch.cuda.get_device_name(dev), "driver": driver_version(), "commit": commit_of(args),
              "date": datetime.date.today().isoformat(), "torch": torch.__version__,
              "ceilings": ceilings(dev), "rows": []}
    for E in args.experts:
        full = make_layer(E, dev, gen, args.repacked)
        # moekit's experts in the checkpoint layout alone, and (--repacked) beside repack_mxfp4's
        layer = {**full, **{w: full[w][:2] for w in ("mlp1_weight", "mlp2_weight")}}
        repacked = full if args.repacked else None
        w1, w2 = dequantized(layer)
        w1t, w2t = w1.transpose(1, 2), w2.transpose(1, 2)  # [E, K, N] views for torch._grouped_mm
        mx_bytes = sum(t.numel() * t.element_size() for t in (*layer["mlp1_weight"], *layer["mlp2_weight"]))
        bf16_bytes = (w1.numel() + w2.numel()) * 2
        for T in args.tokens:
            x = torch.randn(T, H, device=dev, generator=gen).bfloat16().requires_grad_()
            grad_y = torch.randn(T, H, device=dev, generator=gen).bfloat16()
            m_fwd, m_bwd, m_peak, m_kept = time_training(lambda x: moekit_layer(x, layer), x, grad_y, args.reps)
            m_grad = x.grad.clone()
            if args.kernels:
                print_kernels(lambda x: moekit_layer(x, layer), x, grad_y)
            if repacked is not None:
                p_fwd, p_bwd, _, _ = time_training(lambda x: moekit_layer(x, repacked), x, grad_y, args.reps)
                p_grad = x.grad.clone()
            r_fwd, r_bwd, r_peak, r_kept = time_training(lambda x: moekit_op(x, layer), x, grad_y, args.reps)
            b_fwd, b_bwd, b_peak, b_kept = time_training(lambda x: grouped_mm_layer(x, layer, w1t, w2t)[0], x, grad_y, args.reps)
            b_grad = x.grad.clone()
            want = reference_grad(x, layer, w1, w2, grad_y)
            row = {"E": E, "T": T,
                   "moekit_forward_ms": m_fwd, "moekit_backward_ms": m_bwd, "moekit_backward_over_forward": m_bwd / m_fwd,
                   "moekit_step_peak_GB": m_peak / 1e9, "moekit_kept_GB": m_kept / 1e9, "moekit_expert_weight_GB": mx_bytes / 1e9,
                   "moekit_op_recompute_forward_ms": r_fwd, "moekit_op_recompute_backward_ms": r_bwd,
                   "moekit_op_recompute_step_peak_GB": r_peak / 1e9, "moekit_op_recompute_kept_GB": r_kept / 1e9,
                   "bf16_forward_ms": b_fwd, "bf16_backward_ms": b_bwd, "bf16_step_peak_GB": b_peak / 1e9, "bf16_kept_GB": b_kept / 1e9,
                   "bf16_expert_weight_GB": bf16_bytes / 1e9,
                   "step_speedup": (b_fwd + b_bwd) / (m_fwd + m_bwd), "weight_memory_ratio": mx_bytes / bf16_bytes,
                   "moekit_grad_x_rel_err": rel_err(m_grad, want), "bf16_grad_x_rel_err": rel_err(b_grad, want)}
            if repacked is not None:
                row.update(moekit_repacked_forward_ms=p_fwd, moekit_repacked_backward_ms=p_bwd,
                           moekit_repacked_grad_x_rel_err=rel_err(p_grad, want))
            result["rows"].append(row)
            print(f"E={E:4d} T={T:5d}  moekit fwd {m_fwd:7.3f} bwd {m_bwd:7.3f} ms (bwd/fwd {m_bwd / m_fwd:4.2f}, "
                  f"peak {m_peak / 1e9:5.2f} GB, kept {m_kept / 1e9:5.2f} GB, err {row['moekit_grad_x_rel_err']:.1e})  bf16 fwd {b_fwd:7.3f} "
                  f"bwd {b_bwd:7.3f} ms (peak {b_peak / 1e9:5.2f} GB, kept {b_kept / 1e9:5.2f} GB, err {row['bf16_grad_x_rel_err']:.1e})  "
                  f"step x{row['step_speedup']:4.2f}  weights {mx_bytes / 1e9:.2f} vs {bf16_bytes / 1e9:.2f} GB  "
                  f"(the op, recomputing: fwd {r_fwd:7.3f} bwd {r_bwd:7.3f} ms, peak {r_peak / 1e9:5.2f} GB, kept {r_kept / 1e9:5.2f} GB)"
                  + (f"  repacked: fwd {p_fwd:7.3f} bwd {p_bwd:7.3f} ms, err {row['moekit_repacked_grad_x_rel_err']:.1e}"
                     if repacked is not None else ""), flush=True)
            del x, grad_y, m_grad, b_grad, want
        del full, layer, repacked, w1, w2, w1t, w2t
        torch.cuda.empty_cache()
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
