"""moekit's gpt-oss (python/moekit/models) on tiny random checkpoints, on the CPU.

The oracle is ReferenceGptOss, a plain-PyTorch model of the same architecture, run on the same
checkpoint with its MXFP4 experts decoded to float32 (by its own decoder, not moekit's).
"""

import json
import shutil
import zlib

import pytest
import torch
from safetensors.torch import load_file, save_file

from gpt_oss_fixtures import checkpoint_fixture, make_checkpoint, safetensors_header, tiny_config
from moekit.models import (CheckpointError, CheckpointNotFoundError, GptOssConfig, KVCache, ReferenceGptOss,
                           load_model, sample_next, save_checkpoint)

# float32 model vs float32 reference on identical (dequantized) weights: the only differences
# are summation orders (fp32, ~1e-7 per operation) compounded over 4 layers, ~1e-6 measured;
# 1e-4 leaves 100x and is still far below any real bug (a wrong mask, rope or routing is >1e-2).
F32_TOL = 1e-4


def rel_err(got, want):
    return ((got.double() - want.double()).norm() / want.double().norm()).item()


def seed_of(request):
    return zlib.crc32(request.node.nodeid.encode())


def rand_tokens(gen, n, vocab=97):
    return torch.randint(0, vocab, (n,), generator=gen)


@pytest.fixture
def gen(request):
    return torch.Generator().manual_seed(seed_of(request))


# 4 layers: sliding window (8) on layers 0 and 2, full attention on 1 and 3.
ckpt4 = checkpoint_fixture("ckpt4", seed=4, num_hidden_layers=4)
ckpt2 = checkpoint_fixture("ckpt2", seed=2)


@pytest.fixture(scope="module")
def models4(ckpt4):
    return load_model(ckpt4, "cpu", dtype=torch.float32, progress=False), ReferenceGptOss.from_checkpoint(ckpt4)


# ------------------------------------------------------------------------------ vs reference

def test_greedy_32_tokens_and_logits_match_reference(models4, gen):
    model, ref = models4
    prompt = rand_tokens(gen, 5).tolist()
    got = model.generate(prompt, 32)
    assert model.generate(prompt, 32, prefill_chunk=2) == got
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(32):
            seq.append(int(ref(torch.tensor(seq))[-1].argmax()))
    assert got == seq[len(prompt):]
    assert len(set(got)) > 3, "degenerate test model: greedy output barely varies"
    full = torch.tensor(seq)
    with torch.no_grad():
        want = ref(full)
    err = rel_err(model(full), want)
    assert err < F32_TOL, err


def test_bfloat16_model_within_bf16_rounding_of_reference(ckpt2, gen):
    """bf16 activations round at every op (2^-9 relative); we allow twice the error that the
    reference itself makes when run in bf16, i.e. moekit adds no error beyond bf16 rounding."""
    tokens = rand_tokens(gen, 40)
    with torch.no_grad():
        want = ReferenceGptOss.from_checkpoint(ckpt2)(tokens)
        ref_bf16_err = rel_err(ReferenceGptOss.from_checkpoint(ckpt2, dtype=torch.bfloat16)(tokens), want)
    got = load_model(ckpt2, "cpu", progress=False)(tokens)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    err = rel_err(got, want)
    assert 0 < ref_bf16_err < 0.05
    assert err < 2 * ref_bf16_err + 1e-3, (err, ref_bf16_err)


def test_reference_is_differentiable(ckpt2, gen):
    ref = ReferenceGptOss.from_checkpoint(ckpt2)
    tokens = rand_tokens(gen, 12)
    loss = torch.nn.functional.cross_entropy(ref(tokens[:-1]), tokens[1:])
    loss.backward()
    for name in ("block.0.attn.sinks", "block.0.attn.qkv.weight", "block.1.mlp.gate.weight",
                 "block.1.mlp.mlp1_weight", "block.1.mlp.mlp2_bias", "embedding.weight", "unembedding.weight"):
        grad = ref.get_parameter(name).grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name


