"""moekit as the MoE of transformers' GptOssForCausalLM (moekit.transformers_gpt_oss): against
transformers' own dequantized model in float32, on the CPU and (where there is one) on a GPU that
is not the current device; and the torchrun scenario (one model per rank) with gloo on the CPU."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from moekit.chat import stop_ids
from moekit.models import load_model
from moekit.transformers_gpt_oss import MoekitGptOssMLP, from_pretrained

ROOT = Path(__file__).resolve().parents[2]
PROMPT = [[3, 17, 5, 9, 11, 2, 30, 8, 14, 21, 4, 6, 12, 19], [7, 7, 1, 40, 2, 3, 9, 9, 11, 5, 6, 13, 20, 22]]


def assert_moekit_experts(model):
    mlps = [layer.mlp for layer in model.model.layers]
    assert mlps and all(isinstance(m, MoekitGptOssMLP) for m in mlps)
    names = dict(model.named_parameters())
    names.update(model.named_buffers())
    assert not any(n.endswith(("experts.gate_up_proj", "experts.down_proj")) for n in names)  # no dense experts
    assert names["model.layers.0.mlp.experts.gate_up_proj_blocks"].dtype == torch.uint8


@pytest.mark.parametrize("layout", ["hf", "original"])
def test_logits_match_transformers_dequantized_path_on_cpu(published_repo, transformers_dequantized, layout):
    repo, _ = published_repo
    model = from_pretrained(repo if layout == "hf" else repo / "original", "cpu", dtype=torch.float32)
    assert_moekit_experts(model)
    ids = torch.tensor(PROMPT)
    with torch.no_grad():
        err = (model(ids).logits - transformers_dequantized(ids).logits).abs().max().item()
    assert err < 1e-4, err
    with torch.no_grad():
        ours = model.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)
        theirs = transformers_dequantized.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=None,
                                                   pad_token_id=0)
    assert torch.equal(ours, theirs)


def test_bfloat16_model_runs_its_moe_in_moekit(published_repo):
    repo, _ = published_repo
    model = from_pretrained(repo, "cpu", dtype=torch.bfloat16)
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16
    calls = []
    handle = model.model.layers[0].mlp.register_forward_hook(lambda m, args, out: calls.append(out[0].dtype))
    with torch.no_grad():
        logits = model(torch.tensor(PROMPT)).logits
    handle.remove()
    assert calls == [torch.bfloat16] and torch.isfinite(logits).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_logits_match_on_a_gpu_that_is_not_the_current_device(published_repo, transformers_dequantized):
    repo, _ = published_repo
    device = torch.device("cuda", torch.cuda.device_count() - 1)
    torch.cuda.set_device(0)
    model = from_pretrained(repo, device, dtype=torch.float32)
    ids = torch.tensor(PROMPT)
    with torch.no_grad():
        got = model(ids.to(device)).logits.cpu()
        want = transformers_dequantized(ids).logits
    assert torch.cuda.current_device() == 0
    err = (got - want).abs().max().item()
    assert err < 1e-4, err


def run_example(repo, out, nproc):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    launcher = [] if nproc == 1 else ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)]
    proc = subprocess.run([sys.executable, *launcher, str(ROOT / "examples" / "transformers_torchrun.py"),
                           "--checkpoint", str(repo), "--device", "cpu", "--dtype", "float32", "--prompt",
                           "the quick brown fox", "--max-new-tokens", "12", "--output-json", str(out)],
                          capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return json.loads(out.read_text())["ranks"]


def test_torchrun_one_model_per_rank_with_gloo_agrees_with_one_process(published_repo, tmp_path):
    repo, _ = published_repo
    one = run_example(repo, tmp_path / "one.json", 1)
    two = run_example(repo, tmp_path / "two.json", 2)
    assert len(one) == 1 and len(two) == 2
    assert two == [one[0], one[0]]


def test_generate_stops_at_the_checkpoints_end_of_sequence_as_transformers_does(published_repo, tmp_path):
    """generation_config.json's eos_token_id ends generate() for the drop-in, and the runner's
    generation (its stop ids, chat.stop_ids), where it ends it for transformers' own model (which
    reads the file in from_pretrained); with the id of the third greedy token, all stop after
    three tokens, the same three, in either layout."""
    from transformers import GptOssForCausalLM

    repo = tmp_path / "repo"
    shutil.copytree(published_repo[0], repo)
    ids = torch.tensor(PROMPT[:1])
    with torch.no_grad():
        free = from_pretrained(repo, "cpu", dtype=torch.float32).generate(
            ids, max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0)
    eos = int(free[0, ids.shape[1] + 2])
    assert eos not in free[0, ids.shape[1]:ids.shape[1] + 2].tolist(), "pick a prompt whose third token is new"
    (repo / "generation_config.json").write_text(json.dumps({"eos_token_id": [eos], "pad_token_id": 0}))
    theirs = GptOssForCausalLM.from_pretrained(repo, dtype=torch.float32).eval()
    with torch.no_grad():
        want = theirs.generate(ids, max_new_tokens=8, do_sample=False)
        for layout in (repo, repo / "original"):
            model = from_pretrained(layout, "cpu", dtype=torch.float32)
            assert model.generation_config.eos_token_id == [eos]
            got = model.generate(ids, max_new_tokens=8, do_sample=False)
            assert got.shape[1] == ids.shape[1] + 3 and torch.equal(got, want)
            runner = load_model(layout, "cpu", dtype=torch.float32, progress=False)
            new = runner.generate(ids[0].tolist(), max_new_tokens=8, stop_ids=stop_ids(layout, None))
            assert new == want[0, ids.shape[1]:].tolist()


def test_a_generation_config_that_is_not_json_is_one_clear_error(published_repo, tmp_path):
    from moekit.models.checkpoint import CheckpointError

    repo = tmp_path / "repo"
    shutil.copytree(published_repo[0], repo)
    (repo / "generation_config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="generation_config.json: not a generation config"):
        from_pretrained(repo, "cpu", dtype=torch.float32)


@pytest.mark.parametrize("tensor,value,needle", [
    ("model.layers.0.mlp.router.weight", float("nan"), "holds non-finite values"),
    ("model.layers.1.mlp.experts.down_proj_scales", 255, "holds the MXFP4 NaN scale 255"),
])
def test_the_drop_in_refuses_what_load_model_refuses(published_repo, tmp_path, tensor, value, needle):
    """NaN gate weights and the MXFP4 NaN scale (255): refused by both loaders, which read
    through the same checks, rather than generating from them."""
    from moekit.models import load_model
    from moekit.models.checkpoint import CheckpointError
    from safetensors.torch import load_file, save_file

    repo = tmp_path / "repo"
    shutil.copytree(published_repo[0], repo, ignore=shutil.ignore_patterns("original"))
    shard = repo / json.loads((repo / "model.safetensors.index.json").read_text())["weight_map"][tensor]
    state = load_file(shard)
    state[tensor].view(-1)[3] = value
    save_file(state, shard, metadata={"format": "pt"})
    for load in (lambda: from_pretrained(repo, "cpu", dtype=torch.float32),
                 lambda: load_model(repo, "cpu", progress=False)):
        with pytest.raises(CheckpointError, match=needle):
            load()


def test_the_readmes_transformers_snippet_runs(published_repo, capsys):
    """The README's transformers example as written, but for the checkpoint path, the device and
    the length, on the tiny published-layout checkpoint (it once used input_ids it never made)."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    start = readme.index("```python\n", readme.index("Through transformers")) + len("```python\n")
    code = readme[start:readme.index("```", start)]
    path = repr(str(published_repo[0]))
    edited = code.replace('"gpt-oss-20b"', path).replace('"cuda:1"', '"cpu"').replace("max_new_tokens=64",
                                                                                      "max_new_tokens=4")
    assert edited.count(path) == 2 and '"cuda:1"' not in edited and "max_new_tokens=4" in edited, code
    exec(compile(edited, "README.md", "exec"), {})
    assert capsys.readouterr().out.endswith("\n")
