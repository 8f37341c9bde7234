"""Both published gpt-oss layouts: a tiny random repository laid out as the real one (the Hugging
Face layout at the root, sharded with an index; the original layout in original/, without a
tokenizer), read by moekit's loader and runner, converted in both directions, and checked
against transformers' own GptOssForCausalLM (its dequantized path, in float32)."""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

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


@pytest.mark.parametrize("template,needle", [
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "took longer than"),
    ("{% for i in range(100000) %}{% for j in range(100) %}xxxxxxxx{% endfor %}{% endfor %}", "rendered more than"),
    ("{% for i in range(10000000) %}{% endfor %}", "Range too big"),  # the sandbox's own bound
    ("{{ raise_exception('no tools here') }}", "no tools here"),
    ("{% for %}", "TemplateSyntaxError"),
    ("{{ ''.__class__.__mro__ }}", "SecurityError"),
    ("{{ 1 / 0 }}", "ZeroDivisionError"),
    (b"{{ messages }}\xff", "not UTF-8 text"),
    ("", "rendered nothing"),
])
def test_a_chat_template_that_fails_is_one_error_naming_its_file(published_repo, tmp_path, monkeypatch, template,
                                                                 needle):
    """The template is data: rendered in transformers' sandbox, within a time and an output bound,
    and any failure is one CheckpointError naming chat_template.jinja."""
    from moekit import chat

    monkeypatch.setattr(chat, "RENDER_SECONDS", 0.5)
    repo = tmp_path / "repo"
    shutil.copytree(published_repo[0], repo, ignore=shutil.ignore_patterns("original"))
    (repo / "chat_template.jinja").write_bytes(template if isinstance(template, bytes) else template.encode())
    with pytest.raises(CheckpointError, match=re.escape(str(repo / "chat_template.jinja")) + ".*" + needle):
        chat.chat_prompt(repo, "hi")


def test_named_chat_templates_use_the_default_one(published_repo, tmp_path):
    """tokenizer_config.json may list named templates; transformers renders the one named
    "default", and without one the error says so (not "ships no chat template")."""
    from moekit import chat

    repo = tmp_path / "repo"
    shutil.copytree(published_repo[0], repo, ignore=shutil.ignore_patterns("original"))
    (repo / "chat_template.jinja").unlink()
    named = [{"name": "tool_use", "template": "T:{{ messages[0].content }}"},
             {"name": "default", "template": "D:{{ messages[0].content }}"}]
    (repo / "tokenizer_config.json").write_text(json.dumps({"chat_template": named}))
    assert chat.chat_prompt(repo, "hi") == "D:hi"
    (repo / "tokenizer_config.json").write_text(json.dumps({"chat_template": named[:1]}))
    with pytest.raises(CheckpointError, match="none named 'default'"):
        chat.chat_prompt(repo, "hi")


def test_without_a_chat_template_chat_is_a_clear_error(published_repo, tmp_path):
    root, _ = published_repo
    shutil.copytree(root / "original", tmp_path / "original")
    shutil.copy(root / "tokenizer.json", tmp_path / "tokenizer.json")
    proc = run_cli("--checkpoint", tmp_path / "original", "--chat")
    assert proc.returncode == 2 and "ships no chat template" in proc.stderr and "Traceback" not in proc.stderr


