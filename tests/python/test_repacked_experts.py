"""Models holding their experts in the layout of moekit's Hopper main loop too (load_model's and
from_pretrained's repack_experts, the runner's --repack-experts): the same state_dict, the same
numbers (bit for bit on the CPU, whose kernels read the checkpoint layout; on a GPU the prefill
runs the swap-AB loop and agrees with the checkpoint layout's kernels), and a repacked layout
older than its weights refused."""

import pytest
import torch

import moekit
from conftest import cuda_kernels_during
from gpt_oss_fixtures import checkpoint_fixture
from moekit.generate import DEFAULT_CHECKPOINT
from moekit.models import ReferenceGptOss, load_model
from moekit.transformers_gpt_oss import MoekitGptOssExperts, from_pretrained
from reference import rel_err
from test_generate_torchrun import run_generate

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


ckpt = checkpoint_fixture("ckpt", seed=17, num_hidden_layers=3)


def expert_weights(model):
    return [w for block in model.block for w in (block.mlp.mlp1_weight, block.mlp.mlp2_weight)]


def test_a_repacked_model_keeps_its_state_dict_and_its_logits_on_the_cpu(ckpt):
    plain = load_model(ckpt, "cpu", dtype=torch.float32, progress=False)
    repacked = load_model(ckpt, "cpu", dtype=torch.float32, progress=False, repack_experts=True)
    assert list(repacked.state_dict()) == list(plain.state_dict())
    for w in expert_weights(repacked):
        codes, slab_scales = moekit.repack_mxfp4(w.blocks, w.scales)
        assert torch.equal(w.codes, codes) and torch.equal(w.slab_scales, slab_scales)
        assert len(w.mxfp4_operand(0)) == 4
    assert all(len(w.mxfp4_operand(0)) == 2 for w in expert_weights(plain))
    added = repacked.repack_experts()  # again: the same layout, its size returned
    assert added == sum(w.blocks.nbytes + w.scales.nbytes for w in expert_weights(repacked))
    tokens = torch.randint(0, 97, (21,), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.equal(repacked(tokens), plain(tokens))
    assert repacked.generate(tokens.tolist(), 12) == plain.generate(tokens.tolist(), 12)


def test_weights_written_after_the_repack_are_refused_until_repacked_again(ckpt):
    plain = load_model(ckpt, "cpu", dtype=torch.float32, progress=False)
    model = load_model(ckpt, "cpu", dtype=torch.float32, progress=False, repack_experts=True)
    tokens = torch.arange(3, 20)
    with torch.no_grad():
        want = plain(tokens)
        model.block[1].mlp.mlp2_weight.scales.add_(0)  # in place: the repacked layout may be stale
        with pytest.raises(RuntimeError, match=r"MXFP4Weight: its MXFP4 weights were written after repack\(\)"):
            model(tokens)
        model.repack_experts()
        assert torch.equal(model(tokens), want)
        model.load_state_dict(plain.state_dict())  # copies into the buffers: stale again
        with pytest.raises(RuntimeError, match="call repack"):
            model(tokens)
        model.repack_experts()
        assert torch.equal(model(tokens), want)
        model._apply(torch.clone)  # as .to(device) does: new tensors of both layouts, still consistent
        assert torch.equal(model(tokens), want)


def test_the_drop_in_repacks_its_experts_and_keeps_its_numbers_on_the_cpu():
    plain = from_pretrained(DEFAULT_CHECKPOINT, "cpu", dtype=torch.float32)
    repacked = from_pretrained(DEFAULT_CHECKPOINT, "cpu", dtype=torch.float32, repack_experts=True)
    assert list(repacked.state_dict()) == list(plain.state_dict())
    experts = [m for m in repacked.modules() if isinstance(m, MoekitGptOssExperts)]
    assert experts and all(len(e.mxfp4_operand(0)) == len(e.mxfp4_operand(1)) == 4 for e in experts)
    ids = torch.arange(100, 124)[None]
    with torch.no_grad():
        assert torch.equal(repacked(ids).logits, plain(ids).logits)
    with torch.no_grad():
        experts[0].down_proj_blocks.add_(0)
    with pytest.raises(RuntimeError, match=r"MoekitGptOssExperts: its MXFP4 weights were written after repack"):
        repacked(ids)


def test_the_runner_repacks_each_ranks_shard(ckpt, tmp_path):
    """Two tensor-parallel ranks, each repacking its own shard (mlp2's K halved): the tokens of
    the model in one process."""
    _, two = run_generate(ckpt, tmp_path / "two.json", "--dtype", "float32", "--repack-experts", nproc=2)
    model = load_model(ckpt, "cpu", dtype=torch.float32, progress=False)
    want = model.generate(two["prompt_ids"], len(two["ranks"][0]))
    assert two["ranks"] == [want, want]


@needs_cuda
def test_a_repacked_models_prefill_runs_the_main_loop_and_agrees_with_the_checkpoint_layout(ckpt):
    plain = load_model(ckpt, "cuda:0", progress=False)
    repacked = load_model(ckpt, "cuda:0", progress=False, repack_experts=True)
    reference = ReferenceGptOss.from_checkpoint(ckpt)
    tokens = torch.randint(0, 97, (48,), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        want = reference(tokens)
        got_plain, ran_plain = cuda_kernels_during(lambda: plain(tokens.cuda()).cpu())
        got, ran = cuda_kernels_during(lambda: repacked(tokens.cuda()).cpu())
    assert any("swapab" in name for name in ran), ran
    assert not any("swapab" in name for name in ran_plain), ran_plain
    # Both bf16 models differ from the float32 reference by their roundings alike; the loop's
    # other summation order may not make the repacked one measurably worse.
    err, err_plain = rel_err(got, want), rel_err(got_plain, want)
    assert err < 1.5 * err_plain + 1e-3, (err, err_plain)
    assert rel_err(got, got_plain) < 2e-2, rel_err(got, got_plain)


@needs_cuda
def test_the_drop_in_trains_through_repacked_experts_on_a_gpu():
    """x's gradient through one of the drop-in's MoE layers (bf16, frozen) with the repacked
    layout: the swap-AB loop in the forward, and the checkpoint layout's output and gradient up
    to the order of mlp1's and mlp2's sums (the gate and the routing are the same kernels on the
    same x, so every token meets the same experts; through a whole bf16 model they need not: the
    H200 measured its two input gradients 6.8% apart)."""
    plain = from_pretrained(DEFAULT_CHECKPOINT, "cuda:0").requires_grad_(False)
    # Repacked on the CPU and moved: both layouts move together.
    repacked = from_pretrained(DEFAULT_CHECKPOINT, "cpu", repack_experts=True).to("cuda:0").requires_grad_(False)
    hidden = plain.config.hidden_size
    x0 = torch.randn(1, 64, hidden, generator=torch.Generator().manual_seed(12)).bfloat16().cuda()

    def step(model):
        x = x0.clone().requires_grad_(True)
        y, _ = model.model.layers[1].mlp(x)
        y.float().square().mean().backward()
        return y.detach(), x.grad

    want_y, want = step(plain)
    (got_y, got), ran = cuda_kernels_during(lambda: step(repacked))
    assert any("swapab" in name for name in ran), ran
    assert rel_err(got_y, want_y) < 2e-2, rel_err(got_y, want_y)
    assert rel_err(got, want) < 2e-2, rel_err(got, want)
