"""One layer of the graph decode step as it replays: per kernel, its start and end (us after the
layer's first kernel starts) and its end minus the previous kernel's end, which with chained
kernels is its share of the critical path; then each kernel's median share over every layer of
four steps, and the same for the kernels before the first layer and after the last (embedding,
unembedding, sampling). 20b random model made on the GPU, ~140 keys cached.

    python3 bench/step_timeline.py [--layer 12]
"""

import argparse
import statistics

import torch
from torch.profiler import ProfilerActivity, profile

import generate
from moekit.models.decode import Decoder


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layer", type=int, default=12)
    args = p.parse_args()
    device = torch.device("cuda", torch.cuda.current_device())
    config = generate.config_of("20b")
    model = generate.random_model(config, device)
    steps = 4
    with torch.inference_mode():
        decoder = Decoder(model, 256, 0.0, 1.0, graph=True)
        decoder.generate(list(range(100, 200)), 40, None, set(), 512)
        torch.cuda.synchronize(device)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(steps):
                decoder._run_step()
            torch.cuda.synchronize(device)
    kernels = sorted((e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA),
                     key=lambda e: e.time_range.start)
    report(kernels, steps, config.num_hidden_layers, args.layer)


def report(kernels, steps, layers, layer_shown):
    """Prints the timeline of `kernels` (profiler events of `steps` steps in order, each with
    .name and .time_range)."""
    per_step = len(kernels) // steps
    print(f"{per_step} kernels a step; step spans (us): " + ", ".join(
        f"{kernels[(s + 1) * per_step - 1].time_range.end - kernels[s * per_step].time_range.start:.1f}"
        for s in range(steps)))

    # Every step runs the same kernels: a layer starts at its add_rms_norm before attention, the
    # first of every per_layer norms (the final norm besides).
    norms = [i for i, k in enumerate(kernels[:per_step]) if "add_rms_norm" in k.name]
    per_layer = (len(norms) - 1) // layers

    def layer_kernels(s, layer):
        """Step s's kernels of `layer`, and the end of the kernel before it."""
        first, end = s * per_step + norms[layer * per_layer], s * per_step + norms[(layer + 1) * per_layer]
        return kernels[first:end], kernels[first - 1].time_range.end

    ks, previous = layer_kernels(2, layer_shown)
    t0 = ks[0].time_range.start
    print(f"layer {layer_shown} of step 2:")
    for k in ks:
        r = k.time_range
        print(f"{k.name[:60]:60s} start {r.start - t0:7.2f} end {r.end - t0:7.2f}  +{r.end - previous:6.2f}  "
              f"dur {r.end - r.start:6.2f}")
        previous = r.end
    # The same kernels' shares of the critical path over every layer but the first (whose kernel
    # before is the embedding's) of every step: one layer of one step moves by ~1 us a kernel.
    print_medians(f"median share over layers 1-{layers - 1} of {steps} steps", ks,
                  [shares_after(*layer_kernels(s, layer)) for s in range(steps) for layer in range(1, layers)])

    # Outside the layers: the kernels before layer 0's norm (the first counted from its own
    # start) and from the final norm to the step's end (after the last layer's last kernel).
    def outside(s):
        first, final_norm = s * per_step, s * per_step + norms[layers * per_layer]
        head, tail = kernels[first:first + norms[0]], kernels[final_norm:(s + 1) * per_step]
        return (shares_after(head, head[0].time_range.start) +
                shares_after(tail, kernels[final_norm - 1].time_range.end))
    ok = kernels[:norms[0]] + kernels[norms[layers * per_layer]:per_step]
    print_medians(f"outside the layers, median share over {steps} steps", ok, [outside(s) for s in range(steps)])


def shares_after(ks, previous):
    """Each kernel's end minus the end of the one before it (`previous` for the first)."""
    shares = []
    for k in ks:
        shares.append(k.time_range.end - previous)
        previous = k.time_range.end
    return shares


def print_medians(title, ks, runs):
    """Per kernel of ks, the median of its shares over `runs` (lists of shares in ks' order)."""
    shares = [sorted(v) for v in zip(*runs)]
    medians = [statistics.median(v) for v in shares]
    print(f"{title} (sum {sum(medians):.1f} us):")
    for k, m, v in zip(ks, medians, shares):
        print(f"{k.name[:60]:60s} +{m:6.2f}  (middle half {v[len(v) // 4]:.2f}-{v[3 * len(v) // 4]:.2f})")

if __name__ == "__main__":
    main()
