"""Chat prompts from a checkpoint's own chat template (gpt-oss ships the harmony format's).

The template is rendered the way transformers' ``apply_chat_template`` renders it (a sandboxed
Jinja environment with trimmed blocks, loop controls, ``tojson``, ``raise_exception`` and
``strftime_now``), for one user message and the assistant's turn to come. Generation stops at
the checkpoint's end-of-turn tokens: generation_config.json's ``eos_token_id``, else
config.json's, else harmony's ``<|return|>`` and ``<|call|>`` where the vocabulary has them.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import List, Optional

from moekit.models import find_chat_template
from moekit.models.checkpoint import CheckpointError, find_beside, read_json_object

HARMONY_STOPS = ("<|return|>", "<|call|>")


def render(template: str, prompt: str) -> str:
    """The text of a one-message conversation, ready for the assistant's reply."""
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
    return env.from_string(template).render(messages=[{"role": "user", "content": prompt}],
                                            add_generation_prompt=True)


def chat_prompt(checkpoint: Path, prompt: str) -> Optional[str]:
    """``prompt`` as a chat turn in the checkpoint's template, or None if it ships none."""
    template = find_chat_template(checkpoint)
    return None if template is None else render(template, prompt)


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
