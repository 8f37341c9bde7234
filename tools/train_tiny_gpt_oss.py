#!/usr/bin/env python3
"""Trains the tiny gpt-oss-family model that moekit ships (docs/tiny_model.md).

    python3 tools/train_tiny_gpt_oss.py                 # GPU, 300 s of training
    python3 tools/train_tiny_gpt_oss.py --steps 2000    # a fixed step count
    .venv/bin/python tools/train_tiny_gpt_oss.py --smoke                  # CPU smoke test, seconds

Input: the token stream and tokenizer of tools/train_tokenizer.py (build/tiny_data/tokens.npy and
tokenizer.json; ~16 MB, carried to the GPU machine). The model is
:class:`moekit.models.ReferenceGptOss`: its parameters are the ones trained and saved. Training
runs them through a batched forward written here (:func:`forward_batch`) that computes exactly
the reference's function ([B, T] at once, the MoE as two dense matmuls masked by the router's
top-k weights instead of gathering each token's experts); at start it is checked against
``ReferenceGptOss.forward`` on the training device in float32. bf16 autocast on CUDA, AdamW,
linear warm-up then cosine decay over the time budget (or step count), a Switch-style
load-balancing loss on every router, and for the last ``--qat-frac`` of training the experts are
fake-quantized to MXFP4 (straight-through) exactly as :func:`moekit.quantize_mxfp4` will
quantize them at save time. Validation loss (with MXFP4 experts) is measured on a held-out 2.5% of
the corpus; the best weights are kept and saved with
:func:`moekit.models.save_checkpoint` (MoE weights MXFP4, the rest bf16, tokenizer.json copied)
to ``--out`` and every ``--also-save`` directory. Finally the checkpoint is reloaded with
``ReferenceGptOss.from_checkpoint`` and its validation loss and greedy continuations of a few
English prompts are printed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

try:
    import moekit  # noqa: F401  (save_checkpoint quantizes with moekit's op library: fail now, not after training)
    from moekit.models import GptOssConfig, ReferenceGptOss, checkpoint_tensors, float_tensor_shapes, save_checkpoint
    from moekit.models.gpt_oss_reference import ALPHA, apply_rope, decode_mxfp4, rope_tables
except ImportError as e:
    sys.exit(f"train_tiny_gpt_oss: cannot import moekit ({e}); install it first (make install, or "
             f"tools/gpu_build.sh on the GPU machine)")

EOT = "<|endoftext|>"

# The shipped model (vocab_size comes from the tokenizer). docs/tiny_model.md explains the choice.
MODEL = dict(num_hidden_layers=6, num_experts=16, experts_per_token=4, hidden_size=320,
             intermediate_size=128, head_dim=64, num_attention_heads=4, num_key_value_heads=2,
             swiglu_limit=7.0, sliding_window=128, initial_context_length=4096, rope_theta=150000.0,
             rope_scaling_factor=32.0, rope_ntk_alpha=1.0, rope_ntk_beta=32.0)
# --smoke: the same family, small enough for a CPU (window < seq_len so both layer kinds are exercised)
SMOKE_MODEL = dict(MODEL, num_hidden_layers=2, num_experts=8, experts_per_token=2, hidden_size=64,
                   intermediate_size=64, head_dim=32, num_attention_heads=2, num_key_value_heads=1,
                   sliding_window=16)

PROMPTS = ["The meaning of life is", "In the beginning", "A computer is a machine that",
           "The old man walked into the city and", "hacker (noun):", "Love is"]


# ----------------------------------------------------------------------------------- MXFP4

def fake_mxfp4(w: torch.Tensor) -> torch.Tensor:
    """``w`` (float, last dim a multiple of 32) rounded to MXFP4 and back, by moekit's rule
    (docs/mxfp4.md): per block of 32 the smallest power of two 2^e with amax <= 6*2^e, elements
    rounded to the nearest e2m1 value, ties to the even mantissa. Checked against
    moekit.quantize_mxfp4 at start-up and against the saved checkpoint at the end."""
    shape = w.shape
    x = w.float().reshape(*shape[:-1], shape[-1] // 32, 32)
    amax = x.abs().amax(-1, keepdim=True)
    e = torch.ceil(torch.log2(amax.clamp_min(1e-38) / 6.0))
    e = e + (amax > 6.0 * torch.exp2(e)).float() - (amax <= 6.0 * torch.exp2(e - 1)).float()  # log2 rounding
    e = e.clamp(-127.0, 127.0)
    scale = torch.exp2(e)
    y = (x / scale).abs()
    q = torch.where(y < 2.0, torch.round(y * 2.0) / 2.0,
                    torch.where(y < 4.0, torch.round(y), 2.0 * torch.round(y / 2.0))).clamp(max=6.0)
    return (torch.sign(x) * q * scale).reshape(shape).to(w.dtype)


def ste_mxfp4(w: torch.Tensor) -> torch.Tensor:
    """Forward: MXFP4-rounded ``w``; backward: identity (straight-through)."""
    return w + (fake_mxfp4(w.detach()) - w).detach()


def check_fake_mxfp4() -> float:
    """Max |fake_mxfp4 - decode(moekit.quantize_mxfp4)| on awkward random data (must be 0)."""
    g = torch.Generator().manual_seed(1)
    w = torch.randn(64, 256, generator=g) * torch.exp2(torch.randint(-20, 8, (64, 1), generator=g).float())
    w[0, :32] = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0] * 4)   # ties, exact max
    w[1, :32] = 0.0
    w[2, :32] = torch.tensor([3.0] * 31 + [-12.0])
    blocks, scales = moekit.quantize_mxfp4(w)
    return float((fake_mxfp4(w) - decode_mxfp4(blocks, scales)).abs().max())


# ------------------------------------------------------------------------- batched forward

def _attention(a, x, cos, sin, visible, dropout, training):
    """ReferenceGptOss Attention on x [B, T, H] (sinks, GQA, YaRN rope, causal / sliding window)."""
    c = a.config
    B, T, _ = x.shape
    nq, nkv, d = c.num_attention_heads, c.num_key_value_heads, c.head_dim
    q, k, v = a.qkv(a.norm(x)).split([nq * d, nkv * d, nkv * d], dim=-1)
    q = apply_rope(q.reshape(B, T, nq, d), cos, sin)
    k = apply_rope(k.reshape(B, T, nkv, d), cos, sin).repeat_interleave(nq // nkv, dim=2)
    v = v.reshape(B, T, nkv, d).repeat_interleave(nq // nkv, dim=2)
    scores = torch.einsum("bihd,bjhd->bhij", q, k).float() / math.sqrt(d)
    scores = scores.masked_fill(~visible, float("-inf"))
    sink = a.sinks.float()[None, :, None, None].expand(B, nq, T, 1)
    probs = torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :T]
    o = torch.einsum("bhij,bjhd->bihd", probs.to(v.dtype), v).reshape(B, T, nq * d)
    return x + F.dropout(a.out(o), dropout, training)


def _moe(m, x, qat, dropout, training):
    """ReferenceGptOss MoE on x [B, T, H]: float32 router, top-k (ties to the lower index),
    softmax over the chosen logits, SwiGLU experts (clamped, alpha 1.702, linear + 1). Every
    expert runs on every token; the combine weights are zero for the experts not chosen, so the
    function and its gradients are the reference's. Returns (x + y, aux loss, expert load [E])."""
    c = m.config
    B, T, H = x.shape
    E, I, k = c.num_experts, c.intermediate_size, c.experts_per_token
    h = m.norm(x).reshape(B * T, H)
    with torch.autocast(x.device.type, enabled=False):
        logits = F.linear(h.float(), m.gate.weight.float(), m.gate.bias.float())          # [N, E]
    chosen = torch.sort(logits, dim=-1, descending=True, stable=True).indices[:, :k]
    comb = torch.zeros_like(logits).scatter(1, chosen, torch.softmax(logits.gather(1, chosen), dim=-1))
    w1 = ste_mxfp4(m.mlp1_weight) if qat else m.mlp1_weight                                 # [E, 2I, H]
    w2 = ste_mxfp4(m.mlp2_weight) if qat else m.mlp2_weight                                 # [E, H, I]
    u = F.linear(h, w1.reshape(E * 2 * I, H)).reshape(-1, E, 2 * I)      # bf16 under autocast
    u = u + m.mlp1_bias.to(u.dtype)
    glu = u[..., 0::2].clamp(max=c.swiglu_limit)
    lin = u[..., 1::2].clamp(min=-c.swiglu_limit, max=c.swiglu_limit)
    act = glu * torch.sigmoid(ALPHA * glu) * (lin + 1)                                        # [N, E, I]
    act = (act * comb[..., None].to(act.dtype)).reshape(-1, E * I)
    y = F.linear(act, w2.permute(1, 0, 2).reshape(H, E * I)) + comb.to(act.dtype) @ m.mlp2_bias.to(act.dtype)
    # Switch Transformer balance loss: E * sum_e (share of assignments to e) * (mean router prob of e)
    load = torch.zeros_like(logits).scatter(1, chosen, 1.0).mean(0) / k
    aux = E * (load * torch.softmax(logits, dim=-1).mean(0)).sum()
    return x + F.dropout(y.reshape(B, T, H).to(x.dtype), dropout, training), aux, load.detach()


