"""The bad-input matrix (tests/python/bad_inputs.py), each case in its own process, on the CPU and,
where there is one, on a GPU (cases that apply there).

Every case must raise the expected exception, whose message names the op and the argument and
says what came; no case may crash its process. On the CPU the meta version of each case must be
refused alike (same exception, same message): the fake kernels share the C++ checks. Every edge
must return its documented result.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bad_inputs import CASES, EDGES, meta_applies

HERE = Path(__file__).resolve().parent


def run_matrix(device: str) -> dict:
    no_site = ["-S"] if sys.flags.no_site else []  # keep the interpreter's setup (tools/sanitize.sh uses -S)
    proc = subprocess.run([sys.executable, *no_site, str(HERE / "bad_inputs.py"), "--device", device],
                          capture_output=True, text=True, timeout=900, cwd=HERE)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {r["id"]: r for r in map(json.loads, proc.stdout.splitlines())}


@pytest.fixture(scope="module")
def cpu_records():
    return run_matrix("cpu")


@pytest.fixture(scope="module")
def cuda_records():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return run_matrix("cuda")


def check_case(case, record):
    assert "died" not in record, f"the case's process died: {record}"
    assert "runner_error" not in record, record["runner_error"]
    msg = record["message"] or ""
    assert record["raised"] == case.exc.__name__, f"{record['raised']} instead of {case.exc.__name__}: {msg}"
    assert f"moekit.{case.op}" in msg, f"message does not name the op: {msg}"
    assert f"'{case.arg}" in msg, f"message does not name '{case.arg}': {msg}"
    assert any(c.lower() in msg.lower() for c in case.came), f"message does not say what came {case.came}: {msg}"


def ids(cases):
    return [f"{c.op}-{c.name}" for c in cases]


CPU_CASES = [c for c in CASES if "cpu" in c.devices]
CUDA_CASES = [c for c in CASES if "cuda" in c.devices and not c.data]


@pytest.mark.parametrize("case", CPU_CASES, ids=ids(CPU_CASES))
def test_cpu(cpu_records, case):
    record = cpu_records[f"{case.op}-{case.name}"]
    check_case(case, record)
    if meta_applies(case):
        assert (record["meta_raised"], record["meta_message"]) == (record["raised"], record["message"]), \
            "the meta call is not refused as the real one"


@pytest.mark.parametrize("edge", EDGES, ids=[e.name for e in EDGES])
def test_cpu_edge(cpu_records, edge):
    record = cpu_records[edge.name]
    assert "died" not in record, f"the edge's process died: {record}"
    assert record["ok"], record


@pytest.mark.parametrize("case", CUDA_CASES, ids=ids(CUDA_CASES))
def test_cuda(cuda_records, case):
    check_case(case, cuda_records[f"{case.op}-{case.name}"])


@pytest.mark.parametrize("edge", EDGES, ids=[e.name for e in EDGES])
def test_cuda_edge(cuda_records, edge):
    record = cuda_records[edge.name]
    assert "died" not in record, f"the edge's process died: {record}"
    assert record["ok"], record


def test_cases_cover_every_op():
    assert {c.op for c in CASES} == {"moe_mlp", "matmul_ogs", "route", "quantize_mxfp4", "dequantize_mxfp4", "repack_mxfp4",
                                     "add_rms_norm", "attention_decode", "greedy_token"}


def test_meta_is_compared_for_most_cases():
    compared = [c for c in CPU_CASES if meta_applies(c)]
    assert len(compared) >= 0.6 * len(CPU_CASES), (len(compared), len(CPU_CASES))