def test_save_checkpoint_roundtrip_of_reference_state(tmp_path, gen):
    """The training path: ReferenceGptOss.state_dict() -> save_checkpoint -> both loaders."""
    config = tiny_config(num_hidden_layers=1)
    ref = ReferenceGptOss(config)
    ref.reset_parameters(generator=gen)
    save_checkpoint(tmp_path, config, ref.state_dict())
    assert GptOssConfig.from_json(tmp_path / "config.json") == config
    back = ReferenceGptOss.from_checkpoint(tmp_path)
    for name, t in ref.state_dict().items():
        u = back.state_dict()[name]
        if "mlp1_weight" in name or "mlp2_weight" in name:
            assert rel_err(u, t) < 0.2, name       # MXFP4: ~3 bits of mantissa
        else:
            assert torch.equal(u, t.bfloat16().float()), name
    model = load_model(tmp_path, "cpu", dtype=torch.float32, progress=False)
    tokens = rand_tokens(gen, 10)
    with torch.no_grad():
        assert rel_err(model(tokens), back(tokens)) < F32_TOL


# ------------------------------------------------------------------------------------ cache

@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_kv_cache_decode_equals_full_recompute(ckpt4, gen, dtype, tol):
    """Prefill 6, then a chunk of 3, then one token at a time to 40 (past the window of 8):
    every position's logits equal the full-sequence forward without a cache. float32: only
    matmul shapes differ (~1e-7); bf16: a bf16 rounding of a different-shaped matmul can differ
    by one ulp (2^-8), which stays well below 2e-2 relative."""
    model = load_model(ckpt4, "cpu", dtype=dtype, progress=False)
    tokens = rand_tokens(gen, 40)
    full = model(tokens)
    cache = KVCache(model, 40)
    pieces = [model(tokens[:6], cache), model(tokens[6:9], cache)]
    pieces += [model(tokens[i:i + 1], cache) for i in range(9, 40)]
    assert cache.pos == 40
    stepped = torch.cat(pieces)
    assert rel_err(stepped, full) < tol
    # per position too, so one bad step cannot hide in the whole
    for i in range(40):
        assert rel_err(stepped[i], full[i]) < 3 * tol, i
    with pytest.raises(ValueError, match="KV cache"):
        model(tokens[:1], cache)


# ---------------------------------------------------------------------------- sliding window

def test_sliding_window_changes_results(ckpt4, tmp_path, gen):
    """The same weights with sliding_window 0 (none): identical logits for the first 8
    positions (no key is outside the window yet), different ones after."""
    nowin = tmp_path / "nowin"
    shutil.copytree(ckpt4, nowin)
    cfg = json.loads((nowin / "config.json").read_text())
    assert cfg["sliding_window"] == 8
    cfg["sliding_window"] = 0
    (nowin / "config.json").write_text(json.dumps(cfg))
    tokens = rand_tokens(gen, 40)
    for load in (lambda p: load_model(p, "cpu", dtype=torch.float32, progress=False),
                 lambda p: ReferenceGptOss.from_checkpoint(p)):
        with torch.no_grad():
            windowed, unwindowed = load(ckpt4)(tokens), load(nowin)(tokens)
        assert torch.allclose(windowed[:8], unwindowed[:8], rtol=0, atol=1e-5)
        diff = (windowed[9:] - unwindowed[9:]).abs().amax(dim=-1)
        assert (diff > 1e-2).all(), diff


def test_sliding_window_covers_exactly_the_last_8_keys(tmp_path, gen):
    """One layer (layer 0, windowed): position p sees tokens p-7..p. Changing token p-8 leaves
    p's logits unchanged; changing token p-7 changes them. Checked for moekit (full forward and
    KV-cache decode) and for the reference."""
    make_checkpoint(tmp_path, seed=11, num_hidden_layers=1, tokenizer=False)
    model = load_model(tmp_path, "cpu", dtype=torch.float32, progress=False)
    ref = ReferenceGptOss.from_checkpoint(tmp_path)
    tokens = rand_tokens(gen, 24)
    p = 23

    def decoded(t):
        cache = KVCache(model, len(t))
        model(t[:10], cache)
        return torch.cat([model(t[i:i + 1], cache) for i in range(10, len(t))])[-1]

    for run in (lambda t: model(t)[p], decoded, lambda t: ref(t)[p]):
        with torch.no_grad():
            base = run(tokens)
            outside, inside = tokens.clone(), tokens.clone()
            outside[p - 8] = (tokens[p - 8] + 1) % 97
            inside[p - 7] = (tokens[p - 7] + 1) % 97
            assert torch.allclose(run(outside), base, rtol=0, atol=1e-6)
            assert (run(inside) - base).abs().max() > 1e-3


