"""Tool calls and structured output for ``ChatZCompress``: the tools handed to the chat template, and the
Hermes/Qwen-style ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks parsed out of the answer."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from typing import Any

from langchain_core.messages.tool import InvalidToolCall, ToolCall
from langchain_core.utils.function_calling import convert_to_openai_tool

__all__ = ["format_tools", "parse_tool_calls", "json_instruction"]

TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


def format_tools(tools: Sequence[Any]) -> list[dict[str, Any]]:
    """OpenAI-style function schemas (what chat templates take as ``tools=``) of LangChain tools, pydantic
    models, functions or schema dicts."""
    return [convert_to_openai_tool(tool) for tool in tools]


def parse_tool_calls(text: str) -> tuple[str, list[ToolCall], list[InvalidToolCall]]:
    """(text without the tool-call blocks, well-formed calls, malformed ones) of a model answer.

    A block holds one JSON object with ``name`` and ``arguments`` (a dict, or a JSON string of one; ``parameters``
    is accepted too). Anything else is an :class:`InvalidToolCall` carrying the raw text and the reason.
    """
    calls: list[ToolCall] = []
    invalid: list[InvalidToolCall] = []
    for raw in TOOL_CALL.findall(text):
        call_id = f"call_{uuid.uuid4().hex[:24]}"
        try:
            data = json.loads(raw)
            args = data.get("arguments", data.get("parameters", {}))
            if isinstance(args, str):
                args = json.loads(args)
            if not isinstance(data.get("name"), str) or not isinstance(args, dict):
                raise ValueError("a tool call needs a string 'name' and an object 'arguments'")
        except (ValueError, AttributeError) as exc:
            invalid.append(
                InvalidToolCall(name=None, args=raw, id=call_id, error=str(exc), type="invalid_tool_call")
            )
            continue
        calls.append(ToolCall(name=data["name"], args=args, id=call_id, type="tool_call"))
    return TOOL_CALL.sub("", text).strip(), calls, invalid


def json_instruction(schema: dict[str, Any]) -> str:
    """The system instruction for structured output: answer with one JSON value matching ``schema``."""
    return "Answer with one JSON object and nothing else. It must match this JSON schema:\n" + json.dumps(
        schema, ensure_ascii=False
    )
