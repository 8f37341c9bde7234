"""Trains a soft prompt in front of a frozen gpt-oss whose MoE layers stay MXFP4 (moekit).

transformers' GptOssForCausalLM with moekit's MoE (moekit.transformers_gpt_oss) is loaded and
frozen; a few learned input embeddings (the soft prompt) go in front of each sentence, and the
loss is the next-token cross entropy of the sentences. The gradient reaches the prompt through
every layer, the MoE layers included (moekit.moe_mlp's backward; the experts take none). After
training, the model completes the first sentence from its first tokens behind the prompt.

    python examples/train_soft_prompt.py [--checkpoint DIR] [--steps N] [--lr LR]
    torchrun --nproc-per-node 2 examples/train_soft_prompt.py ...

Under torchrun the prompt is a DistributedDataParallel parameter (gloo on the CPU, NCCL on
GPUs, each rank's model on its own device without torch.cuda.set_device) and rank r trains on
sentences r, r + world, ...: the ranks' mean gradient is the whole batch's. Prints the first
and the last loss; --output-json writes them with the trained prompt.
"""

import argparse
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A journey of a thousand miles begins with a single step.",
    "All that glitters is not gold.",
    "The early bird catches the worm.",
]
SHIPPED = Path(__file__).resolve().parents[1] / "python" / "moekit" / "models" / "tiny_gpt_oss"


class SoftPrompt(torch.nn.Module):
    """`length` learned embeddings in front of a frozen causal LM's input embeddings."""

    def __init__(self, model, length: int, generator: torch.Generator):
        super().__init__()
        hidden = model.config.hidden_size
        init = torch.randn(length, hidden, generator=generator) * model.get_input_embeddings().weight.std().item()
        self.prompt = torch.nn.Parameter(init.to(model.device))
        self.model = [model]  # not a submodule: DDP syncs the prompt alone

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits of each position of `ids` [B, L] behind the prompt."""
        model = self.model[0]
        embeds = model.get_input_embeddings()(ids)
        prompt = self.prompt.expand(ids.shape[0], -1, -1)
        logits = model(inputs_embeds=torch.cat([prompt, embeds], dim=1)).logits
        return logits[:, self.prompt.shape[0]:]


def sentence_loss(module, batch) -> torch.Tensor:
    """The mean over sentences of each one's mean next-token cross entropy, in one forward: the
    sentences padded on the right (causal attention: a position never sees the padding after it)
    and the padding left out of the loss."""
    length = max(len(ids) for ids in batch)
    ids = torch.zeros(len(batch), length, dtype=torch.long, device=batch[0].device)
    targets = torch.full_like(ids, -100)
    for i, sentence in enumerate(batch):
        ids[i, :len(sentence)] = sentence
        targets[i, :len(sentence) - 1] = sentence[1:]
    logits = module(ids[:, :-1])
    per_token = F.cross_entropy(logits.float().transpose(1, 2), targets[:, :-1], reduction="none")
    counts = (targets[:, :-1] != -100).sum(dim=1)
    return (per_token.sum(dim=1) / counts).mean()


@torch.no_grad()
def complete(module, ids: torch.Tensor, new_tokens: int) -> list:
    for _ in range(new_tokens):
        ids = torch.cat([ids, module(ids[None])[0, -1].argmax()[None]])
    return ids.tolist()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, default=SHIPPED, help="gpt-oss repository root or original/ folder")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--prompt-tokens", type=int, default=8)
    p.add_argument("--sentences", type=int, default=len(SENTENCES), help="the first N of the built-in sentences")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output-json", type=Path, default=None)
    args = p.parse_args()

    from tokenizers import Tokenizer

    from moekit.models import find_tokenizer
    from moekit.transformers_gpt_oss import from_pretrained

    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local) if args.device == "cuda" else torch.device("cpu")
    if world > 1:
        if device.type == "cuda":
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
    try:
        tokenizer = Tokenizer.from_file(str(find_tokenizer(args.checkpoint)))
        model = from_pretrained(args.checkpoint, device=device, dtype=torch.float32)
        model.requires_grad_(False)
        sentences = [torch.tensor(tokenizer.encode(s).ids, device=device) for s in SENTENCES[:args.sentences]]
        module = SoftPrompt(model, args.prompt_tokens, torch.Generator().manual_seed(args.seed))
        trained = module
        if world > 1:
            trained = torch.nn.parallel.DistributedDataParallel(
                module, device_ids=[device] if device.type == "cuda" else None)
        mine = sentences[rank::world]
        optimizer = torch.optim.SGD(module.parameters(), lr=args.lr, momentum=0.9)
        losses = []
        for _ in range(args.steps):
            loss = sentence_loss(trained, mine)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        first = sentences[0][:3]
        text = tokenizer.decode(complete(module, first, len(sentences[0]) - 3))
        if rank == 0:
            whose = "" if world == 1 else " (rank 0's sentences)"
            trend = f"loss{whose} {losses[0]:.4f} -> {losses[-1]:.4f}" if losses else "the prompt as initialised"
            print(f"{world} rank(s) on {device}, {args.steps} steps: {trend}")
            print(f"completion of {tokenizer.decode(first.tolist())!r}: {text!r}")
            if args.output_json is not None:
                args.output_json.write_text(json.dumps({"losses": losses, "completion": text,
                                                        "prompt": module.prompt.detach().cpu().tolist()}))
        return 0
    finally:
        if world > 1:
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
