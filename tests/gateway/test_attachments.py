"""``gateway.attachments`` on its own: what the rooms' hook queues, its bound, and a file
store that cannot answer. (A real server runs the rest: tests/integration/test_file_messages.py.)"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from files.errors import BlobStoreError
from files.service import FileService
from gateway.attachments import Attachments, Refused
from gateway.gateway import Gateway
from rooms.attachments import FileRef
from rooms.messages import Action, AnyDraft, Appended, ChangeDraft, Draft, Refusal
from rooms.protocol import ErrorCode, SendMessage
from tests.support import make_config

REF = FileRef("A" * 22, "a.txt", 3, "text/plain")


def closed_store() -> FileService:
    raise BlobStoreError("the file store is not open (server not started)")


def attachments(tmp_path: Path, **settings: object) -> Attachments:
    config = make_config(tmp_path, history_retention=10)
    return Attachments(Gateway(replace(config, **settings)), closed_store)  # type: ignore[arg-type]


async def test_the_hook_queues_one_job_per_stored_message_with_files_or_delete(
        tmp_path: Path) -> None:
    hook = attachments(tmp_path, file_jobs_limit=3)
    batch: list[AnyDraft] = [
        Draft("u", "U", "a", "", 1, files=(REF,)), Draft("u", "U", "b", "plain", 1),
             Draft("u", "U", "c", "", 1, files=(REF,)),
             ChangeDraft("u", "U", "d", 1, Action.DELETE, 1),
             ChangeDraft("u", "U", "e", 1, Action.DELETE, 2),
             ChangeDraft("u", "U", "f", 1, Action.EDIT, 1, text="x")]
    results = [Appended(1), Appended(2), Appended(0, refused=Refusal.NOT_FOUND), Appended(4),
               Appended(1, duplicate=True), Appended(5)]
    hook.stored("r", batch, results)
    # The refused message and the duplicate delete queue nothing; the edit neither.
    assert hook._jobs.qsize() == 2 and hook.dropped == 0
    # Retention (10): past seq 10 the files of pruned messages go, a step at a time.
    hook.stored("r", [Draft("u", "U", None, "t", 1)], [Appended(11)])
    assert hook._jobs.qsize() == 3
    # Full (file_jobs_limit): dropped, counted, never blocking the room.
    hook.stored("r", [Draft("u", "U", None, "", 1, files=(REF,))], [Appended(12)])
    assert hook._jobs.qsize() == 3 and hook.dropped == 2  # the attach and the prune step


async def test_a_file_store_that_cannot_answer_refuses_the_message(tmp_path: Path) -> None:
    hook = attachments(tmp_path)
    with pytest.raises(Refused) as refused:
        await hook.resolve("r", "u", SendMessage("", "m", file_ids=(REF.id,)))
    assert refused.value.code is ErrorCode.UNAVAILABLE
    plain = SendMessage("hi", "m")
    assert await hook.resolve("r", "u", plain) is plain  # no file: nothing asked