def forward_batch(model, tokens, *, qat=False, dropout=0.0, training=False):
    """Logits [B, T, V] (float32) of tokens [B, T] (each row a sequence from position 0), the
    mean balance loss and the expert loads [L, E]."""
    c = model.config
    T = tokens.shape[1]
    cos, sin = rope_tables(c, T, tokens.device)
    i = torch.arange(T, device=tokens.device)
    causal = i[None, :] <= i[:, None]
    windowed = causal & (i[:, None] - i[None, :] < c.sliding_window)
    x = model.embedding(tokens)
    auxes, loads = [], []
    for blk in model.block:
        visible = windowed if blk.attn.window > 0 else causal
        x = _attention(blk.attn, x, cos, sin, visible, dropout, training)
        x, aux, load = _moe(blk.mlp, x, qat, dropout, training)
        auxes.append(aux)
        loads.append(load)
    logits = model.unembedding(model.norm(x)).float()
    return logits, torch.stack(auxes).mean(), torch.stack(loads)


def loss_fn(model, batch, qat, dropout, training, aux_coef):
    logits, aux, load = forward_batch(model, batch[:, :-1], qat=qat, dropout=dropout, training=training)
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
    return ce + aux_coef * aux, ce, aux, load


@torch.no_grad()
def check_forward(model, device, T) -> float:
    """Relative max difference between forward_batch and ReferenceGptOss.forward (float32)."""
    g = torch.Generator().manual_seed(0)
    toks = torch.randint(0, model.config.vocab_size, (2, T), generator=g).to(device)
    ours = forward_batch(model, toks)[0]
    ref = torch.stack([model(t) for t in toks])
    return float((ours - ref).abs().max() / ref.abs().max())


