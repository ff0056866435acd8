"""LangChain's standard suites for ChatZCompress (langchain-tests ``ChatModelUnitTests`` and
``ChatModelIntegrationTests``), on the tiny model given a chat template that reads tools.

The integration suite generates for real. Its tool-calling and structured-output tests need a model that chooses to
call a tool or writes valid JSON; the random 2-layer test model does neither, so those two capabilities are
switched off for the integration suite only (each property below says why). The adapter's tool and JSON handling is
tested with scripted answers in ``test_langchain_tools.py``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests
from test_langchain_tools import TOOLS_TEMPLATE

from zcompress_integrations.langchain import ChatZCompress

_MODEL_DIR: dict[str, Path] = {}


@pytest.fixture(scope="module")
def tools_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with a Hermes-like chat template that reads ``tools`` and ``tool_calls``."""
    folder = tmp_path_factory.mktemp("tiny_tools") / "model"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "chat_template.jinja").write_text(TOOLS_TEMPLATE)
    return folder


class _TinyModel:
    @pytest.fixture(autouse=True)
    def _tiny_model(self, tools_model_dir: Path) -> None:
        _MODEL_DIR["path"] = tools_model_dir

    @property
    def chat_model_class(self) -> type[ChatZCompress]:
        return ChatZCompress

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model": str(_MODEL_DIR["path"]), "adapters": None, "window": 64}

    @property
    def returns_usage_metadata(self) -> bool:
        return True


class TestChatZCompressStandard(_TinyModel, ChatModelUnitTests):
    pass


class TestChatZCompressIntegration(_TinyModel, ChatModelIntegrationTests):
    @property
    def has_tool_calling(self) -> bool:
        # Reason: the random test model never chooses to call a tool; formatting and parsing are tested with
        # scripted answers in test_langchain_tools.py.
        return False

    @property
    def has_tool_choice(self) -> bool:
        # Reason: tool_choice is accepted but not enforced (a local model is asked, not constrained).
        return False

    @property
    def has_structured_output(self) -> bool:
        # Reason: the random test model does not write valid JSON; validation is tested in test_langchain_tools.py.
        return False
