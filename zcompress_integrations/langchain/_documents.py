"""Compress LangChain documents in one ``compress_batch`` call (shared by the compressor and the transformer).

Rules, in order, for each input document (one output per input, same order, ``id`` and user metadata kept):

1. ``page_content`` must be a ``str`` (checked for all documents before any model work).
2. A document that already carries a code (``metadata["zcompress_code"]``, or a ``page_content`` that is itself
   a ``zc1:`` string) reuses it, so codes made at indexing time cost nothing at query time. An exact code is
   reused only if it was made by this backbone and matches the text's checksum (when the text is present).
   A code that is damaged, foreign or stale is replaced by a fresh one made from the text, with the reason in
   ``metadata["zcompress_replaced_code"]``; when the text is not there to recompress, a clear
   :class:`CorruptCodeError` / :class:`ModelMismatchError` names the document.
3. Empty documents and documents shorter than ``min_chars`` are left as text, marked ``zcompress_skipped``.
4. Everything else is compressed together (the async variant: one request on the compressor's batching
   scheduler, with the same codes).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from zcompress_integrations._integration_common import code_metadata
from zcompress_integrations.errors import CorruptCodeError, ModelMismatchError, UnsupportedTextError
from zcompress_integrations.langchain._common import (
    META_CODE,
    META_REPLACED,
    META_SKIPPED,
    META_TEXT,
    ZCompressOptions,
    check_fingerprint,
    parse_code,
)

if TYPE_CHECKING:
    from langchain_core.documents import Document

    from zcompress_integrations.core.zcode import ZCode

__all__ = ["compress_documents", "acompress_documents", "code_metadata"]

_PREFIX = "zc1:"
ContentFn = Callable[["ZCode", str | None], str]


def _describe(i: int, doc: Any) -> str:
    doc_id = getattr(doc, "id", None)
    return f"documents[{i}]" + (f" (id={doc_id!r})" if doc_id is not None else "")


def _existing_code(
    i: int, doc: Document, opts: ZCompressOptions
) -> tuple[ZCode | None, str | None, str | None]:
    """(code to reuse or None, original text if known, reason a found code was replaced)."""
    raw = doc.metadata.get(META_CODE)
    content = doc.page_content
    if raw is None and not content.startswith(_PREFIX):
        return None, content, None
    source = raw if raw is not None else content
    stored_text = doc.metadata.get(META_TEXT)
    try:
        code = parse_code(source)
    except CorruptCodeError as exc:
        return _replace_corrupt_code(i, doc, exc, raw, stored_text)
    text = _original_text(code, content, stored_text)
    reason = _replacement_reason(i, doc, code, text, opts)
    if reason is not None:
        return None, text, reason
    return code, text, None


def _replace_corrupt_code(
    i: int, doc: Document, exc: CorruptCodeError, raw: Any, stored_text: Any
) -> tuple[None, str, str]:
    """A damaged code is replaced from the document's text; without that text, ``exc`` names the document."""
    content = doc.page_content
    text = stored_text if isinstance(stored_text, str) else (None if raw is None else content)
    if text is None or text.startswith(_PREFIX):
        raise CorruptCodeError(
            f"{_describe(i, doc)}: {exc}; its text is not kept, so it cannot be recompressed"
        ) from exc
    return None, text, f"corrupt code: {exc}"


def _original_text(code: ZCode, content: str, stored_text: Any) -> str | None:
    """The text ``code`` stands for, if the document keeps it: the stored copy, else a page content that is not
    a code."""
    if isinstance(stored_text, str):
        return stored_text
    if content == code.to_string() or content.startswith(_PREFIX):
        return None
    return content


def _replacement_reason(
    i: int, doc: Document, code: ZCode, text: str | None, opts: ZCompressOptions
) -> str | None:
    """Why a parsed ``code`` cannot be reused (foreign, stale, or of the other mode), or None if it can."""
    from zcompress_integrations.core.entropy import as_bytes
    from zcompress_integrations.core.zcode import text_checksum

    try:
        check_fingerprint(code, opts.zcompressor)
    except ModelMismatchError as exc:
        if text is None:
            raise ModelMismatchError(
                f"{_describe(i, doc)}: {exc}; its text is not kept, so it cannot be recompressed"
            ) from exc
        return f"foreign code: {exc}"
    if text is None:
        return None
    if code.codec == "exact" and text_checksum(as_bytes(text)) != code.checksum:
        return "stale code: the checksum does not match the document's text"
    if code.codec != opts.mode:
        return f"code is {code.codec!r} but mode={opts.mode!r}"
    return None


