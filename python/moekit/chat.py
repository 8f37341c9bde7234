"""Chat prompts from a checkpoint's own chat template (gpt-oss ships the harmony format's).

The template is rendered the way transformers' ``apply_chat_template`` renders it (a sandboxed
Jinja environment with trimmed blocks, loop controls, ``tojson``, ``raise_exception`` and
``strftime_now``), for one user message and the assistant's turn to come. Generation stops at
the checkpoint's end-of-turn tokens: generation_config.json's ``eos_token_id``, else
config.json's, else harmony's ``<|return|>`` and ``<|call|>`` where the vocabulary has them.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import signal
import threading
from pathlib import Path
from typing import List, Optional

from moekit.models.checkpoint import CheckpointError, chat_template_source, find_beside, read_json_object

HARMONY_STOPS = ("<|return|>", "<|call|>")


# Bounds on rendering a checkpoint's template, which is data: wall time (where a timer can stop
# it: the main thread of a POSIX process) and output characters.
RENDER_SECONDS = 10.0
RENDER_CHARS = 1_000_000


class TemplateTooCostly(Exception):
    pass


@contextlib.contextmanager
def _time_limit(seconds: float):
    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise TemplateTooCostly(f"took longer than {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def render(template: str, prompt: str) -> str:
    """The text of a one-message conversation, ready for the assistant's reply. Raises
    TemplateTooCostly past RENDER_SECONDS or RENDER_CHARS, and Jinja's errors."""
    import jinja2
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = lambda x, indent=None, ensure_ascii=False: json.dumps(x, indent=indent,
                                                                                ensure_ascii=ensure_ascii)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    chunks, size = [], 0
    with _time_limit(RENDER_SECONDS):
        for chunk in env.from_string(template).generate(messages=[{"role": "user", "content": prompt}],
                                                        add_generation_prompt=True):
            size += len(chunk)
            if size > RENDER_CHARS:
                raise TemplateTooCostly(f"rendered more than {RENDER_CHARS} characters")
            chunks.append(chunk)
    return "".join(chunks)


def chat_prompt(checkpoint: Path, prompt: str) -> Optional[str]:
    """``prompt`` as a chat turn in the checkpoint's template, or None if it ships none. A
    template that fails (not UTF-8, a syntax or render error, a sandbox refusal, too costly) is
    one CheckpointError naming its file."""
    found = chat_template_source(checkpoint)
    if found is None:
        return None
    template, source = found
    import jinja2

    try:
        text = render(template, prompt)
    except (jinja2.exceptions.TemplateError, TemplateTooCostly, RecursionError, ArithmeticError, TypeError,
            ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"{source}: the chat template failed to render ({type(e).__name__}: {first})") from None
    if not text.strip():
        raise CheckpointError(f"{source}: the chat template rendered nothing for the prompt")
    return text


def stop_ids(checkpoint: Path, tokenizer) -> List[int]:
    """The token ids that end the assistant's turn (see the module docstring)."""
    for name in ("generation_config.json", "config.json"):
        found = find_beside(checkpoint, name)
        if found is not None:
            eos = read_json_object(found).get("eos_token_id")
            if eos is None:
                continue
            ids = [eos] if not isinstance(eos, list) else eos
            if not ids or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
                raise CheckpointError(f"{found}: eos_token_id expected a token id or a list of them, got {eos!r}")
            return ids
    ids = [tokenizer.token_to_id(t) for t in HARMONY_STOPS]
    return [i for i in ids if i is not None]