# ------------------------------------------------------------------------------------ data

class Data:
    """The token stream split into 16K-token chunks: every 40th chunk (2.5%, spread over all
    sources) held out for validation."""

    CHUNK, EVERY = 16384, 40

    def __init__(self, path: Path, device, seed: int):
        tokens = np.load(path, mmap_mode="r")
        n = len(tokens) // self.CHUNK
        val_idx = set(range(self.EVERY // 2, n, self.EVERY))
        train = [tokens[i * self.CHUNK:(i + 1) * self.CHUNK] for i in range(n) if i not in val_idx]
        train.append(tokens[n * self.CHUNK:])
        val = [tokens[i * self.CHUNK:(i + 1) * self.CHUNK] for i in sorted(val_idx)]
        self.train = torch.from_numpy(np.concatenate(train).astype(np.int64)).to(device)
        self.val = torch.from_numpy(np.concatenate(val).astype(np.int64)).to(device) if val else self.train[-self.CHUNK:]
        self.device = device
        self.gen = torch.Generator(device=device).manual_seed(seed)

    def batch(self, B: int, T: int) -> torch.Tensor:
        starts = torch.randint(0, len(self.train) - T - 1, (B,), device=self.device, generator=self.gen)
        return self.train[starts[:, None] + torch.arange(T + 1, device=self.device)]

    def val_batches(self, B: int, T: int, max_tokens: int):
        n = min(len(self.val) // (T + 1), max(1, max_tokens // T))
        windows = self.val[: n * (T + 1)].reshape(n, T + 1)
        return [windows[i:i + B] for i in range(0, n, B)]


# ------------------------------------------------------------------------------- utilities

def init_weights(model: ReferenceGptOss, seed: int) -> None:
    """GPT-2-style start: normal(0, 0.02) everywhere (the router too), the projections into the
    residual stream (attn.out, mlp2) scaled by 1/sqrt(2L); zero biases and sinks, unit norms."""
    g = torch.Generator().manual_seed(seed)
    model.reset_parameters(generator=g, std=0.02)
    scale = 1.0 / math.sqrt(2 * model.config.num_hidden_layers)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("mlp1_weight"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
            elif name.endswith(("mlp2_weight", "attn.out.weight")):
                p.copy_(torch.randn(p.shape, generator=g) * 0.02 * scale)


def checkpoint_bytes(config: GptOssConfig) -> int:
    return sum(math.prod(s.shape) * (2 if s.dtype == "BF16" else 1) for s in checkpoint_tensors(config).values())


def param_counts(config: GptOssConfig):
    """(total, active per token, of which MoE experts) parameters."""
    c = config
    total = sum(math.prod(s) for s in float_tensor_shapes(c).values())
    experts = c.num_hidden_layers * c.num_experts * 3 * c.intermediate_size * c.hidden_size
    active = total - experts * (1 - c.experts_per_token / c.num_experts)
    return total, int(active), experts


def flops_per_token(model, T: int, device) -> float:
    """Training FLOPs per token of this implementation (forward + backward), counted on a 1 x T batch."""
    from torch.utils.flop_counter import FlopCounterMode
    batch = torch.zeros(1, T + 1, dtype=torch.int64, device=device)
    with FlopCounterMode(display=False) as fc:
        loss_fn(model, batch, False, 0.0, True, 0.01)[0].backward()
    model.zero_grad(set_to_none=True)
    return fc.get_total_flops() / T


def greedy(model, tok, prompt: str, n: int, device) -> str:
    ids = tok.encode(prompt).ids
    with torch.no_grad():
        for _ in range(n):
            nxt = int(model(torch.tensor(ids, device=device)).float()[-1].argmax())
            ids.append(nxt)
            if nxt == tok.token_to_id(EOT):
                break
    return tok.decode(ids[len(tok.encode(prompt).ids):])


@torch.no_grad()
def evaluate(model, data, B, T, max_tokens, autocast, qat=True) -> float:
    was = model.training
    model.eval()
    tot, n = 0.0, 0
    for vb in data.val_batches(B, T, max_tokens):
        with autocast():
            logits = forward_batch(model, vb[:, :-1], qat=qat)[0]
        tot += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), vb[:, 1:].reshape(-1),
                                     reduction="sum"))
        n += vb[:, 1:].numel()
    model.train(was)
    return tot / max(n, 1)


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file())


