"""One layer of the graph decode step as it replays: per kernel, its start and end (us after the
layer's first kernel starts) and its end minus the previous kernel's end, which with chained
kernels is its share of the critical path. 20b random model made on the GPU, ~140 keys cached.

    python3 bench/step_timeline.py [--layer 12]
"""

import argparse

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
    per_step = len(kernels) // steps
    step = kernels[2 * per_step:3 * per_step]
    print(f"{per_step} kernels a step; step spans (us): " + ", ".join(
        f"{kernels[(s + 1) * per_step - 1].time_range.end - kernels[s * per_step].time_range.start:.1f}"
        for s in range(steps)))
    # A layer starts at its add_rms_norm before attention: the first of every norms_per_layer.
    norms = [i for i, k in enumerate(step) if "add_rms_norm" in k.name]
    per_layer = (len(norms) - 1) // config.num_hidden_layers  # the final norm besides
    first, end = norms[args.layer * per_layer], norms[(args.layer + 1) * per_layer]
    t0, previous = step[first].time_range.start, step[first - 1].time_range.end
    for k in step[first:end]:
        r = k.time_range
        print(f"{k.name[:60]:60s} start {r.start - t0:7.2f} end {r.end - t0:7.2f}  +{r.end - previous:6.2f}  "
              f"dur {r.end - r.start:6.2f}")
        previous = r.end


if __name__ == "__main__":
    main()
