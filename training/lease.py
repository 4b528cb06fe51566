"""The output lock on an object store: a lease object taken by a conditional create and renewed by a conditional
replace, so two runs started at the same moment into one prefix cannot both hold it.

- Take: PUT ``OUTPUT/.lock`` with ``If-None-Match: *``. When a lease is there and was renewed within
  ``LEASE_STALE_S``, a live run holds it: refused. When it is stale (its run died), it is replaced
  with ``If-Match: <the stale lease's ETag>``: of several runs taking over one stale lease, one wins.
- Renew: every ``LEASE_RENEW_S``, ``If-Match`` the ETag this run last wrote. A failed renewal means
  another run took the lease over (this one had not renewed it for ``LEASE_STALE_S``): it stops
  renewing and says so, and its release leaves the other run's lease alone.
- Stores without conditional writes (``storage.CONDITIONAL_SCHEMES``: S3 and S3-compatible stores
  have them) fall back to read-then-write: two runs started within the same second can both take it.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Callable

from icpc import storage

LEASE_RENEW_S = 20.0
LEASE_STALE_S = 90.0


class Lease:
    """One run's lease on ``path``; ``record()`` gives the JSON the lease object holds (without ``renewed``)."""

    def __init__(self, path: str, record: Callable[[], dict], describe: Callable[[str], str]):
        self.path, self._record, self._describe = path, record, describe
        self._tag: str | None = None     # the ETag this run last wrote (conditional stores)
        self.lost = False                # another run took the lease over
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def take(self, out: str) -> "Lease":
        """Take the lease or raise ``FileExistsError`` naming the live holder."""
        conditional = storage.has_conditional_writes(self.path)
        if conditional:
            try:
                self._tag = storage.create_new(self.path, self._body())
            except storage.PreconditionFailed:
                self._take_over(out)
        else:
            if storage.exists(self.path):
                self._refuse_if_fresh(out, storage.read_text(self.path))
            storage.write_bytes(self.path, self._body())
        self._thread = threading.Thread(target=self._renew, name="icpc-lease", daemon=True)
        self._thread.start()
        return self

    def release(self) -> None:
        """Stop renewing and delete the lease, unless another run has taken it over."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        if self.lost:
            return
        if self._tag is None or storage.version_tag(self.path) == self._tag:  # a small window: see the docstring
            storage.remove(self.path)

    def _take_over(self, out: str) -> None:
        try:
            stale_tag = storage.version_tag(self.path)
            held = storage.read_text(self.path)
        except FileNotFoundError:  # released between our create and this read
            raise FileExistsError(f"{out}: its lease changed hands while this run tried to take it; "
                                  f"try again") from None
        self._refuse_if_fresh(out, held)
        try:
            self._tag = storage.replace_version(self.path, self._body(), stale_tag)
        except storage.PreconditionFailed:
            raise FileExistsError(f"{out}: another run took over its stale lease at the same moment "
                                  f"({self._describe(storage.read_text(self.path))})") from None

    def _refuse_if_fresh(self, out: str, held: str) -> None:
        try:
            fresh = time.time() - json.loads(held)["renewed"] < LEASE_STALE_S
        except (ValueError, KeyError, TypeError):
            fresh = False  # not a lease this code wrote: taken over
        if fresh:
            raise FileExistsError(f"{out} is in use by a live training run ({self._describe(held)}); stop it, "
                                  f"wait for it to finish, or train into another --output")

    def _body(self) -> bytes:
        return json.dumps({**self._record(), "renewed": time.time()}).encode()

    def _renew(self) -> None:
        while not self._stop.wait(LEASE_RENEW_S):
            try:
                if self._tag is None:
                    storage.write_bytes(self.path, self._body())
                else:
                    self._tag = storage.replace_version(self.path, self._body(), self._tag)
            except storage.PreconditionFailed:
                self.lost = True
                print(f"warning: {self.path}: another run took over this run's lease (it was not renewed for "
                      f"{LEASE_STALE_S:.0f} s); two runs may now write to this output", file=sys.stderr, flush=True)
                return
            except OSError as exc:  # a store hiccup: the next renewal tries again, well within LEASE_STALE_S
                print(f"warning: {self.path}: lease renewal failed ({exc}); retrying", file=sys.stderr, flush=True)
