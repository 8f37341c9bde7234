"""The runner refuses bad arguments and environments before any work, with one line (exit 2), and
a rank whose peer stops answering ends with one line (exit 3) after --dist-timeout.

Each case runs `python -m moekit.generate` in its own process on the shipped tiny model.
"""

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

TIMEOUT = 120


def run_cli(*args, env=None, prompt_bytes=None):
    cmd = [sys.executable, "-m", "moekit.generate", "--device", "cpu", "--no-progress", *args]
    if prompt_bytes is not None:
        cmd = [os.fsencode(c) for c in cmd] + [b"--prompt", prompt_bytes]
    full_env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR",
                                                                 "MASTER_PORT")}
    full_env.update(env or {})
    full_env["OMP_NUM_THREADS"] = "1"
    return subprocess.run(cmd, capture_output=True, timeout=TIMEOUT, env=full_env)


def assert_one_line_error(proc, *needles, code=2):
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode == code, f"exit {proc.returncode}\n{err[-3000:]}"
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert "error:" in lines[-1], err
    for needle in needles:
        assert needle in lines[-1], f"{needle!r} not in {lines[-1]!r}"


def test_prompt_that_is_not_utf8():
    assert_one_line_error(run_cli(prompt_bytes=b"caf\xe9 \xff"), "--prompt", "UTF-8")


@pytest.mark.parametrize("n", [10 ** 9, 10 ** 18, 2 ** 70])
def test_max_new_tokens_beyond_the_context(n):
    start = time.monotonic()
    proc = run_cli("--max-new-tokens", str(n))
    assert_one_line_error(proc, "--max-new-tokens", "131072 positions")
    assert time.monotonic() - start < 60  # refused before loading, not after allocating a cache


@pytest.mark.parametrize("value", ["inf", "nan", "-1"])
def test_temperature_not_finite_or_negative(value):
    assert_one_line_error(run_cli("--temperature", value), "--temperature")


@pytest.mark.parametrize("value", [str(2 ** 70), "-1"])
def test_seed_out_of_range(value):
    assert_one_line_error(run_cli("--seed", value), "--seed")


@pytest.mark.parametrize("value", ["0", "-5", "inf", "nan"])
def test_dist_timeout_must_be_positive_and_finite(value):
    assert_one_line_error(run_cli("--dist-timeout", value), "--dist-timeout")


def test_output_json_checked_before_generating(tmp_path):
    assert_one_line_error(run_cli("--output-json", str(tmp_path / "missing" / "out.json")), "--output-json",
                          "does not exist")
    assert_one_line_error(run_cli("--output-json", str(tmp_path)), "--output-json", "is a directory")


def test_output_json_never_overwrites_the_checkpoint(tmp_path):
    """Inside the checkpoint folder, or onto a file the runner reads beside it (the published
    layout keeps the tokenizer beside original/): refused before anything is read or written."""
    import shutil

    from moekit.generate import DEFAULT_CHECKPOINT

    repo = tmp_path / "repo"
    shutil.copytree(DEFAULT_CHECKPOINT, repo / "original")
    (repo / "tokenizer.json").write_bytes((repo / "original" / "tokenizer.json").read_bytes())
    before = (repo / "original" / "config.json").read_bytes()
    for out in (repo / "original" / "config.json", repo / "original" / "new.json", repo / "tokenizer.json"):
        assert_one_line_error(run_cli("--checkpoint", str(repo / "original"), "--output-json", str(out)),
                              "--output-json", "would overwrite the checkpoint's files")
    assert (repo / "original" / "config.json").read_bytes() == before
    assert run_cli("--checkpoint", str(repo / "original"), "--max-new-tokens", "1", "--output-json",
                   str(repo / "out.json")).returncode == 0


def test_world_size_without_torchrun():
    assert_one_line_error(run_cli(env={"WORLD_SIZE": "2"}), "WORLD_SIZE=2", "MASTER_ADDR", "torchrun")
    assert_one_line_error(run_cli(env={"WORLD_SIZE": "two"}), "WORLD_SIZE")
    assert_one_line_error(run_cli(env={"WORLD_SIZE": "2", "RANK": "2", "MASTER_ADDR": "127.0.0.1",
                                       "MASTER_PORT": "1"}), "RANK=2")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_stopped_peer_ends_the_other_rank_after_the_timeout():
    """Two ranks by hand (as torchrun would start them); rank 1 is stopped (SIGSTOP) mid-run:
    rank 0 must end within --dist-timeout plus slack with one line, and rank 1, continued once
    rank 0 is gone, too."""
    port = str(_free_port())
    procs = []
    for rank in range(2):
        env = {k: v for k, v in os.environ.items()}
        env.update(WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=port,
                   OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "moekit.generate", "--device", "cpu", "--no-progress", "--dist-timeout", "5",
             "--max-new-tokens", "100000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env))
    try:
        time.sleep(3)
        procs[1].send_signal(signal.SIGSTOP)
        start = time.monotonic()
        _, err0 = procs[0].communicate(timeout=60)
        assert time.monotonic() - start < 40
        assert procs[0].returncode == 3, err0.decode()[-3000:]
        assert "Traceback" not in err0.decode()
        assert "rank 0: lost the other ranks" in err0.decode().strip().splitlines()[-1]
        procs[1].send_signal(signal.SIGCONT)
        _, err1 = procs[1].communicate(timeout=60)
        assert procs[1].returncode == 3, err1.decode()[-3000:]
        assert "rank 1: lost the other ranks" in err1.decode().strip().splitlines()[-1]
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.kill()
                p.wait()


def test_preflight_refuses_ranks_that_cannot_shard_the_model():
    """The shipped model's intermediate size 128 splits over 1, 2 or 4 ranks in whole MXFP4
    blocks, not over 3: the preflight (make run's) says so before torchrun starts any rank."""
    assert_one_line_error(run_cli("--preflight", "3"), "3 rank(s)", "world size 3 cannot shard")
    assert run_cli("--preflight", "2").returncode == 0


@pytest.mark.parametrize("nproc", ["0", "two", "", "-1"])
def test_make_run_refuses_an_nproc_that_is_not_a_number_of_ranks(nproc):
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(["make", "-s", "-o", "install", "run", f"NPROC={nproc}"], cwd=root, capture_output=True,
                          timeout=TIMEOUT)
    err = proc.stderr.decode(errors="replace")
    # make's own "make: ***" line (make[1] when the tests run under make test)
    lines = [line for line in err.splitlines() if line.strip() and not re.match(r"make(\[\d+\])?: \*\*\*", line)]
    assert proc.returncode == 2, err
    assert lines == [f"make run: NPROC expected a whole number of ranks >= 1, got '{nproc}'"], err


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_output_json_that_fails_to_write_is_one_line_after_the_text():
    """/dev/full passes every check a path allows before generating and fails on the write: the
    generated text is already out, and the failure is one line with exit status 1."""
    proc = run_cli("--max-new-tokens", "2", "--output-json", "/dev/full")
    assert proc.stdout.strip(), "the generated text comes first"
    assert_one_line_error(proc, "--output-json /dev/full", "No space left on device", code=1)
