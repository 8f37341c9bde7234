"""Batch-1 generation for :class:`moekit.models.GptOss`: an eager prefill, then one decode step
per new token, replayed from a CUDA graph where it can be.

The step's whole state lives on the model's device: the input token, the KV cache and its
position (:attr:`KVCache.position`), the uniform draws of sampling and the generated ids, each
stored at its position. A step therefore reads nothing from the host: on CUDA it is captured
once per :class:`Decoder` and replayed, and the host reads the new ids only every few steps (to
look for stop ids) or once at the end. The draws come from a CPU generator seeded up front, so
every device and every rank samples alike. Eager decode runs the same kernels and gives the same
tokens.
"""

from __future__ import annotations

from typing import List, Optional, Set

import torch
import torch.distributed as dist

import moekit
from moekit.models.gpt_oss import KVCache, sample_token

# Steps between two reads of the new ids when stop ids may end the generation early (without
# stop ids the ids are read once, at the end).
READ_EVERY = 16


def graph_capable(model) -> bool:
    """Whether ``model``'s decode step can be captured in a CUDA graph: the model is on a CUDA
    device and, across ranks, its collectives go through NCCL (gloo's cannot be captured)."""
    if model.device.type != "cuda":
        return False
    return model.tp.world_size == 1 or dist.get_backend(model.group) == "nccl"


class Decoder:
    """Generation state for one model: a KV cache of ``capacity`` positions, the sampling
    settings and, with ``graph``, the captured decode step. :meth:`GptOss.generate` keeps one
    while later calls fit in it (:meth:`fits`)."""

    def __init__(self, model, capacity: int, temperature: float, top_p: float, graph: bool):
        self.model = model
        self.capacity = capacity
        self.temperature, self.top_p, self.graph_mode = temperature, top_p, graph
        device = model.device
        self.cache = KVCache(model, capacity)
        self.token = torch.zeros(1, dtype=torch.int32, device=device)        # the step's input
        self.ids = torch.zeros(capacity, dtype=torch.int32, device=device)   # generated ids by position
        self.uniform = torch.zeros(capacity, dtype=torch.float32, device=device)  # draws by position
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        if graph:
            self._capture()

    def fits(self, capacity: int, temperature: float, top_p: float, graph: bool) -> bool:
        return (capacity <= self.capacity and (temperature, top_p, graph) ==
                (self.temperature, self.top_p, self.graph_mode))

    # --------------------------------------------------------------------------------- step
    def _step(self) -> None:
        """Feeds ``token`` at the cache's position, samples the next token into ``token`` and
        into ``ids`` at the next position."""
        self._pick(self.model.logits(self.token, self.cache, last_only=True))

    def _pick(self, logits: torch.Tensor) -> None:
        """Samples the token after ``logits`` [1, vocab] into ``token`` and into ``ids`` at the
        cache's position (already advanced past the tokens that gave the logits)."""
        if self.temperature == 0:  # one kernel: the argmax into token and ids[position], no draw
            moekit.greedy_token(logits[0], self.cache.position, self.token, self.ids)
            return
        at = self.cache.position.long()
        token = sample_token(logits[0], self.temperature, self.top_p, self.uniform.index_select(0, at)).int()
        self.token.copy_(token)
        self.ids.index_copy_(0, at, token)

    def _capture(self) -> None:
        """Captures :meth:`_step` at position 0 of an empty cache. A warm-up step runs first on
        the capture stream (first calls set kernel attributes and create library handles, which
        must not happen while capturing); the cache is reset afterwards."""
        device = self.model.device
        with torch.cuda.device(device):  # the capture runs on the model's device, whatever is current
            stream = torch.cuda.Stream(device)
            stream.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(stream):
                self._step()
            torch.cuda.current_stream(device).wait_stream(stream)
            self.cache.reset()
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph, stream=stream):
                self._step()
            self.cache.reset()

    def _run_step(self) -> None:
        if self.graph is None:
            self._step()
        else:
            self.graph.replay()
            self.cache.pos += 1  # the host's count of what the replay did on the device

    # ----------------------------------------------------------------------------- generate
    def generate(self, prompt: List[int], max_new_tokens: int, seed: Optional[int], stop: Set[int],
                 prefill_chunk: int) -> List[int]:
        """``max_new_tokens`` (>= 1) ids after ``prompt``, fewer if one of ``stop`` comes first."""
        model, n = self.model, len(prompt)
        model.check_token_ids("GptOss.generate", min(prompt), max(prompt))
        model._check_distributed()
        self.cache.reset()
        if self.temperature > 0:
            draws = torch.rand(max_new_tokens, generator=torch.Generator().manual_seed(int(seed)))
            self.uniform[n:n + max_new_tokens].copy_(draws)
        ids = torch.tensor(prompt, dtype=torch.int64, device=model.device)
        for begin in range(0, n, prefill_chunk):
            logits = model.logits(ids[begin:begin + prefill_chunk], self.cache, last_only=True)
        self._pick(logits)

        produced, out = 1, []
        while True:
            if stop or produced == max_new_tokens:
                for token in self.ids[n + len(out):n + produced].tolist():
                    out.append(token)
                    if token in stop:
                        return out
                if produced == max_new_tokens:
                    return out
            for _ in range(min(max_new_tokens - produced, READ_EVERY if stop else max_new_tokens)):
                self._run_step()
                produced += 1
