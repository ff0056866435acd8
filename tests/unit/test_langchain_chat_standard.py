"""LangChain's standard unit suite for ChatZCompress (langchain-tests ``ChatModelUnitTests``), on the tiny model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from langchain_tests.unit_tests import ChatModelUnitTests

from zcompress_integrations.langchain import ChatZCompress

_MODEL_DIR: dict[str, Path] = {}


class TestChatZCompressStandard(ChatModelUnitTests):
    @pytest.fixture(autouse=True)
    def _tiny_model(self, tiny_model_dir: Path) -> None:
        _MODEL_DIR["path"] = tiny_model_dir

    @property
    def chat_model_class(self) -> type[ChatZCompress]:
        return ChatZCompress

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model": str(_MODEL_DIR["path"]), "adapters": None, "window": 64}

    @property
    def returns_usage_metadata(self) -> bool:
        return True