def _check_documents(docs: list[Any]) -> None:
    """Every input is a ``Document`` with ``str`` page content (checked before any model work)."""
    from langchain_core.documents import Document

    for i, doc in enumerate(docs):
        if not isinstance(doc, Document):
            raise UnsupportedTextError(
                f"documents[{i}] must be a langchain Document; got {type(doc).__name__}"
            )
        if not isinstance(doc.page_content, str):
            raise UnsupportedTextError(
                f"{_describe(i, doc)}.page_content must be str; got {type(doc.page_content).__name__}"
            )


def _plan(
    docs: list[Document], opts: ZCompressOptions
) -> tuple[list[tuple[ZCode | None, str | None, dict[str, Any]]], list[int]]:
    """Per document (code to reuse or None, text, metadata to add), and the indices of those to compress."""
    plans: list[tuple[ZCode | None, str | None, dict[str, Any]]] = []
    todo: list[int] = []
    for i, doc in enumerate(docs):
        code, text, reason = _existing_code(i, doc, opts)
        extra: dict[str, Any] = {META_REPLACED: reason} if reason else {}
        if code is None:
            assert text is not None  # _existing_code returns the text whenever it returns no code
            if not text:
                extra[META_SKIPPED] = "empty"
            elif len(text) < opts.min_chars:
                extra[META_SKIPPED] = f"shorter than min_chars={opts.min_chars}"
            else:
                todo.append(i)
        plans.append((code, text, extra))
    return plans, todo


def _output_document(
    doc: Document,
    code: ZCode | None,
    text: str | None,
    extra: dict[str, Any],
    content: ContentFn,
    store_text: bool,
) -> Document:
    """``doc`` with its new page content (the code's, or its text when left uncompressed) and metadata."""
    metadata = {k: v for k, v in doc.metadata.items() if k not in (META_SKIPPED, META_REPLACED)}
    if code is None:
        metadata.update(extra)
        return doc.model_copy(update={"page_content": text, "metadata": metadata})
    metadata.update(code_metadata(code))
    metadata.update({k: v for k, v in extra.items() if k == META_REPLACED})
    new_content = content(code, text)
    if store_text and text is not None and new_content != text:
        metadata[META_TEXT] = text
    return doc.model_copy(update={"page_content": new_content, "metadata": metadata})


def compress_documents(
    opts: ZCompressOptions,
    documents: Sequence[Document],
    content: ContentFn,
    store_text: bool,
    compress: Callable[[list[str]], list[ZCode]] | None = None,
) -> list[Document]:
    """Compress ``documents`` (see the module docstring). ``content(code, text)`` gives the new page content;
    ``store_text`` keeps the original text under ``zcompress_text`` when the page content no longer holds it;
    ``compress(texts)`` replaces ``compress_batch`` (the transformer's Ray hand-off)."""
    docs = list(documents)
    if not docs:
        return []
    _check_documents(docs)
    plans, todo = _plan(docs, opts)
    codes: list[ZCode] = []
    if todo:
        texts = [plans[i][1] for i in todo]
        if compress is not None:
            codes = compress(texts)  # type: ignore[arg-type]
        else:
            codes = opts.zcompressor.compress_batch(
                texts, mode=opts.mode, ratio=opts.ratio, batch_size=opts.batch_size
            )  # type: ignore[arg-type]
    return _outputs(docs, plans, dict(zip(todo, codes, strict=True)), content, store_text)


async def acompress_documents(
    opts: ZCompressOptions, documents: Sequence[Document], content: ContentFn, store_text: bool
) -> list[Document]:
    """:func:`compress_documents` for asyncio: the planning (which may load the model) in a worker thread, the
    compression one awaitable request on the compressor's scheduler (``acompress_batch``), same codes."""
    docs = list(documents)
    if not docs:
        return []
    _check_documents(docs)
    plans, todo = await asyncio.to_thread(_plan, docs, opts)
    codes: list[ZCode] = []
    if todo:
        texts = [plans[i][1] for i in todo]
        codes = await opts.zcompressor.acompress_batch(
            texts, mode=opts.mode, ratio=opts.ratio, batch_size=opts.batch_size
        )  # type: ignore[arg-type]
    return _outputs(docs, plans, dict(zip(todo, codes, strict=True)), content, store_text)


def _outputs(
    docs: list[Document],
    plans: list[tuple[ZCode | None, str | None, dict[str, Any]]],
    fresh: dict[int, ZCode],
    content: ContentFn,
    store_text: bool,
) -> list[Document]:
    return [
        _output_document(doc, fresh.get(i, code), text, extra, content, store_text)
        for i, (doc, (code, text, extra)) in enumerate(zip(docs, plans, strict=True))
    ]