# ------------------------------------------------------------------------------------ main

def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=Path, default=Path("build/tiny_data/tokens.npy"))
    ap.add_argument("--tokenizer", type=Path, help="tokenizer.json (default: beside --tokens)")
    ap.add_argument("--out", type=Path, help="checkpoint directory (default python/moekit/models/tiny_gpt_oss, "
                                             "with --smoke build/tiny_gpt_oss_smoke)")
    ap.add_argument("--also-save", type=Path, action="append", default=[], help="more directories to save to")
    ap.add_argument("--summary", type=Path, help="write a JSON summary of the run here")
    ap.add_argument("--time-budget", type=float, default=300.0, help="seconds of training steps (evals, "
                    "compilation and saving not counted); the LR schedule spans it")
    ap.add_argument("--steps", type=int, help="train this many steps instead of a time budget")
    ap.add_argument("--max-tokens", type=float, default=100e6, help="stop after this many training tokens "
                    "(~12.8 epochs of the corpus) if the time budget lasts longer; 0: no cap")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--min-lr-frac", type=float, default=0.1)
    ap.add_argument("--warmup-steps", type=int, default=200)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--grad-clip", type=float, default=1.0)
    ap.add_argument("--aux-coef", type=float, default=0.01, help="load-balancing loss weight")
    ap.add_argument("--dropout", type=float, default=0.1, help="on the attention and MoE outputs "
                    "(the corpus is small: training sees it ~13 times)")
    ap.add_argument("--qat-frac", type=float, default=0.2, help="last fraction of training with MXFP4 experts")
    ap.add_argument("--eval-every", type=float, default=30.0, help="seconds of training between evaluations "
                    "(with --steps: steps)")
    ap.add_argument("--eval-tokens", type=int, default=262144)
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--gen-tokens", type=int, default=40)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--compile", choices=["auto", "on", "off"], default="auto", help="torch.compile (auto: on CUDA)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a model config field")
    ap.add_argument("--smoke", action="store_true", help="tiny model on the CPU for a few steps (a test)")
    args = ap.parse_args(argv)
    if args.smoke:
        for name, value in dict(steps=20, batch_size=4, seq_len=64, warmup_steps=5, eval_every=10, log_every=5,
                                eval_tokens=2048, gen_tokens=12, qat_frac=0.25).items():
            if getattr(args, name) == ap.get_default(name):
                setattr(args, name, value)
        if args.device == "auto":
            args.device = "cpu"
    if args.out is None:
        args.out = Path("build/tiny_gpt_oss_smoke" if args.smoke else "python/moekit/models/tiny_gpt_oss")
    if args.tokenizer is None:
        args.tokenizer = args.tokens.with_name("tokenizer.json")
    return args


