"""A model's chat template (the Jinja text a GGUF carries as `tokenizer.chat_template`),
rendered the way Hugging Face renders chat templates: a sandboxed Jinja environment with
trimmed blocks, loop controls, `raise_exception` and `strftime_now`."""

from __future__ import annotations

import json
from datetime import datetime
from typing import ClassVar

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

# For a model whose file carries no template.
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


class _GenerationTag(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` (marks training targets): its body as is."""

    tags: ClassVar[set[str]] = {"generation"}

    def parse(self, parser):
        parser.stream.skip(1)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def _raise(message: str):
    raise ValueError(f"the chat template refused the conversation: {message}")


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


class ChatTemplate:
    def __init__(self, template: str, bos_token: str, eos_token: str):
        environment = ImmutableSandboxedEnvironment(
            loader=jinja2.BaseLoader(), trim_blocks=True, lstrip_blocks=True,
            extensions=[_GenerationTag, jinja2.ext.loopcontrols],
        )
        environment.filters["tojson"] = _tojson
        self._template = environment.from_string(template)
        self.bos_token, self.eos_token = bos_token, eos_token

    def render(self, messages: list[dict], *, add_generation_prompt: bool) -> str:
        """The prompt text for ``messages``; with ``add_generation_prompt`` it ends where
        the assistant's reply begins. It holds its own special tokens (BOS included)."""
        return self._template.render(
            messages=messages, bos_token=self.bos_token, eos_token=self.eos_token,
            add_generation_prompt=add_generation_prompt, raise_exception=_raise,
            strftime_now=lambda f: datetime.now().strftime(f),
        )
