"""Replaying a round's spool at start-up: every acknowledged upload is read back through the checks it passed.

Each spooled upload's checksum is verified first; one that does not verify (or no longer parses, cannot be read
from the disk, or is not a file) is moved to ``quarantine/`` and its task is handed out again, so a flipped byte never reaches an aggregate and never stops a
restart. Rejection records are read back as such, so a collaborator is never asked again for work it was told had
been received. The round's close decision, when one was recorded before a crash, is restored so that the round
closes again with the very same collaborators.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

from fedagg.federation.contribution import RejectionReason
from fedagg.federation.intake import Admission, UploadIntake
from fedagg.federation.integrity import READ_BLOCK_BYTES, CorruptFile, FileDigest, verify_footer
from fedagg.federation.progress_health import describe_os_error
from fedagg.federation.rounds import AcceptedUpload, CloseDecision, Receipt, RejectedUpload, Round
from fedagg.federation.spool import EntryKind, SpoolEntry
from fedagg.federation.store import StateStore
from fedagg.protocol.results import ResultsHeader, TaskResultsDecoder
from fedagg.protocol.tensor_fields import TensorRecord
from fedagg.protocol.wire import MalformedMessage

log = logging.getLogger(__name__)

Admit = Callable[[str, ResultsHeader], Admission]
Replayed = tuple[str, str, Receipt]
"""(collaborator, task, receipt) of one spool entry."""


def quarantine_entry(store: StateStore, entry: SpoolEntry, reason: str) -> None:
    """Move a corrupt spool entry aside; its task will be handed out again."""
    kind = "upload" if entry.kind == EntryKind.RESULTS else "rejection"
    store.quarantine(entry.path, f"{reason}; the task is handed out again", kind)


def _problem(error: CorruptFile | OSError) -> str:
    return f"unreadable ({describe_os_error(error)})" if isinstance(error, OSError) else str(error)


class SpoolReplay:
    """Reads one round's spool back (module docstring). ``admit`` decides on each upload as if it arrived now."""

    def __init__(self, store: StateStore, admit: Admit) -> None:
        self._store = store
        self._admit = admit

    def receipts(self, round_: Round) -> Iterator[Replayed]:
        """The round's usable entries, in commit order (sequence numbers are noted on ``round_``)."""
        for entry in self._store.spool.entries(round_.number):
            round_.observe_sequence(entry.sequence)
            try:
                replayed = self._read(round_, entry)
            except (CorruptFile, OSError) as error:  # a read error (EIO), or an entry that is not a file
                quarantine_entry(self._store, entry, _problem(error))
                continue
            if replayed is not None:
                yield replayed

    def decision(self, round_: Round) -> CloseDecision | None:
        """The round's recorded close decision, if it still holds (every collaborator it names is done)."""
        spool = self._store.spool
        path = spool.close_decision_path(round_.number)
        try:
            body = spool.read_close_decision(round_.number)
        except (CorruptFile, OSError) as error:
            self._store.quarantine(path, _problem(error), "close_decision")
            return None
        if body is None:
            return None
        decision = CloseDecision.from_json(body)
        if set(decision.done) <= round_.done():
            return decision
        log.warning(
            "round %d's close decision names collaborators whose work was lost; deciding again", round_.number
        )
        path.unlink(missing_ok=True)
        return None

    def _read(self, round_: Round, entry: SpoolEntry) -> Replayed | None:
        if entry.kind == EntryKind.REJECTED:
            return self._rejection(entry)

        def make_intake(header: ResultsHeader) -> UploadIntake | None:
            admission = self._admit(header.header.sender, header)
            if not admission.accepted:
                log.warning("spooled upload %s is ignored now: %s", entry.path.name, admission.message)
                return None
            return UploadIntake(admission, round_.model.tensors, round_.limits)

        intake, digest = read_spooled_upload(entry.path, make_intake)
        if intake is None:
            return None
        admission = intake.admission
        collaborator, task = admission.collaborator, admission.task
        if intake.rejection is not None:
            log.warning(
                "spooled upload %s of %s no longer passes the checks (%s); it is excluded",
                entry.path.name,
                collaborator,
                intake.rejection.message,
            )
            reason, message = intake.rejection.reason, intake.rejection.message
            return collaborator, task, RejectedUpload(collaborator, task, reason, message, entry)
        return collaborator, task, AcceptedUpload(intake.contribution(), entry, digest)

    def _rejection(self, entry: SpoolEntry) -> Replayed:
        body = self._store.spool.read_rejection(entry)
        try:
            reason = RejectionReason(body["reason"])
            collaborator, task, message = str(body["collaborator"]), str(body["task"]), str(body["message"])
        except (KeyError, TypeError, ValueError) as error:
            raise CorruptFile(f"{entry.path}: malformed rejection record ({error!r})") from None
        return collaborator, task, RejectedUpload(collaborator, task, reason, message, entry)


MakeIntake = Callable[[ResultsHeader], UploadIntake | None]


def read_spooled_upload(path: Path, make_intake: MakeIntake) -> tuple[UploadIntake | None, FileDigest]:
    """Verify a spooled upload and pass it through the checks ``make_intake`` sets up for its header.

    Returns the intake (None when the header says the upload is to be ignored) and the payload's digest; raises
    :class:`CorruptFile` for a file whose checksum or content does not hold.
    """
    digest = verify_footer(path)
    decoder = TaskResultsDecoder()
    intake: UploadIntake | None = None
    admitted = False
    buffer = bytearray(READ_BLOCK_BYTES)
    view = memoryview(buffer)
    offset = 0
    try:
        with path.open("rb", buffering=0) as file:
            while offset < digest.size:
                count = file.readinto(view[: min(READ_BLOCK_BYTES, digest.size - offset)])
                if not count:
                    raise CorruptFile(f"{path}: shorter than its footer says")
                events = decoder.feed(view[:count])
                if offset + count == digest.size:
                    events += decoder.finish()
                for event in events:
                    if isinstance(event, ResultsHeader):
                        intake, admitted = make_intake(event), True
                    elif isinstance(event, TensorRecord) and intake is not None:
                        intake.tensor(event)
                if admitted and intake is None:
                    break
                if intake is not None:
                    intake.absorb(view[:count], offset)
                offset += count
    except MalformedMessage as error:
        raise CorruptFile(f"{path}: not a TaskResults ({error})") from None
    return intake, digest