# ---------------------------------------------------------------------------------- sampling

def test_sampling_reproducible_with_seed(models4, gen):
    model, _ = models4
    prompt = rand_tokens(gen, 4).tolist()
    a = model.generate(prompt, 24, temperature=1.0, top_p=0.9, seed=7)
    b = model.generate(prompt, 24, temperature=1.0, top_p=0.9, seed=7)
    c = model.generate(prompt, 24, temperature=1.0, top_p=0.9, seed=8)
    greedy = model.generate(prompt, 24)
    assert a == b
    assert a != c and a != greedy
    # a nucleus smaller than the top token's probability is greedy decoding
    assert model.generate(prompt, 24, temperature=1.0, top_p=1e-6, seed=3) == greedy


def test_sample_next_top_p_nucleus():
    probs = torch.tensor([0.05, 0.5, 0.15, 0.3])
    logits = probs.log()
    g = torch.Generator().manual_seed(0)
    draws = [sample_next(logits, 1.0, 0.7, g) for _ in range(400)]
    # nucleus for 0.7: tokens 1 (0.5) and 3 (0.3), drawn ~5:3
    assert set(draws) == {1, 3}
    assert 0.5 < draws.count(1) / 400 < 0.75
    draws = [sample_next(logits, 1.0, 0.85, g) for _ in range(400)]
    assert set(draws) == {1, 3, 2}
    draws = [sample_next(logits, 1.0, 1.0, g) for _ in range(1000)]
    assert set(draws) == {0, 1, 2, 3}
    # greedy: first index among equal maxima
    assert sample_next(torch.tensor([1.0, 3.0, 3.0, 0.0]), 0.0) == 1
    # low temperature sharpens towards the argmax
    assert all(sample_next(logits, 1e-3, 1.0, g) == 1 for _ in range(50))
    for bad in ((-1.0, 1.0), (1.0, 0.0), (1.0, 1.5), (float("nan"), 1.0)):
        with pytest.raises(ValueError):
            sample_next(logits, *bad, g)


def test_generate_rejects_bad_arguments(models4):
    model, _ = models4
    with pytest.raises(ValueError, match="empty"):
        model.generate([], 4)
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.generate([1], -1)
    with pytest.raises(ValueError, match=r"token ids expected in \[0, 97\)"):
        model.generate([1, 97], 2)
    assert model.generate([1], 0) == []


# ----------------------------------------------------------------------- tensor-parallel shards

