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
        return instruction_prompt(row[fields.prompt]), row[fields.chosen]
    messages = row[fields.messages]
    context, answer = messages[:-1], messages[-1]["content"]
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        prompt = tokenizer.apply_chat_template(context, tokenize=False, add_generation_prompt=True)
        return prompt, answer
    return default_chat_prompt(context), answer
