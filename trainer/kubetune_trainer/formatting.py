"""Turn a validated row into a (prompt, response) pair of strings; the model learns the response.

instruction: a fixed Alpaca-style template (preference pairs too, with the chosen response); chat: the
tokenizer's chat template when it has one, else a plain ``<|role|>`` template; text: no prompt, the whole
text is the response.
"""

from __future__ import annotations

from typing import Any

from kubetune_trainer.config import FieldsConfig

Row = dict[str, Any]


def instruction_prompt(prompt: str, system: str | None = None) -> str:
    """The prompt side of the instruction template (also used at generation time).

    >>> instruction_prompt("Define orb.")
    '### Instruction:\\nDefine orb.\\n\\n### Response:\\n'
    """
    head = f"### System:\n{system}\n\n" if system else ""
    return f"{head}### Instruction:\n{prompt}\n\n### Response:\n"


def default_chat_prompt(messages: list[dict[str, str]]) -> str:
    """Render messages and open an assistant turn, for tokenizers without a chat template.

    >>> default_chat_prompt([{"role": "user", "content": "hi"}])
    '<|user|>\\nhi\\n<|assistant|>\\n'
    """
    return "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in messages) + "<|assistant|>\n"


def chat_prompt(messages: list[dict[str, str]], tokenizer: Any = None) -> str:
    """The conversation so far, rendered with an assistant turn opened (the tokenizer's template if any)."""
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    return default_chat_prompt(messages)


def preference_parts(row: Row, fields: FieldsConfig, tokenizer: Any = None) -> tuple[str, str, str]:
    """A pair row -> (prompt, chosen, rejected) strings. Each may be a string (the instruction template
    frames the prompt) or, as trl's conversational pairs, chat messages: the prompt's turns go through
    the chat template, and a response's last (assistant) message is the answer.

    >>> row = {"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "assistant", "content": "hello"}],
    ...        "rejected": "go away"}
    >>> preference_parts(row, FieldsConfig())
    ('<|user|>\\nhi\\n<|assistant|>\\n', 'hello', 'go away')
    """
    prompt = row[fields.prompt]
    text = chat_prompt(prompt, tokenizer) if isinstance(prompt, list) else instruction_prompt(prompt)

    def answer(value: Any) -> str:
        return str(value[-1]["content"]) if isinstance(value, list) else str(value)

    return text, answer(row[fields.chosen]), answer(row[fields.rejected])


def to_pair(row: Row, fmt: str, fields: FieldsConfig, tokenizer: Any = None) -> tuple[str, str]:
    """One row -> (prompt, response).

    Chat rows train on the last assistant turn; earlier turns are context.

    >>> to_pair({"text": "hello"}, "text", FieldsConfig())
    ('', 'hello')
    """
    if fmt == "text":
        return "", row[fields.text]
    if fmt == "instruction":
        system = row.get(fields.system) if fields.system else None
        return instruction_prompt(row[fields.prompt], system), row[fields.response]
    if fmt == "preference":  # the chosen response is the one to generate (golden answers)
        prompt, chosen, _ = preference_parts(row, fields, tokenizer)
        return prompt, chosen
    messages = row[fields.messages]
    return chat_prompt(messages[:-1], tokenizer), messages[-1]["content"]
