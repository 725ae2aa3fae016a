"""The fake RudderStack's memory: accepted batches, dropped batches, request records.

Thread-safe: server threads add, test threads read snapshots and wait.
"""

from __future__ import annotations

import threading

from cdc_tracker.testing._rudder_records import (
    ReceivedBatch,
    ReceivedCall,
    RequestRecord,
)


class Ledger:
    """Everything that arrived since creation or the last ``clear()``.

    With ``record=False`` only the counters are kept, for long-running demos.
    """

    def __init__(self, *, record: bool = True) -> None:
        self._record = record
        self._changed = threading.Condition()
        self._request_count = 0
        self.clear()

    def clear(self) -> None:
        with self._changed:
            self._accepted: list[ReceivedBatch] = []
            self._dropped: list[ReceivedBatch] = []
            self._requests: list[RequestRecord] = []
            self._accepted_calls = 0
            self._answered = 0

    def next_request_no(self) -> int:
        """A number for an arriving request, unique for the fake's lifetime."""
        with self._changed:
            self._request_count += 1
            return self._request_count

    def accept(self, batch: ReceivedBatch) -> None:
        with self._changed:
            self._accepted_calls += len(batch)
            if self._record:
                self._accepted.append(batch)

    def drop(self, batch: ReceivedBatch) -> None:
        with self._changed:
            self._dropped.append(batch)

    def answered(self, record: RequestRecord) -> None:
        """Note a request's outcome and wake every waiter."""
        with self._changed:
            self._answered += 1
            if self._record:
                self._requests.append(record)
            self._changed.notify_all()

    @property
    def accepted_calls(self) -> int:
        with self._changed:
            return self._accepted_calls

    @property
    def answered_requests(self) -> int:
        with self._changed:
            return self._answered

    def calls(self) -> list[ReceivedCall]:
        with self._changed:
            batches = list(self._accepted)
        # Parsing happens outside the lock, so readers never stall the server.
        return [call for batch in batches for call in batch.calls()]

    def dropped(self) -> list[ReceivedCall]:
        with self._changed:
            batches = list(self._dropped)
        return [call for batch in batches for call in batch.calls()]

    def message_ids(self) -> list[str]:
        with self._changed:
            return [mid for batch in self._accepted for mid in batch.message_ids]

    def requests(self) -> list[RequestRecord]:
        with self._changed:
            return list(self._requests)

    def wait_for_calls(self, n: int, timeout: float) -> bool:
        """Whether ``n`` calls were accepted within ``timeout`` seconds."""
        with self._changed:
            return self._changed.wait_for(lambda: self._accepted_calls >= n, timeout)

    def wait_for_requests(self, n: int, timeout: float) -> bool:
        """Whether ``n`` requests were answered within ``timeout`` seconds."""
        with self._changed:
            return self._changed.wait_for(lambda: self._answered >= n, timeout)

    def describe(self) -> str:
        """A short account of what arrived, for assertion messages."""
        with self._changed:
            statuses = [record.status for record in self._requests[-5:]]
            return (
                f"{self._accepted_calls} calls accepted, {self._answered} requests "
                f"answered, last statuses {statuses}"
            )