def test_tensor_parallel_shards_are_the_checkpoint_slices(ckpt2):
    full = load_model(ckpt2, "cpu", dtype=torch.float32, progress=False).state_dict()
    ranks = [load_model(ckpt2, "cpu", rank=r, world_size=2, dtype=torch.float32, progress=False).state_dict()
             for r in range(2)]
    I2, d, nq, nkv = 128, 16, 4, 2
    for r, sd in enumerate(ranks):
        rows = slice(r * I2 // 2, (r + 1) * I2 // 2)
        assert torch.equal(sd["block.1.mlp.mlp1_weight.blocks"], full["block.1.mlp.mlp1_weight.blocks"][:, rows])
        assert torch.equal(sd["block.1.mlp.mlp1_weight.scales"], full["block.1.mlp.mlp1_weight.scales"][:, rows])
        assert torch.equal(sd["block.1.mlp.mlp1_bias"], full["block.1.mlp.mlp1_bias"][:, rows])
        kb = slice(r, r + 1)  # I/32 = 2 K-blocks, one per rank
        assert torch.equal(sd["block.1.mlp.mlp2_weight.blocks"], full["block.1.mlp.mlp2_weight.blocks"][:, :, kb])
        assert ("block.1.mlp.mlp2_bias" in sd) == (r == 0)
        assert ("block.1.attn.out.bias" in sd) == (r == 0)
        qkv = full["block.0.attn.qkv.weight"]
        q = qkv[r * 2 * d:(r + 1) * 2 * d]
        k = qkv[nq * d + r * d:nq * d + (r + 1) * d]
        v = qkv[(nq + nkv) * d + r * d:(nq + nkv) * d + (r + 1) * d]
        assert torch.equal(sd["block.0.attn.qkv.weight"], torch.cat([q, k, v]))
        assert torch.equal(sd["block.0.attn.sinks"], full["block.0.attn.sinks"][2 * r:2 * r + 2])
        assert torch.equal(sd["block.0.attn.out.weight"], full["block.0.attn.out.weight"][:, r * 2 * d:(r + 1) * 2 * d])
        assert torch.equal(sd["embedding.weight"], full["embedding.weight"])


def test_sharded_model_needs_torch_distributed(ckpt2):
    model = load_model(ckpt2, "cpu", rank=1, world_size=2, progress=False)
    with pytest.raises(RuntimeError, match="torch.distributed must be initialised"):
        model(torch.tensor([1, 2]))


# ----------------------------------------------------------------------------- bad checkpoints

def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _rewrite(ckpt, edit):
    """Loads model.safetensors, applies edit(dict) and writes it back."""
    f = ckpt / "model.safetensors"
    tensors = load_file(str(f))
    edit(tensors)
    save_file(tensors, str(f))


def test_missing_directory_config_and_weights(tmp_path, ckpt2):
    with pytest.raises(CheckpointNotFoundError, match="not found: .*nowhere"):
        load_model(tmp_path / "nowhere", "cpu")
    assert issubclass(CheckpointNotFoundError, FileNotFoundError)
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointNotFoundError, match="not a directory"):
        load_model(tmp_path / "file", "cpu")
    c = _copy(ckpt2, tmp_path / "noconfig")
    (c / "config.json").unlink()
    with pytest.raises(CheckpointNotFoundError, match="config.json not found"):
        load_model(c, "cpu")
    c = _copy(ckpt2, tmp_path / "noweights")
    (c / "model.safetensors").unlink()
    with pytest.raises(CheckpointNotFoundError, match=r"no \*\.safetensors file"):
        load_model(c, "cpu")


def test_truncated_and_corrupt_files(tmp_path, ckpt2):
    c = _copy(ckpt2, tmp_path / "truncated")
    f = c / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) - 1000])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: not a readable safetensors file"):
        load_model(c, "cpu")
    f.write_bytes(data[:5])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: not a readable safetensors file"):
        load_model(c, "cpu")
    # garbage in the JSON header
    header, start = safetensors_header(ckpt2 / "model.safetensors")
    bad = bytearray(data)
    bad[10:30] = b"\x00\xff" * 10
    f.write_bytes(bytes(bad))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: not a readable safetensors file"):
        load_model(c, "cpu")
    # garbage in a bf16 tensor's data: 0xFFFF is a NaN
    lo, hi = header["block.1.attn.qkv.weight"]["data_offsets"]
    bad = bytearray(data)
    bad[start + lo + 64:start + lo + 96] = b"\xff" * 32
    f.write_bytes(bytes(bad))
    with pytest.raises(CheckpointError, match=r"'block\.1\.attn\.qkv\.weight' holds non-finite values"):
        load_model(c, "cpu")
    # an MXFP4 scale byte of 255 (e8m0 NaN)
    lo, hi = header["block.0.mlp.mlp2_weight.scales"]["data_offsets"]
    bad = bytearray(data)
    bad[start + lo + 3] = 255
    f.write_bytes(bytes(bad))
    with pytest.raises(CheckpointError, match=r"'block\.0\.mlp\.mlp2_weight\.scales' holds the MXFP4 NaN scale"):
        load_model(c, "cpu")


