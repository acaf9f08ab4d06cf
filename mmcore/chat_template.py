"""Chat templates compiled the way transformers compiles them (`utils/chat_template_utils.py` in the installed
transformers), so a checkpoint's template renders here exactly as `apply_chat_template` renders it:

- a sandboxed environment with `trim_blocks` and `lstrip_blocks`, the `loopcontrols` extension (`{% break %}`,
  `{% continue %}`) and the `{% generation %}` block (transformers uses it to mark assistant tokens for training masks;
  it renders its body unchanged);
- globals `raise_exception` (a template's way to refuse a conversation) and `strftime_now` (templates that print
  today's date), and a `tojson` filter that does not escape HTML, as transformers' does.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache

from jinja2 import nodes
from jinja2.exceptions import TemplateError
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment


class GenerationBlock(Extension):
    """`{% generation %}...{% endgeneration %}`: renders its body as is."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    @staticmethod
    def _body(caller):
        return caller()


def _raise_exception(message):
    raise TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt):
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=8)
def compile_chat_template(source: str):
    """The compiled template; raises jinja2's TemplateSyntaxError (with its line) on a template that does not parse."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[GenerationBlock, loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(source)