def smoke_data(out: Path) -> Path:
    """For --smoke without the corpus of tools/train_tokenizer.py: the repository's Markdown,
    tokenized with the shipped model's tokenizer, as tokens.npy (+ tokenizer.json) under ``out``."""
    from tokenizers import Tokenizer

    root = Path(__file__).resolve().parents[1]
    shipped = root / "python" / "moekit" / "models" / "tiny_gpt_oss" / "tokenizer.json"
    text = "\n\n".join(p.read_text() for p in sorted(root.glob("**/*.md")) if ".venv" not in p.parts
                       and "build" not in p.parts)
    ids = Tokenizer.from_file(str(shipped)).encode(text).ids
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "tokens.npy", np.array(ids * max(1, 200_000 // len(ids)), dtype=np.uint16))
    shutil.copy(shipped, out / "tokenizer.json")
    return out / "tokens.npy"


def main(argv=None) -> None:
    args = parse_args(argv)
    from tokenizers import Tokenizer

    if args.smoke and not args.tokens.is_file():
        args.tokens = smoke_data(Path("build/tiny_gpt_oss_smoke_data"))
        args.tokenizer = args.tokens.with_name("tokenizer.json")
        print(f"--smoke: {args.tokens.parent} holds the repository's Markdown as tokens (no corpus found)")
    for p in (args.tokens, args.tokenizer):
        if not p.is_file():
            sys.exit(f"train_tiny_gpt_oss: {p} not found (tools/train_tokenizer.py writes it)")
    tok = Tokenizer.from_file(str(args.tokenizer))
    device = torch.device("cuda:0" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.set_device(device)
    torch.manual_seed(args.seed)

    fields = dict(SMOKE_MODEL if args.smoke else MODEL, vocab_size=tok.get_vocab_size())
    for kv in args.set:
        key, _, value = kv.partition("=")
        if key not in fields:
            sys.exit(f"train_tiny_gpt_oss: --set {kv}: unknown config key (known: {sorted(fields)})")
        fields[key] = type(fields[key])(float(value) if isinstance(fields[key], float) else int(value))
    config = GptOssConfig(**fields)
    total, active, experts = param_counts(config)
    ckpt_mb = checkpoint_bytes(config) / 1e6
    print(f"device {device} ({torch.cuda.get_device_name(device) if cuda else 'cpu'}), torch {torch.__version__}")
    print(f"config {json.dumps(config.to_dict())}")
    print(f"params: {total / 1e6:.2f} M total, {active / 1e6:.2f} M active per token, {experts / 1e6:.2f} M in experts; "
          f"checkpoint {ckpt_mb:.2f} MB (experts MXFP4, rest bf16)")

    model = ReferenceGptOss(config, dtype=torch.float32, device="cpu")
    init_weights(model, args.seed)
    model.to(device)

    # the batched training forward computes the reference's function; the fake MXFP4 is moekit's
    T_check = min(args.seq_len, config.sliding_window + 32)
    rel = check_forward(model, device, T_check)
    fq = check_fake_mxfp4()
    print(f"check: forward_batch vs ReferenceGptOss.forward (float32, T={T_check}): rel max diff {rel:.2e}; "
          f"fake MXFP4 vs moekit.quantize_mxfp4: max diff {fq:.1e}")
    if not rel < 1e-2 or fq != 0.0:
        sys.exit("train_tiny_gpt_oss: the training forward or the fake quantization disagrees with the reference")
    if not rel < 1e-4:  # float32 rounding alone gives ~1e-6; a near-tie in a router can flip one token's expert
        print("warning: forward_batch and ReferenceGptOss.forward differ more than rounding explains")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    data = Data(args.tokens, device, args.seed)
    B, T = args.batch_size, args.seq_len
    print(f"data: {len(data.train) / 1e6:.2f} M training tokens, {len(data.val) / 1e6:.3f} M validation tokens; "
          f"batch {B} x {T} = {B * T} tokens/step")
    fpt = flops_per_token(model, T, device)
    print(f"training FLOPs/token (forward+backward, counted): {fpt / 1e6:.1f} M")

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.95),
                            eps=1e-8, **({"fused": True} if cuda else {}))
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else contextlib.nullcontext
    use_compile = args.compile == "on" or (args.compile == "auto" and cuda)
    step_fn = torch.compile(loss_fn) if use_compile else loss_fn

    def lr_at(step: int, progress: float) -> float:
        if step < args.warmup_steps:
            return args.lr * (step + 1) / args.warmup_steps
        return args.lr * (args.min_lr_frac + (1 - args.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))

    # warm-up (compilation) outside the clock: one forward/backward per QAT mode, no update
    t0 = time.time()
    for attempt in ("compiled", "eager") if use_compile else ("eager",):
        try:
            for qat in (False, True):
                with autocast():
                    loss = step_fn(model, data.batch(B, T), qat, args.dropout, True, args.aux_coef)[0]
                loss.backward()
                opt.zero_grad(set_to_none=True)
            break
        except Exception as e:  # a compiler problem must not cost the run: fall back to eager
            if attempt == "eager":
                raise
            print(f"torch.compile failed ({type(e).__name__}: {str(e)[:300]}); training eagerly")
            opt.zero_grad(set_to_none=True)
            step_fn, use_compile = loss_fn, False
    if cuda:
        torch.cuda.synchronize()
    print(f"warm-up{' (torch.compile)' if use_compile else ''}: {time.time() - t0:.1f} s")

    model.train()
    step, train_time, tokens_seen = 0, 0.0, 0
    best = (float("inf"), None, -1)
    history = []
    next_eval = args.eval_every
    last_log_t, last_log_tokens = 0.0, 0

    def progress() -> float:
        if args.steps:
            return step / args.steps
        return max(train_time / args.time_budget, tokens_seen / args.max_tokens if args.max_tokens else 0.0)

    def run_eval(tag=""):
        nonlocal best
        vl = evaluate(model, data, B, T, args.eval_tokens, autocast, qat=True)
        history.append({"step": step, "train_s": round(train_time, 1), "tokens": tokens_seen, "val_loss": vl})
        marker = ""
        if vl < best[0]:
            best = (vl, {k: v.detach().clone() for k, v in model.state_dict().items()}, step)
            marker = " (best)"
        print(f"eval step {step:6d}  tokens {tokens_seen / 1e6:8.2f} M  val loss (MXFP4 experts) {vl:.4f}  "
              f"ppl {math.exp(vl):8.2f}{marker}{tag}", flush=True)

    while progress() < 1.0:
        qat = progress() >= 1.0 - args.qat_frac
        lr = lr_at(step, progress())
        for group in opt.param_groups:
            group["lr"] = lr
        t_start = time.time()
        batch = data.batch(B, T)
        with autocast():
            loss, ce, aux, load = step_fn(model, batch, qat, args.dropout, True, args.aux_coef)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        tokens_seen += B * T
        if step % args.log_every == 0 or step == 1:
            ce_v, aux_v, g_v = float(ce.detach()), float(aux.detach()), float(gnorm)   # synchronizes
            train_time += time.time() - t_start
            dt = train_time - last_log_t
            tps = (tokens_seen - last_log_tokens) / dt if dt > 0 else 0.0
            last_log_t, last_log_tokens = train_time, tokens_seen
            lo, hi = float(load.min()), float(load.max())
            print(f"step {step:6d}  loss {ce_v:.4f}  aux {aux_v:.3f}  gnorm {g_v:5.2f}  lr {lr:.2e}  "
                  f"tokens {tokens_seen / 1e6:8.2f} M  {tps / 1e3:8.1f} K tok/s  train {train_time:6.1f} s  "
                  f"expert load min/max {lo * config.num_experts:.2f}/{hi * config.num_experts:.2f}"
                  f"{'  qat' if qat else ''}", flush=True)
        else:
            train_time += time.time() - t_start
        if (step if args.steps else train_time) >= next_eval:
            next_eval += args.eval_every
            run_eval()
    if cuda:
        torch.cuda.synchronize()
    run_eval(" (final)")
    print(f"trained {step} steps, {tokens_seen / 1e6:.1f} M tokens ({tokens_seen / len(data.train):.1f} epochs) in "
          f"{train_time:.1f} s of training: {tokens_seen / max(train_time, 1e-9) / 1e3:.1f} K tok/s, "
          f"{fpt * tokens_seen / max(train_time, 1e-9) / 1e12:.1f} TFLOP/s")

    # save the best weights (by validation loss with MXFP4 experts)
    best_loss, best_state, best_step = best
    model.load_state_dict(best_state)
    model.eval()
    state = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    outs = [args.out] + [p for p in args.also_save if p.resolve() != args.out.resolve()]
    for out in outs:
        save_checkpoint(out, config, state, args.tokenizer)
        print(f"saved step {best_step} (val loss {best_loss:.4f}) to {out}: {dir_bytes(out) / 1e6:.2f} MB "
              f"(model.safetensors {(out / 'model.safetensors').stat().st_size / 1e6:.2f} MB)")

    # reload what ships and judge it
    shipped = ReferenceGptOss.from_checkpoint(args.out, device=device)
    ref_state = shipped.state_dict()
    q_err = max(float((fake_mxfp4(state[n]) - ref_state[n].cpu()).abs().max())
                for n in state if n.endswith(("mlp1_weight", "mlp2_weight")))
    val_float = evaluate(model, data, B, T, args.eval_tokens, autocast, qat=False)
    val_ckpt = evaluate(shipped, data, B, T, args.eval_tokens, autocast, qat=False)
    print(f"reloaded {args.out} with ReferenceGptOss.from_checkpoint: experts equal the QAT rounding "
          f"(max diff {q_err:.1e}); val loss float {val_float:.4f}, checkpoint (MXFP4 experts, bf16 rest) "
          f"{val_ckpt:.4f} (ppl {math.exp(val_ckpt):.2f})")
    samples = []
    for prompt in PROMPTS:
        text = greedy(shipped, tok, prompt, args.gen_tokens, device)
        float_text = greedy(model, tok, prompt, args.gen_tokens, device)
        samples.append({"prompt": prompt, "checkpoint": text, "float": float_text})
        print(f"--- {prompt!r}\n  checkpoint: {prompt}{text}\n  float:      {prompt}{float_text}")
    if args.summary:
        args.summary.parent.mkdir(parents=True, exist_ok=True)
        args.summary.write_text(json.dumps({
            "config": config.to_dict(), "params_total": total, "params_active": active,
            "checkpoint_bytes": dir_bytes(args.out), "steps": step, "tokens": tokens_seen,
            "train_seconds": train_time, "flops_per_token": fpt, "best_step": best_step,
            "val_loss_best_mxfp4": best_loss, "val_loss_float": val_float, "val_loss_checkpoint": val_ckpt,
            "history": history, "samples": samples, "args": {k: str(v) for k, v in vars(args).items()},
        }, indent=2) + "\n")


if __name__ == "__main__":
    main()