def test_missing_extra_misshapen_and_mistyped_tensors(tmp_path, ckpt2):
    c = _copy(ckpt2, tmp_path / "missing")
    _rewrite(c, lambda t: t.pop("block.1.mlp.gate.bias"))
    with pytest.raises(CheckpointError, match=r"missing tensor\(s\) 'block\.1\.mlp\.gate\.bias'"):
        load_model(c, "cpu")

    c = _copy(ckpt2, tmp_path / "extra")
    _rewrite(c, lambda t: t.update({"block.0.attn.rogue": torch.zeros(3, dtype=torch.bfloat16)}))
    with pytest.raises(CheckpointError, match=r"unexpected tensor\(s\) 'block\.0\.attn\.rogue' in model\.safetensors"):
        load_model(c, "cpu")

    c = _copy(ckpt2, tmp_path / "shape")
    _rewrite(c, lambda t: t.update({"block.0.attn.sinks": torch.zeros(5, dtype=torch.bfloat16)}))
    with pytest.raises(CheckpointError, match=r"tensor 'block\.0\.attn\.sinks' expected shape \[4\] .* got \[5\]"):
        load_model(c, "cpu")

    c = _copy(ckpt2, tmp_path / "blocks")
    _rewrite(c, lambda t: t.update({"block.1.mlp.mlp2_weight.blocks": t["block.1.mlp.mlp2_weight.blocks"][:, :, :1].contiguous()}))
    with pytest.raises(CheckpointError, match=r"'block\.1\.mlp\.mlp2_weight\.blocks' expected shape \[4, 64, 2, 16\] "
                                              r".* got \[4, 64, 1, 16\]"):
        load_model(c, "cpu")

    c = _copy(ckpt2, tmp_path / "dtype")
    _rewrite(c, lambda t: t.update({"norm.scale": t["norm.scale"].float()}))
    with pytest.raises(CheckpointError, match=r"tensor 'norm\.scale' expected dtype BF16, got F32"):
        load_model(c, "cpu")

    c = _copy(ckpt2, tmp_path / "dtype8")
    _rewrite(c, lambda t: t.update({"block.0.mlp.mlp1_weight.scales": t["block.0.mlp.mlp1_weight.scales"].to(torch.int8)}))
    with pytest.raises(CheckpointError, match=r"'block\.0\.mlp\.mlp1_weight\.scales' expected dtype U8, got I8"):
        load_model(c, "cpu")


def test_tensors_split_over_files_load_and_duplicates_are_rejected(tmp_path, ckpt2):
    c = _copy(ckpt2, tmp_path / "split")
    tensors = load_file(str(c / "model.safetensors"))
    (c / "model.safetensors").unlink()
    names = sorted(tensors)
    save_file({n: tensors[n] for n in names[::2]}, str(c / "model-00001-of-00002.safetensors"))
    save_file({n: tensors[n] for n in names[1::2]}, str(c / "model-00002-of-00002.safetensors"))
    tokens = torch.tensor([3, 1, 4, 1, 5])
    want = load_model(ckpt2, "cpu", progress=False)(tokens)
    assert torch.equal(load_model(c, "cpu", progress=False)(tokens), want)
    save_file({names[0]: tensors[names[0]]}, str(c / "zz-extra.safetensors"))
    with pytest.raises(CheckpointError, match=f"tensor '{names[0]}' is in two files"):
        load_model(c, "cpu")


def _edit_config(ckpt, dst, **changes):
    c = _copy(ckpt, dst)
    cfg = json.loads((c / "config.json").read_text())
    cfg.update(changes)
    (c / "config.json").write_text(json.dumps(cfg))
    return c


def test_config_that_does_not_match_the_tensors(tmp_path, ckpt2):
    c = _edit_config(ckpt2, tmp_path / "hidden", hidden_size=96)
    with pytest.raises(CheckpointError, match=r"tensor 'embedding\.weight' expected shape \[97, 96\] "
                                              r"\(vocab_size, hidden_size from config\.json\), got \[97, 64\]"):
        load_model(c, "cpu")
    c = _edit_config(ckpt2, tmp_path / "layers", num_hidden_layers=3)
    with pytest.raises(CheckpointError, match=r"config\.json says num_hidden_layers=3, the safetensors files "
                                              r"hold blocks 0\.\.1"):
        load_model(c, "cpu")
    c = _edit_config(ckpt2, tmp_path / "experts", num_experts=8)
    with pytest.raises(CheckpointError, match=r"'block\.0\.mlp\.gate\.weight' expected shape \[8, 64\]"):
        load_model(c, "cpu")
    c = _edit_config(ckpt2, tmp_path / "kv", num_key_value_heads=1)
    with pytest.raises(CheckpointError, match=r"'block\.0\.attn\.qkv\.weight' expected shape \[96, 64\]"):
        load_model(c, "cpu")


