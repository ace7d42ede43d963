"""Chat templates: a conversation rendered into the prompt text an instruction-tuned model expects.

A package carries its tokenizer's chat template (``chat_template.jinja``, from tokenizer_config.json
or the model's own chat_template.jinja) and its special tokens. The template is rendered with
Jinja2 in an immutable sandbox, with what transformers' ``apply_chat_template`` gives a template:
``messages``, ``add_generation_prompt``, ``tools``, ``documents``, the special tokens (``bos_token``,
``eos_token`` ...), the ``tojson`` filter without HTML escaping, ``raise_exception``,
``strftime_now``, a ``{% generation %}`` block, and trimmed blocks. Chat templates come from model
repositories, so they are untrusted code: the sandbox refuses attribute access to Python internals,
and what the template sees is rebuilt from plain JSON values.

Example::

    template = ChatTemplate(source, {"bos_token": "<s>", "eos_token": "</s>"})
    prompt = template.render([{"role": "user", "content": "Hi!"}], add_generation_prompt=True)
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Mapping, Sequence

from edge_sdk.errors import InvalidInputError, PackageError

ROLES = ("system", "developer", "user", "assistant", "tool")
TEMPLATE_FILE = "chat_template.jinja"


def _environment():
    import jinja2
    import jinja2.ext
    import jinja2.nodes
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationBlock(jinja2.ext.Extension):
        """``{% generation %}...{% endgeneration %}`` (marks assistant text for training masks): renders its body."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    class Namespace(jinja2.utils.Namespace):
        """``namespace()`` that refuses underscore-prefixed attribute names (no way to CPython internals)."""

        def __init__(*args, **kwargs):
            self, args = args[0], args[1:]
            attributes = dict(*args, **kwargs)
            for name in attributes:
                Namespace._check(name)
            jinja2.utils.Namespace.__init__(self, attributes)

        def __setitem__(self, name, value):
            Namespace._check(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check(name):
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(f"a chat template cannot set the attribute {name!r} on a namespace")

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                extensions=[GenerationBlock, jinja2.ext.loopcontrols])
    environment.filters["tojson"] = tojson
    environment.globals["raise_exception"] = raise_exception
    environment.globals["strftime_now"] = lambda format: datetime.now().strftime(format)
    environment.globals["namespace"] = Namespace
    environment.globals["dict"] = _TemplateDict()
    return environment


class _TemplateDict:
    """``dict(...)`` and ``dict.fromkeys(...)`` for templates, without handing them the ``dict`` type itself."""

    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
        return dict.fromkeys(*args, **kwargs)


_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")  # the first is what templates read


def _alias_reasoning(message: dict) -> dict:
    """A message's reasoning under every name templates read it by (as transformers passes it)."""
    reasoning = next((message[k] for k in _REASONING_FIELDS if message.get(k) is not None), None)
    return message if reasoning is None else {"thinking": reasoning, **message, "reasoning_content": reasoning}


def plain(value: Any) -> Any:
    """``value`` rebuilt from JSON types only (str, int, float, bool, None, dict, list): what a template may see."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {plain(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return f"<{type(value).__name__}>"


def check_messages(messages: Any) -> list[dict]:
    """The conversation as plain dicts, or a one-line error naming the message that is wrong."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
        raise InvalidInputError('a chat is a non-empty list of messages like {"role": "user", "content": "Hi"}')
    checked = []
    for number, message in enumerate(messages, 1):
        if not isinstance(message, Mapping):
            raise InvalidInputError(f"chat message {number} is a {type(message).__name__}, not a dict with 'role' and 'content'")
        role = message.get("role")
        if role not in ROLES:
            raise InvalidInputError(f"chat message {number} has role {role!r}; the roles are {', '.join(ROLES)}")
        content = message.get("content")
        if content is None and not message.get("tool_calls"):
            raise InvalidInputError(f"chat message {number} ({role}) has no 'content'")
        if content is not None and not isinstance(content, (str, list)):
            raise InvalidInputError(f"chat message {number} ({role}): 'content' must be a string or a list of "
                                    f"text parts, got {type(content).__name__}")
        checked.append(_alias_reasoning({key: value for key, value in plain(dict(message)).items() if value is not None}))
    return checked


class ChatTemplate:
    """A compiled chat template and the special tokens it is rendered with."""

    def __init__(self, source: str, special_tokens: Mapping[str, Any] | None = None):
        import jinja2

        if not isinstance(source, str) or not source.strip():
            raise PackageError("the package's chat template is empty; re-export the package")
        self.source = source
        self.special_tokens = plain(dict(special_tokens or {}))
        try:
            self._template = _environment().from_string(source)
        except jinja2.TemplateSyntaxError as e:
            raise PackageError(f"the package's chat template is not valid Jinja (line {e.lineno}: {e.message}); "
                               "fix chat_template in the model's tokenizer_config.json and re-export") from e

    def render(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True,
               tools: list | None = None, documents: list | None = None, **kwargs) -> str:
        """The prompt text for ``messages``, as ``tokenizer.apply_chat_template(messages, tokenize=False,
        add_generation_prompt=...)`` renders it; ``kwargs`` reach the template (e.g. ``enable_thinking``)."""
        import jinja2

        checked = check_messages(messages)
        try:
            return self._template.render(messages=checked, tools=plain(tools), documents=plain(documents),
                                         add_generation_prompt=bool(add_generation_prompt),
                                         **{**self.special_tokens, **plain(kwargs)})
        except jinja2.exceptions.SecurityError as e:
            raise PackageError(f"the package's chat template tried an unsafe operation and was stopped: {e}") from e
        except jinja2.TemplateError as e:  # raise_exception() in the template: the conversation breaks its rules
            raise InvalidInputError(f"the model's chat template refuses this conversation: {e}") from e
