"""The gpt-oss runner on a GPU: the model against the plain-torch reference, the CLI on one GPU
against the CPU, and two torchrun processes sharing one GPU (gloo). Skips without a CUDA GPU.

Cross-device and cross-rank comparisons run in float32 (see test_generate_torchrun.py)."""

import pytest
import torch

from conftest import cuda_kernels_during, randn
from gpt_oss_fixtures import checkpoint_fixture
from moekit.models import ReferenceGptOss, load_model
from test_generate_torchrun import run_generate

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


ckpt = checkpoint_fixture("ckpt", seed=31, num_hidden_layers=4)


def test_gpu_model_greedy_32_tokens_and_logits_match_reference(ckpt):
    model = load_model(ckpt, "cuda:0", dtype=torch.float32, progress=False)
    ref = ReferenceGptOss.from_checkpoint(ckpt)
    prompt = torch.randint(0, 97, (5,), generator=torch.Generator().manual_seed(3)).tolist()
    got = model.generate(prompt, 32)
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(32):
            seq.append(int(ref(torch.tensor(seq))[-1].argmax()))
        want = ref(torch.tensor(seq))
        logits = model(torch.tensor(seq, device="cuda:0")).cpu()
    assert got == seq[len(prompt):]
    assert float((logits.double() - want.double()).norm() / want.double().norm()) < 1e-4


@pytest.mark.parametrize("set_device", [True, False], ids=["set_device", "no_set_device"])
def test_cli_on_one_gpu_and_two_processes_sharing_it(ckpt, tmp_path, set_device):
    extra = ("--dtype", "float32") + (() if set_device else ("--no-set-device",))
    _, cpu = run_generate(ckpt, tmp_path / "cpu.json", "--dtype", "float32")
    _, gpu = run_generate(ckpt, tmp_path / "gpu.json", "--device", "cuda:0", *extra)
    _, two = run_generate(ckpt, tmp_path / "two.json", "--device", "cuda:0", "--backend", "gloo", *extra, nproc=2)
    assert gpu["device"] == "cuda:0" and two["device"] == "cuda:0"
    assert gpu["ranks"][0] == cpu["ranks"][0]
    assert two["ranks"][0] == two["ranks"][1] == cpu["ranks"][0]


@pytest.fixture(scope="module")
def shipped_bf16():
    from moekit.generate import DEFAULT_CHECKPOINT
    return load_model(DEFAULT_CHECKPOINT, "cuda:0", progress=False)


@pytest.mark.parametrize("sampling", [dict(), dict(temperature=0.8, top_p=0.9, seed=5)], ids=["greedy", "top_p"])
def test_graph_decode_equals_eager_on_the_shipped_model(shipped_bf16, sampling):
    """The CUDA-graph decode step and the eager one run the same kernels: the same 64 tokens."""
    prompt = list(range(100, 140))
    graph = shipped_bf16.generate(prompt, 64, graph=True, **sampling)
    assert shipped_bf16._decoder.graph is not None
    eager = shipped_bf16.generate(prompt, 64, graph=False, **sampling)
    assert shipped_bf16._decoder.graph is None
    assert graph == eager
    assert shipped_bf16.generate(prompt, 64, graph=True, **sampling) == graph  # a fresh capture, the same tokens


def test_graph_decode_stops_at_a_stop_id_and_reuses_its_graph(shipped_bf16):
    prompt = list(range(7, 30))
    full = shipped_bf16.generate(prompt, 48)
    decoder = shipped_bf16._decoder
    stop = full[20]
    first = full.index(stop)
    assert shipped_bf16.generate(prompt, 48, stop_ids=[stop]) == full[:first + 1]
    short = shipped_bf16.generate(prompt[:5], 30)
    assert shipped_bf16._decoder is decoder  # fits in its cache with the same sampling: its graph replays
    assert short == shipped_bf16.generate(prompt[:5], 30, graph=False)


def test_linear_takes_the_gemv_only_where_matmul_ogs_has_one(gen, monkeypatch):
    """The output projection's Linear(gemv=True) runs matmul_ogs's GEMV on GPUs that have it and
    torch's matmul elsewhere (matmul_ogs's general kernels would be slower): the same product."""
    from moekit.models import gpt_oss
    linear = gpt_oss.Linear(256, 300, True, "cuda:0", torch.bfloat16, gemv=True)  # > 256 columns: the GEMV's
    linear.weight.copy_(randn(gen, 300, 256, dtype=torch.bfloat16))
    linear.bias.copy_(randn(gen, 300, dtype=torch.bfloat16))
    x = randn(gen, 2, 256, dtype=torch.bfloat16).cuda()
    want = (x.double() @ linear.weight.double().T + linear.bias.double()).float()
    for has in (True, False):
        monkeypatch.setattr(gpt_oss, "has_gemv", lambda index, has=has: has)
        y, names = cuda_kernels_during(lambda: linear(x))
        assert any("matmul_ogs_gemv" in n for n in names) == has, names
        assert (y.float() - want).abs().max() <= 1e-2 * want.abs().max()
    monkeypatch.undo()
    assert gpt_oss.has_gemv(0) == (torch.cuda.get_device_capability(0)[0] == 9)