def test_invalid_config_json(tmp_path, ckpt2):
    cases = [
        (dict(num_key_value_heads=3), r"num_attention_heads \(4\) must be a multiple of num_key_value_heads \(3\)"),
        (dict(intermediate_size=48), r"intermediate_size: expected a multiple of 32"),
        (dict(hidden_size=80), r"hidden_size: expected a multiple of 32"),
        (dict(experts_per_token=5), r"experts_per_token: expected <= num_experts"),
        (dict(head_dim=15), r"head_dim: expected an even number"),
        (dict(sliding_window=-1), r"sliding_window: expected >= 0"),
        (dict(num_experts="4"), r"num_experts: expected an int"),
        (dict(hidden_dim=64), r"unknown gpt-oss config key\(s\) \['hidden_dim'\]"),
    ]
    for i, (change, message) in enumerate(cases):
        c = _edit_config(ckpt2, tmp_path / f"c{i}", **change)
        with pytest.raises(CheckpointError, match=message):
            load_model(c, "cpu")
    c = _copy(ckpt2, tmp_path / "nokey")
    cfg = json.loads((c / "config.json").read_text())
    del cfg["vocab_size"]
    (c / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"missing gpt-oss config key\(s\) \['vocab_size'\]"):
        load_model(c, "cpu")
    (c / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"config\.json: not valid JSON"):
        load_model(c, "cpu")


def test_world_size_must_divide_the_sharded_dims(ckpt2):
    # intermediate 64: W=3 does not divide it, W=4 gives 16 per rank (not a multiple of 32)
    for world, got in ((3, "21.3333"), (4, "16")):
        with pytest.raises(CheckpointError, match=rf"world size {world} cannot shard the MoE intermediate size 64"
                                                  rf".* got 64 / {world} = {got}"):
            load_model(ckpt2, "cpu", rank=0, world_size=world)
    with pytest.raises(CheckpointError, match=r"rank expected in \[0, 2\), got 2"):
        load_model(ckpt2, "cpu", rank=2, world_size=2)


def test_save_checkpoint_rejects_bad_state(tmp_path):
    config = tiny_config(num_hidden_layers=1)
    state = ReferenceGptOss(config).state_dict()
    with pytest.raises(CheckpointError, match=r"lacks tensor\(s\) 'norm\.scale'"):
        save_checkpoint(tmp_path, config, {k: v for k, v in state.items() if k != "norm.scale"})
    with pytest.raises(CheckpointError, match=r"unexpected tensor\(s\) 'extra'"):
        save_checkpoint(tmp_path, config, {**state, "extra": torch.zeros(1)})
    bad = dict(state)
    bad["block.0.mlp.mlp1_weight"] = torch.zeros(4, 128, 32)
    with pytest.raises(CheckpointError, match=r"'block\.0\.mlp\.mlp1_weight' expected shape \[4, 128, 64\], "
                                              r"got \[4, 128, 32\]"):
        save_checkpoint(tmp_path, config, bad)


def test_graph_decode_needs_a_cuda_model(models4):
    model, _ = models4
    with pytest.raises(ValueError, match="graph=True needs the model on a CUDA device"):
        model.generate([1, 2, 3], 4, graph=True)


def test_decoder_is_kept_while_calls_fit(models4):
    """generate() keeps its decode state (cache, and on CUDA the captured step) while a call fits
    in its cache with the same sampling, and replaces it otherwise; the tokens never change."""
    model, _ = models4
    prompt = [5, 9, 2, 7]
    first = model.generate(prompt, 12)
    decoder = model._decoder
    assert model.generate(prompt, 6) == first[:6] and model._decoder is decoder
    longer = model.generate(prompt, 20)
    assert longer[:12] == first and model._decoder is not decoder and model._decoder.capacity == 24
    sampled = model.generate(prompt, 8, temperature=1.0, seed=3)
    assert model._decoder.temperature == 1.0 and model.generate(prompt, 8, temperature=1.0, seed=3) == sampled
