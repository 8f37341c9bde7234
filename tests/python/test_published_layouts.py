"""Both published gpt-oss layouts: a tiny random repository laid out as the real one (the Hugging
Face layout at the root, sharded with an index; the original layout in original/, without a
tokenizer), read by moekit's loader and runner, converted in both directions, and checked
against transformers' own GptOssForCausalLM (its dequantized path, in float32)."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from gpt_oss_fixtures import HARMONY_TOKENS
from moekit.models import (CheckpointError, CheckpointNotFoundError, checkpoint_layout, convert_checkpoint,
                           find_tokenizer, load_model, read_config)

PROMPT = [3, 17, 5, 9, 11, 2, 30, 8, 14, 21, 4, 6, 12, 19]  # longer than the sliding window (8)
NEW = 16


def test_the_fixture_is_laid_out_as_published(published_repo):
    root, config = published_repo
    assert checkpoint_layout(root) == "hf" and checkpoint_layout(root / "original") == "original"
    index = json.loads((root / "model.safetensors.index.json").read_text())["weight_map"]
    shards = set(index.values())
    assert len(shards) >= 2 and all((root / s).is_file() for s in shards)
    for name in ("model.embed_tokens.weight", "model.layers.1.self_attn.q_proj.weight",
                 "model.layers.0.mlp.experts.gate_up_proj_blocks", "model.layers.0.mlp.router.bias", "lm_head.weight"):
        assert name in index, name
    hf = json.loads((root / "config.json").read_text())
    assert hf["num_local_experts"] == config.num_experts and hf["quantization_config"]["quant_method"] == "mxfp4"
    assert hf["rope_scaling"]["rope_type"] == "yarn" and len(hf["layer_types"]) == config.num_hidden_layers
    assert not (root / "original" / "tokenizer.json").exists()
    assert find_tokenizer(root / "original") == root / "tokenizer.json"
    assert read_config(root) == read_config(root / "original") == config


def test_both_layouts_load_to_the_same_model(published_repo):
    root, _ = published_repo
    ids = torch.tensor(PROMPT)
    a = load_model(root, "cpu", dtype=torch.float32, progress=False)
    b = load_model(root / "original", "cpu", dtype=torch.float32, progress=False)
    assert torch.equal(a(ids), b(ids))


def test_conversion_round_trips_bit_for_bit(published_repo, tmp_path):
    root, _ = published_repo
    convert_checkpoint(root, tmp_path / "original", "original")
    assert (tmp_path / "original" / "model.safetensors").read_bytes() == (root / "original" / "model.safetensors").read_bytes()
    convert_checkpoint(root / "original", tmp_path / "hf", "hf", max_shard_bytes=40_000)
    for name in json.loads((root / "model.safetensors.index.json").read_text())["weight_map"].values():
        assert (tmp_path / "hf" / name).read_bytes() == (root / name).read_bytes(), name
    assert json.loads((tmp_path / "hf" / "config.json").read_text()) == json.loads((root / "config.json").read_text())


@pytest.mark.parametrize("layout", ["hf", "original"])
def test_runner_matches_transformers(published_repo, transformers_dequantized, layout):
    root, _ = published_repo
    path = root if layout == "hf" else root / "original"
    ours = load_model(path, "cpu", dtype=torch.float32, progress=False)
    ids = torch.tensor(PROMPT)
    with torch.no_grad():
        theirs = transformers_dequantized(ids[None]).logits[0]
    err = (ours(ids) - theirs).abs().max().item()
    assert err < 1e-4, err
    new = ours.generate(PROMPT, NEW)
    with torch.no_grad():
        out = transformers_dequantized.generate(ids[None], max_new_tokens=NEW, do_sample=False, eos_token_id=None,
                                          pad_token_id=0)
    assert new == out[0, len(PROMPT):].tolist()


def run_cli(*args):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "moekit.generate", "--device", "cpu", "--no-progress",
                           "--dtype", "float32", *map(str, args)], capture_output=True, text=True, timeout=120, env=env)


def test_runner_cli_on_the_root_and_on_original(published_repo, tmp_path):
    root, _ = published_repo
    outs = []
    for path in (root, root / "original"):
        out = tmp_path / f"{path.name}.json"
        proc = run_cli("--checkpoint", path, "--prompt", "the quick brown fox", "--max-new-tokens", NEW,
                       "--output-json", out)
        assert proc.returncode == 0, proc.stderr[-2000:]
        outs.append(json.loads(out.read_text())["ranks"])
    assert outs[0] == outs[1]


def test_chat_prompt_in_the_checkpoints_template_stops_at_its_end_of_turn(published_repo, tmp_path):
    root, _ = published_repo
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(root / "tokenizer.json"))
    out = tmp_path / "chat.json"
    proc = run_cli("--checkpoint", root, "--chat", "--prompt", "the quick brown fox", "--max-new-tokens", 8,
                   "--output-json", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(out.read_text())
    want = tok.encode("<|start|>user<|message|>the quick brown fox<|end|><|start|>assistant",
                      add_special_tokens=False).ids
    assert got["prompt_ids"] == want
    assert all(tok.token_to_id(t) in want for t in ("<|start|>", "<|message|>", "<|end|>"))
    # The end of turn stops generation: make the first greedy token the end-of-turn token.
    first = got["ranks"][0][0]
    stop_repo = tmp_path / "stop"
    shutil.copytree(root, stop_repo)
    (stop_repo / "generation_config.json").write_text(json.dumps({"eos_token_id": [first]}))
    proc = run_cli("--checkpoint", stop_repo, "--chat", "--prompt", "the quick brown fox", "--max-new-tokens", 8,
                   "--output-json", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(out.read_text())["ranks"] == [[first]]
    assert set(HARMONY_TOKENS) <= set(tok.get_vocab(with_added_tokens=True))


def test_without_a_chat_template_chat_is_a_clear_error(published_repo, tmp_path):
    root, _ = published_repo
    shutil.copytree(root / "original", tmp_path / "original")
    shutil.copy(root / "tokenizer.json", tmp_path / "tokenizer.json")
    proc = run_cli("--checkpoint", tmp_path / "original", "--chat")
    assert proc.returncode == 2 and "ships no chat template" in proc.stderr and "Traceback" not in proc.stderr


def test_broken_repositories_are_clear_errors(published_repo, tmp_path):
    root, _ = published_repo
    bad = tmp_path / "bad"
    shutil.copytree(root, bad)
    shard = sorted(bad.glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(CheckpointNotFoundError, match=f"{shard.name}, listed in model.safetensors.index.json, not found"):
        load_model(bad, "cpu", progress=False)
    config = json.loads((root / "config.json").read_text())
    for change, needle in ((dict(quantization_config=None), "MXFP4 experts"),
                           (dict(layer_types=["full_attention"] * 2), "layer_types"),
                           (dict(rms_norm_eps=1e-6), "rms_norm_eps")):
        broken = tmp_path / f"cfg{len(needle)}"
        shutil.copytree(root, broken)
        (broken / "config.json").write_text(json.dumps({**config, **change}))
        with pytest.raises(CheckpointError, match=needle):
            read_config(broken)
