"""ChatZCompress with tools and structured output: formatting through the chat template and parsing of the answer.

The tiny random model cannot call tools, so the answers are scripted (a fake generation path that still renders the
real prompt); what is tested is what reaches the template and what comes back out, not the model's skill.
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.exceptions import OutputParserException
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool
from pydantic import BaseModel

from zcompress_integrations.core.generation import GenerationStream, build_prompt
from zcompress_integrations.errors import ConfigError
from zcompress_integrations.langchain import ChatZCompress

TOOLS_TEMPLATE = (
    "{% if tools %}<s>system\nTools:\n{% for t in tools %}{{ t | tojson }}\n{% endfor %}</s>\n{% endif %}"
    "{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}"
    "{% if m['tool_calls'] is defined %}{% for c in m['tool_calls'] %}<tool_call>{{ c['function'] | tojson }}"
    "</tool_call>{% endfor %}{% endif %}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant\n{% endif %}"
)
"""A Hermes-like chat template that reads ``tools`` and ``tool_calls`` (the tiny model's own reads neither)."""


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


class Person(BaseModel):
    name: str
    age: int


@pytest.fixture(scope="module")
def zc(tiny_model_dir):
    """Its own copy of the tiny model (k differs from the shared fixture's), given the tool-aware template."""
    from zcompress_integrations import ZCompressor

    zc = ZCompressor.from_pretrained(tiny_model_dir, adapters=None, window=64, k=2048)
    zc.backbone.tokenizer.chat_template = TOOLS_TEMPLATE
    return zc


@pytest.fixture
def scripted(zc, monkeypatch):
    """Answers come from ``scripted.answers``; ``scripted.prompts`` holds each rendered prompt."""

    class Script:
        answers: list[str] = []
        prompts: list[str] = []

    real_build = build_prompt

    def generate(prompt: Any, *, context: Any = (), stream: bool = False, **kwargs: Any) -> GenerationStream:
        pieces, fed, uncompressed, _ = real_build(zc, prompt, list(context))
        Script.prompts.append(zc.backbone.tokenizer.decode([t for p in pieces for t in p]))
        answer = Script.answers.pop(0)
        return GenerationStream(
            iter([answer[: len(answer) // 2], answer[len(answer) // 2 :]]), fed, uncompressed
        )

    monkeypatch.setattr(zc, "generate", generate)
    return Script


def test_a_template_without_tools_is_a_clear_error(tiny_compressor) -> None:
    with pytest.raises(ConfigError, match="no tool support"):
        ChatZCompress(compressor=tiny_compressor).bind_tools([add])


def test_bind_tools_formats_tools_and_parses_the_call(zc, scripted) -> None:
    scripted.answers = ['<tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}</tool_call>'] * 2
    llm = ChatZCompress(compressor=zc, max_tokens=64).bind_tools([add])
    msg = llm.invoke("add 2 and 3")
    assert [(c["name"], c["args"]) for c in msg.tool_calls] == [("add", {"a": 2, "b": 3})]
    assert msg.content == "" and msg.response_metadata["finish_reason"] == "tool_calls"
    assert '"name": "add"' in scripted.prompts[-1] and "Add two integers." in scripted.prompts[-1]
    chunks = list(llm.stream("add 2 and 3"))
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged += chunk
    assert [(c["name"], c["args"]) for c in merged.tool_calls] == [("add", {"a": 2, "b": 3})]


def test_malformed_calls_are_invalid_tool_calls(zc, scripted) -> None:
    scripted.answers = ['Sure. <tool_call>{"name": "add", "arguments": {"a": 2,</tool_call>']
    msg = ChatZCompress(compressor=zc).bind_tools([add]).invoke("add 2 and 3")
    assert msg.content == "Sure." and msg.tool_calls == []
    assert len(msg.invalid_tool_calls) == 1 and msg.invalid_tool_calls[0]["error"]


def test_agent_loop_renders_tool_calls_and_results_through_the_template(zc, scripted) -> None:
    scripted.answers = ['<tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}</tool_call>', "It is 5."]
    agent = create_agent(ChatZCompress(compressor=zc, max_tokens=64), tools=[add], system_prompt="Be brief.")
    result = agent.invoke({"messages": [HumanMessage("add 2 and 3")]})
    assert [m.type for m in result["messages"]] == ["human", "ai", "tool", "ai"]
    assert result["messages"][2].content == "5" and result["messages"][-1].content == "It is 5."
    second = scripted.prompts[-1]
    assert "<s>system\nBe brief.</s>" in second
    assert '<s>assistant\n<tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}</tool_call></s>' in second
    assert "<s>tool\n5</s>" in second


def test_structured_output_is_validated(zc, scripted) -> None:
    scripted.answers = [
        '{"name": "Ada", "age": 36}',
        '{"name": "Ada"}',
        '{"name": "Ada"}',
        '{"name": "Ada", "age": 1}',
    ]
    llm = ChatZCompress(compressor=zc, max_tokens=64)
    structured = llm.with_structured_output(Person)
    assert structured.invoke([SystemMessage("You extract people."), HumanMessage("Ada is 36.")]) == Person(
        name="Ada", age=36
    )
    assert (
        "You extract people." in scripted.prompts[-1] and '"age"' in scripted.prompts[-1]
    )  # schema in system
    with pytest.raises(OutputParserException):
        structured.invoke("Ada")  # age missing: fails validation
    raw = llm.with_structured_output(Person, include_raw=True).invoke("Ada")
    assert raw["parsed"] is None and raw["parsing_error"] is not None and isinstance(raw["raw"], AIMessage)
    as_dict = llm.with_structured_output(Person.model_json_schema()).invoke("Ada")
    assert as_dict == {"name": "Ada", "age": 1}


def test_real_generation_with_tools_bound_gives_a_well_formed_message(zc) -> None:
    msg = (
        ChatZCompress(compressor=zc, max_tokens=4)
        .bind_tools([add])
        .invoke(
            [
                HumanMessage("add 2 and 3"),
                AIMessage("", tool_calls=[{"name": "add", "args": {"a": 2, "b": 3}, "id": "c"}]),
                ToolMessage("5", tool_call_id="c"),
            ]
        )
    )
    assert isinstance(msg, AIMessage) and msg.usage_metadata["output_tokens"] <= 4


def test_structured_output_through_a_tool_call(zc, scripted) -> None:
    scripted.answers = ['<tool_call>{"name": "Person", "arguments": {"name": "Ada", "age": 36}}</tool_call>']
    structured = ChatZCompress(compressor=zc).with_structured_output(Person, method="function_calling")
    assert structured.invoke("Ada is 36.") == Person(name="Ada", age=36)
    assert '"name": "Person"' in scripted.prompts[-1]  # the schema went in as a tool


def test_agent_on_chat_zcompress_reads_its_compressed_memory_as_turns(zc, scripted) -> None:
    from langchain.agents.middleware import SummarizationMiddleware

    from zcompress_integrations.langchain import ZCompressDecodeMiddleware, ZCompressSummarizer

    scripted.answers = ['<tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}</tool_call>', "It is 5."]
    chat = ChatZCompress(compressor=zc, max_tokens=64)
    old = [
        HumanMessage("add 1 and 1"),
        AIMessage("", tool_calls=[{"name": "add", "args": {"a": 1, "b": 1}, "id": "old"}]),
        ToolMessage("2", tool_call_id="old"),
        AIMessage("It is 2."),
        HumanMessage("My dog is called Fox."),
        AIMessage("Nice name."),
    ]
    summarize = SummarizationMiddleware(
        model=chat,
        trigger=("messages", 6),
        keep=("messages", 1),
        summarizer=ZCompressSummarizer(compressor=zc, keep_ids=False),
        trim_tokens_to_summarize=None,
    )
    agent = create_agent(chat, tools=[add], middleware=[summarize, ZCompressDecodeMiddleware(compressor=zc)])
    result = agent.invoke({"messages": [*old, HumanMessage("add 2 and 3")]})
    assert "zc1:" in result["messages"][0].text  # the state holds the code
    assert result["messages"][-1].content == "It is 5."
    for prompt in scripted.prompts[-2:]:  # both model calls read the old turns as chat turns, in order
        assert "zc1:" not in prompt
        turns = [
            "<s>user\nadd 1 and 1</s>",
            '<tool_call>{"name": "add", "arguments": {"a": 1, "b": 1}}</tool_call>',
            "<s>tool\n2</s>",
            "<s>assistant\nIt is 2.</s>",
            "<s>user\nMy dog is called Fox.</s>",
            "<s>assistant\nNice name.</s>",
            "<s>user\nadd 2 and 3</s>",
        ]
        positions = [prompt.index(t) for t in turns]
        assert positions == sorted(positions)