def test_chat_with_a_failing_template_is_one_line(published_repo, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(published_repo[0], repo, ignore=shutil.ignore_patterns("original"))
    (repo / "chat_template.jinja").write_text("{{ ''.__class__.__mro__ }}")
    proc = run_cli("--checkpoint", repo, "--chat")
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "--chat:" in lines[-1] and "chat_template.jinja" in lines[-1] and "SecurityError" in lines[-1], lines


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


@pytest.mark.parametrize("entry", ["../../etc/passwd", "/etc/passwd", "/proc/self/mem", "/no/such/file", "", ".",
                                   "..", "sub/model.safetensors"])
def test_an_index_naming_paths_is_refused_before_anything_opens(published_repo, tmp_path, entry, monkeypatch):
    """weight_map values are file names in the folder: a path is refused with the same message
    whether it exists or not, and before any file is opened."""
    import safetensors

    repo = tmp_path / "repo"
    shutil.copytree(published_repo[0], repo, ignore=shutil.ignore_patterns("original"))
    index = json.loads((repo / "model.safetensors.index.json").read_text())
    first = sorted(index["weight_map"])[0]
    index["weight_map"][first] = entry
    (repo / "model.safetensors.index.json").write_text(json.dumps(index))

    def no_open(*args, **kwargs):
        raise AssertionError(f"opened {args[0]}")

    monkeypatch.setattr(safetensors, "safe_open", no_open)
    with pytest.raises(CheckpointError) as e:
        load_model(repo, "cpu", progress=False)
    assert f"tensor {first!r} is mapped to {entry!r}; expected the name of a file in the checkpoint folder" in str(e.value)


def _read_the_file(repo, name):
    """What reads checkpoint file ``name``: the config, the index (loading), the chat template's
    tokenizer_config.json, the stop ids' generation_config.json."""
    from moekit.chat import stop_ids
    from moekit.models import find_chat_template

    if name == "config.json":
        read_config(repo)
    elif name == "model.safetensors.index.json":
        load_model(repo, "cpu", progress=False)
    elif name == "tokenizer_config.json":
        (repo / "chat_template.jinja").unlink()
        find_chat_template(repo)
    else:
        stop_ids(repo, tokenizer=None)


@pytest.mark.parametrize("name", ["config.json", "model.safetensors.index.json", "tokenizer_config.json",
                                  "generation_config.json"])
@pytest.mark.parametrize("content,needle", [
    (b"\xff\xfe{}", "not UTF-8 text"),
    ("[" * 100_000 + "]" * 100_000, r"not valid JSON \(nested too deeply\)"),
    ('{"a": ' + "9" * 5000 + "}", "not valid JSON"),
    ("[1, 2]", "expected a JSON object, got list"),
])
def test_json_files_that_cannot_be_read_are_one_line_errors(published_repo, tmp_path, name, content, needle):
    """Not UTF-8, nested 100,000 deep, a 5,000-digit number, not an object: one CheckpointError
    naming the file, never a traceback from the parser."""
    repo = tmp_path / "repo"
    shutil.copytree(published_repo[0], repo, ignore=shutil.ignore_patterns("original"))
    (repo / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(CheckpointError, match=re.escape(str(repo / name)) + ".*" + needle):
        _read_the_file(repo, name)


@pytest.mark.parametrize("value", ["mxfp4", ["mxfp4"], 5])
def test_a_quantization_config_that_is_not_an_object_is_refused_by_name(published_repo, tmp_path, value):
    repo = _variant(published_repo[0], tmp_path, "q", lambda d: d.update(quantization_config=value))
    with pytest.raises(CheckpointError, match="quantization_config"):
        read_config(repo)


@pytest.mark.parametrize("eos", [["<|end|>"], [1.5], "x", [], True, -1])
def test_an_eos_token_id_that_is_not_token_ids_is_refused_by_name(published_repo, tmp_path, eos):
    from moekit.chat import stop_ids

    repo = tmp_path / "repo"
    shutil.copytree(published_repo[0], repo, ignore=shutil.ignore_patterns("original"))
    (repo / "generation_config.json").write_text(json.dumps({"eos_token_id": eos}))
    with pytest.raises(CheckpointError, match=r"generation_config\.json: eos_token_id expected a token id"):
        stop_ids(repo, tokenizer=None)


@pytest.mark.parametrize("pair", [("num_experts_per_tok", "experts_per_token"), ("num_local_experts", "num_experts")])
def test_aliases_that_disagree_are_refused(published_repo, tmp_path, pair):
    hf_key, our_key = pair
    repo = _variant(published_repo[0], tmp_path, "alias", lambda d: d.update({our_key: d[hf_key] + 1}))
    with pytest.raises(CheckpointError, match=f"{hf_key} .* and {our_key} .* disagree"):
        read_config(repo)


@pytest.mark.parametrize("change,needle", [
    (dict(num_hidden_layers=10 ** 9), "num_hidden_layers: expected at most 4096"),
    (dict(initial_context_length=2 ** 62), "positions are int32"),
])
def test_absurd_sizes_are_refused_before_any_file_is_read(published_repo, tmp_path, change, needle):
    """A config of a billion layers built its tensor list (and ran out of memory after 28 s)
    before comparing it with the files; a context of 2**62 positions was accepted."""
    repo = tmp_path / "repo"
    shutil.copytree(published_repo[0] / "original", repo)
    config = json.loads((repo / "config.json").read_text())
    (repo / "config.json").write_text(json.dumps({**config, **change}))
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=needle):
        load_model(repo, "cpu", progress=False)
    assert time.perf_counter() - start < 5


@pytest.mark.parametrize("which", ["config.json", "shard", "model.safetensors.index.json", "chat_template.jinja",
                                   "tokenizer.json", "special_tokens_map.json"])
def test_links_out_of_the_folder_are_refused(published_repo, tmp_path, which):
    """A file of the folder that links elsewhere (the loader's config, index and shards, the
    tokenizer files the runner and the converter read) is refused before it is read; the
    converter no longer copies such a link's target in as a regular file."""
    from moekit import chat
    from moekit.models import find_tokenizer

    repo = tmp_path / "repo"
    shutil.copytree(published_repo[0], repo, ignore=shutil.ignore_patterns("original"))
    index = json.loads((repo / "model.safetensors.index.json").read_text())["weight_map"]
    name = sorted(set(index.values()))[0] if which == "shard" else which
    outside = tmp_path / "outside"
    outside.mkdir()
    if (repo / name).exists():
        shutil.move(repo / name, outside / name)
    else:
        (outside / name).write_text("{}")
    (repo / name).symlink_to(outside / name)
    with pytest.raises(CheckpointError, match=re.escape(str(repo / name)) + ": a link out of its folder"):
        if name == "config.json":
            read_config(repo)
        elif name == "chat_template.jinja":
            chat.chat_prompt(repo, "hi")
        elif name == "tokenizer.json":
            find_tokenizer(repo)
        elif name == "special_tokens_map.json":
            convert_checkpoint(repo, tmp_path / "out", "original")
        else:
            load_model(repo, "cpu", progress=False)


def test_a_hugging_face_cache_snapshot_loads(published_repo, tmp_path):
    """The hub cache keeps a snapshot's files as links into the repository's blobs/: allowed."""
    root = published_repo[0]
    cache = tmp_path / "models--openai--gpt-oss-tiny"
    (cache / "blobs").mkdir(parents=True)
    snapshot = cache / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    for i, file in enumerate(sorted(f for f in root.iterdir() if f.is_file())):
        shutil.copyfile(file, cache / "blobs" / f"blob{i}")
        (snapshot / file.name).symlink_to(Path("..") / ".." / "blobs" / f"blob{i}")
    ids = torch.tensor(PROMPT)
    ours = load_model(snapshot, "cpu", dtype=torch.float32, progress=False)
    assert torch.equal(ours(ids), load_model(root, "cpu", dtype=torch.float32, progress=False)(ids))


def _variant(root, tmp_path, name, edit):
    """A copy of the repository's root (HF layout) whose config.json went through edit(dict)."""
    repo = tmp_path / name
    shutil.copytree(root, repo, ignore=shutil.ignore_patterns("original"))
    config = json.loads((repo / "config.json").read_text())
    edit(config)
    (repo / "config.json").write_text(json.dumps(config))
    return repo


def _drop(*keys, within=None):
    def edit(d):
        for key in keys:
            (d[within] if within else d).pop(key)
    return edit


@pytest.mark.parametrize("name,edit", [
    ("no_rope_scaling", _drop("rope_scaling", "max_position_embeddings")),  # transformers: YaRN 32 over 4096
    ("null_rope_scaling", lambda d: (d.update(rope_scaling=None), d.pop("max_position_embeddings"))),
    ("no_sliding_window", _drop("sliding_window")),  # transformers: 128
    ("mscale_alone", lambda d: d["rope_scaling"].update(mscale=1.0)),  # transformers ignores it without mscale_all_dim
])
def test_hf_config_defaults_read_as_transformers_reads_them(published_repo, tmp_path, name, edit):
    """One config.json, two models: the keys a config leaves out take transformers' defaults, so
    the logits agree with transformers' own model of the same folder (a prompt longer than its
    128-token default window)."""
    from transformers import GptOssForCausalLM

    repo = _variant(published_repo[0], tmp_path, name, edit)
    ours = load_model(repo, "cpu", dtype=torch.float32, progress=False)
    ids = torch.arange(140) % ours.config.vocab_size
    theirs = GptOssForCausalLM.from_pretrained(repo, dtype=torch.float32).float().eval()
    with torch.no_grad():
        err = (ours(ids) - theirs(ids[None]).logits[0]).abs().max().item()
    assert err < 1e-4, err


@pytest.mark.parametrize("name,edit,needle", [
    ("no_truncate", _drop("truncate", within="rope_scaling"), "rope_scaling.truncate"),
    ("attention_factor", lambda d: d["rope_scaling"].update(attention_factor=1.5), "rope_scaling.attention_factor"),
    ("mscale_pair", lambda d: d["rope_scaling"].update(mscale=1.0, mscale_all_dim=1.0),
     "rope_scaling.mscale / mscale_all_dim"),
    ("max_position_embeddings", lambda d: d.update(max_position_embeddings=8192), "max_position_embeddings 8192"),
    ("null_sliding_window", lambda d: d.update(sliding_window=None), "sliding_window is null"),
    ("no_rope_type", _drop("rope_type", within="rope_scaling"), "rope_scaling.rope_type is missing"),
    ("no_factor", _drop("factor", within="rope_scaling"), "rope_scaling.factor is missing"),
    ("rope_scaling_string", lambda d: d.update(rope_scaling="yarn"), "rope_scaling: expected an object"),
])
def test_hf_config_keys_moekit_cannot_compute_are_refused_by_name(published_repo, tmp_path, name, edit, needle):
    """Where transformers would compute something gpt-oss's model does not (a truncated YaRN
    range, another attention factor, another context, no window), the load stops with one line
    naming config.json and the key, never a guess."""
    repo = _variant(published_repo[0], tmp_path, name, edit)
    with pytest.raises(CheckpointError, match=r"config\.json: " + re.escape(needle)):
        read_config(repo)


# ------------------------------------------------------------------------------ the converter

def folder_bytes(folder):
    """Every visible file of a folder (not its subfolders) by name -> bytes."""
    return {f.name: f.read_bytes() for f in sorted(folder.iterdir()) if f.is_file() and not f.name.startswith(".")}


def test_converter_keeps_what_the_published_folders_hold(published_repo, tmp_path):
    """As published: original/ has dtypes.json and writes rope_theta and the NTK betas as integers;
    the HF config has the token ids and transformers_version, which a conversion carries from
    the HF config it came from (the source's, or the repository's around an original/ source);
    the terms (LICENSE, USAGE_POLICY) travel with the tokenizer files."""
    from safetensors import safe_open

    repo = tmp_path / "repo"
    shutil.copytree(published_repo[0], repo)
    config = json.loads((repo / "config.json").read_text())
    ids = dict(eos_token_id=3, pad_token_id=2, transformers_version="4.55.0.dev0")
    (repo / "config.json").write_text(json.dumps({**config, **ids}))
    terms = {"LICENSE": "Apache License 2.0\n", "USAGE_POLICY": "Use it well.\n"}
    for name, text in terms.items():
        (repo / name).write_text(text)

    convert_checkpoint(repo, tmp_path / "original", "original")
    written = json.loads((tmp_path / "original" / "config.json").read_text())
    assert [type(written[k]) for k in ("rope_theta", "rope_ntk_alpha", "rope_ntk_beta")] == [int, int, int]
    assert type(written["rope_scaling_factor"]) is float and type(written["swiglu_limit"]) is float
    dtypes = json.loads((tmp_path / "original" / "dtypes.json").read_text())
    with safe_open(tmp_path / "original" / "model.safetensors", "pt") as f:
        assert set(dtypes) == set(f.keys())
    assert dtypes["block.0.mlp.mlp1_weight.blocks"] == "FP4" and dtypes["block.0.mlp.mlp2_weight.scales"] == "UE8"
    assert dtypes["embedding.weight"] == dtypes["block.1.attn.qkv.weight"] == "BF16"

    for src, out in ((repo, "hf_from_hf"), (repo / "original", "hf_from_original")):
        convert_checkpoint(src, tmp_path / out, "hf")
        hf = json.loads((tmp_path / out / "config.json").read_text())
        assert {k: hf.get(k) for k in ids} == ids, out
        assert type(hf["rope_theta"]) is int and type(hf["rope_scaling"]["beta_slow"]) is float
    for folder in ("original", "hf_from_hf", "hf_from_original"):
        assert {name: (tmp_path / folder / name).read_text() for name in terms} == terms, folder


def test_converter_refuses_a_destination_that_holds_a_checkpoint_unless_forced(published_repo, tmp_path):
    """Converting into a folder holding the other layout left its index behind and the next load
    failed: now it is refused, and --force replaces that checkpoint whole (the stale index goes)."""
    root, _ = published_repo
    dst = tmp_path / "dst"
    convert_checkpoint(root, dst, "hf", max_shard_bytes=40_000)
    with pytest.raises(ValueError, match="already holds a checkpoint.*--force"):
        convert_checkpoint(root, dst, "original")
    (dst / "notes.txt").write_text("mine")
    convert_checkpoint(root, dst, "original", force=True)
    assert not (dst / "model.safetensors.index.json").exists() and (dst / "notes.txt").read_text() == "mine"
    assert folder_bytes(dst)["model.safetensors"] == (root / "original" / "model.safetensors").read_bytes()
    ids = torch.tensor(PROMPT)
    assert torch.equal(load_model(dst, "cpu", dtype=torch.float32, progress=False)(ids),
                       load_model(root, "cpu", dtype=torch.float32, progress=False)(ids))


def test_a_forced_conversion_leaves_nothing_of_the_checkpoint_it_replaces(published_repo, tmp_path):
    """--force over a folder with a tokenizer, a chat template and a stray shard, from a source
    with neither: the old tokenizer files and the stray shard go (they outlived the conversion,
    and the stray shard then broke the load); the folder loads as the source does."""
    root, _ = published_repo
    dst, bare = tmp_path / "dst", tmp_path / "bare" / "original"
    convert_checkpoint(root, dst, "hf", max_shard_bytes=40_000)
    assert (dst / "tokenizer.json").is_file() and (dst / "chat_template.jinja").is_file()
    shutil.copytree(root / "original", bare)  # no tokenizer in it nor beside it
    (dst / "extra.safetensors").write_bytes((root / "original" / "model.safetensors").read_bytes())
    convert_checkpoint(bare, dst, "hf", max_shard_bytes=40_000, force=True)
    left = {f.name for f in dst.iterdir()}
    assert not left & {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "extra.safetensors"}, left
    ids = torch.tensor(PROMPT)
    assert torch.equal(load_model(dst, "cpu", dtype=torch.float32, progress=False)(ids),
                       load_model(root, "cpu", dtype=torch.float32, progress=False)(ids))


def test_converter_never_writes_onto_its_source(published_repo, tmp_path):
    root, _ = published_repo
    src = tmp_path / "src"
    shutil.copytree(root / "original", src)
    for dst in (src, src / "inner"):
        with pytest.raises(ValueError, match="is the source"):
            convert_checkpoint(src, dst, "hf", force=True)
    assert folder_bytes(src) == folder_bytes(root / "original")


def test_converter_cli_help_and_file_modes(published_repo, tmp_path):
    """No runpy warning, SRC / DST / --layout explained, and files as readable as the umask allows
    (safetensors wrote 0600)."""
    proc = subprocess.run([sys.executable, "-m", "moekit.models.convert", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    for word in ("SRC", "DST", "--layout", "--force", "original/"):
        assert word in proc.stdout, word
    root, _ = published_repo
    mask = os.umask(0o022)
    try:
        convert_checkpoint(root, tmp_path / "out", "original")
    finally:
        os.umask(mask)
    for f in (tmp_path / "out").iterdir():
        assert f.stat().st_mode & 0o777 == 0o644, f


@pytest.mark.parametrize("over", ["empty", "earlier"])
def test_a_killed_conversion_never_leaves_a_mix(tmp_path, over):
    """SIGKILL at 10 random points of a conversion of the shipped model into ~660 small shards
    (into an empty folder, or with --force over an earlier conversion to the other layout): the
    folder is then the earlier checkpoint, the complete new one byte for byte, or without
    config.json, which the loader refuses."""
    import random

    from moekit.generate import DEFAULT_CHECKPOINT

    cmd = [sys.executable, "-m", "moekit.models.convert", str(DEFAULT_CHECKPOINT), "", "--layout", "hf",
           "--max-shard-mb", "0.05", "--force"]

    def run(dst, kill_after=None):
        """Runs the converter into dst; from when its staging folder appears, kills it after
        kill_after seconds, or returns how long it took from then to put config.json in place."""
        proc = subprocess.Popen(cmd[:4] + [str(dst)] + cmd[5:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while proc.poll() is None and not list(dst.glob(".moekit-convert-*")):
            time.sleep(0.001)
        staged = time.monotonic()
        if kill_after is None:
            while proc.poll() is None and not (dst / "config.json").exists():
                time.sleep(0.001)
            took = time.monotonic() - staged
            assert proc.wait(timeout=300) == 0
            return took
        time.sleep(kill_after)
        proc.kill()
        proc.wait()

    # The fastest of two runs (the first reads the shipped model cold), so that the kills below
    # spread over a conversion as long as the tries' own, not one slowed by a cold cache.
    writing = min(run(tmp_path / f"reference{j}") for j in range(2))
    want = folder_bytes(tmp_path / "reference0")
    assert folder_bytes(tmp_path / "reference1") == want
    earlier = None
    rng = random.Random(over)
    unfinished = 0  # tries that stopped before the new checkpoint was whole: the kills must land there too
    for i in range(10):
        dst = tmp_path / f"try{i}"
        if over == "earlier":
            convert_checkpoint(DEFAULT_CHECKPOINT, dst, "original")
            earlier = folder_bytes(dst)
        run(dst, kill_after=rng.uniform(0.0, 1.1) * writing)  # writing the shards, or moving them
        got = folder_bytes(dst) if dst.exists() else {}
        if "config.json" in got:
            assert got == want or got == earlier, f"try {i}: a mix of {sorted(got)[:5]}..."
            unfinished += got == earlier
        else:
            unfinished += 1
            with pytest.raises((CheckpointError, CheckpointNotFoundError, FileNotFoundError)):
                load_model(dst, "cpu", progress=False)
    assert unfinished >= 3, f"only {unfinished} of 10 kills landed before the conversion finished"


@pytest.mark.parametrize("stop_after", [0, 1, 2, 40, -1])
def test_a_conversion_stopped_while_moving_files_in_refuses_to_load(tmp_path, monkeypatch, stop_after):
    """The moves into place, stopped after `stop_after` of them (-1: all but the last, config.json):
    the earlier checkpoint's config and shard are gone, and without config.json the folder refuses
    to load."""
    from moekit.generate import DEFAULT_CHECKPOINT
    from moekit.models import convert as converter

    dst = tmp_path / "dst"
    convert_checkpoint(DEFAULT_CHECKPOINT, dst, "original")
    earlier = folder_bytes(dst)
    real, moved = os.replace, []

    def replace(a, b):
        if stop_after >= 0 and len(moved) == stop_after or stop_after < 0 and Path(b).name == "config.json":
            raise KeyboardInterrupt("stopped")
        moved.append(b)
        real(a, b)

    monkeypatch.setattr(converter.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        convert_checkpoint(DEFAULT_CHECKPOINT, dst, "hf", max_shard_bytes=50_000, force=True)
    got = folder_bytes(dst)
    assert "model.safetensors" in earlier  # the earlier (original layout) shard, which the hf one does not reuse
    assert "config.json" not in got and "model.safetensors" not in got, sorted(got)[:5]
    with pytest.raises((CheckpointError, CheckpointNotFoundError, FileNotFoundError)):
        load_model(dst, "cpu", progress=False)


@pytest.mark.parametrize("loader", ["runner", "transformers"])
def test_a_load_that_overlaps_a_conversion_is_refused(published_repo, tmp_path, monkeypatch, loader):
    """A conversion with --force replaces the folder (from another checkpoint of the same shapes,
    differing in its first shard and its last) after the loader opened the first shard: the
    loader refuses, rather than loading the first shard's tensors from one checkpoint and the
    last's from the other."""
    import safetensors
    from safetensors.torch import load_file, save_file

    from moekit.transformers_gpt_oss import from_pretrained

    root, _ = published_repo
    a, b, dst = tmp_path / "a", tmp_path / "b", tmp_path / "dst"
    convert_checkpoint(root, a, "hf", max_shard_bytes=40_000)
    shutil.copytree(a, b)  # b: a's model with a tensor of its first shard and of its last changed
    shards = sorted(set(json.loads((b / "model.safetensors.index.json").read_text())["weight_map"].values()))
    assert len(shards) >= 3
    for shard in (shards[0], shards[-1]):
        tensors = load_file(b / shard)
        name = sorted(tensors)[0]
        tensors[name] = tensors[name] * 2 if tensors[name].is_floating_point() else tensors[name] // 2
        save_file(tensors, str(b / shard), metadata={"format": "pt"})
    convert_checkpoint(a, dst, "hf", max_shard_bytes=40_000)

    real, opened = safetensors.safe_open, []

    def safe_open(file, *args, **kwargs):
        opened.append(file)
        if len(opened) == 2:  # the loader has its first shard open: b's conversion replaces the folder
            convert_checkpoint(b, dst, "hf", max_shard_bytes=40_000, force=True)
        return real(file, *args, **kwargs)

    monkeypatch.setattr(safetensors, "safe_open", safe_open)
    with pytest.raises(CheckpointError, match="changed while they were being opened"):
        if loader == "runner":
            load_model(dst, "cpu", progress=False)
        else:
            from_pretrained(dst)
    monkeypatch.undo()
    assert folder_bytes(dst) == folder_bytes(b)  # the folder now holds b, whole
    load_model(dst, "cpu", progress=False)


def test_one_conversion_at_a_time_writes_into_a_folder(published_repo, tmp_path):
    """While a conversion holds the destination (its lock, here held by the test), another into
    the same folder is refused and writes nothing; once it is released, the conversion runs and
    removes the staging folders that killed conversions left."""
    import fcntl

    root, _ = published_repo
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / ".moekit-convert-4194304").mkdir()  # as a conversion killed while writing leaves it
    (dst / ".moekit-convert-4194304" / "model-00001-of-00002.safetensors").write_bytes(b"partial")
    fd = os.open(dst, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(ValueError, match="another conversion is writing into"):
            convert_checkpoint(root, dst, "original")
        assert sorted(p.name for p in dst.iterdir()) == [".moekit-convert-4194304"]
    finally:
        os.close(fd)
    convert_checkpoint(root, dst, "original")
    assert not list(dst.glob(".moekit-convert-*"))
    load_model(dst, "cpu", progress=False)
