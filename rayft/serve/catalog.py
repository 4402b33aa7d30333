"""What a server serves right now: the store's results that fit its base models, minus withdrawn ids, plus aliases.

Re-read from the store with a short TTL (and at once on a miss), so adapters exported, registered, withdrawn
or re-aliased by anyone sharing the store show up without a restart. Free of Ray.
"""

from __future__ import annotations

import dataclasses
import logging
import time

from rayft.errors import StoreError
from rayft.serve.api import ModelEntry, ServeError, build_catalog, not_found, resolve
from rayft.serve.defaults import CATALOG_TTL_S
from rayft.store import AdapterStore, Manifest
from rayft.store.store import split_ref, validate_ref
from rayft.store.compat import BaseInfo, IncompatibleError, check_compatible
from rayft.store.records import alias_record, aliases, unregistered

logger = logging.getLogger("ray.serve")


def incompatible(model_id: str, exc: IncompatibleError) -> ServeError:
    """409 when the result conflicts with the served base, 422 when its manifest is not servable."""
    status = 409 if exc.reason in IncompatibleError.CONFLICTS else 422
    return ServeError(status, f"model {model_id!r} cannot be served here: {exc}", "invalid_request_error", exc.reason)


class Catalog:
    """The served models by id (aliases included) and the refused ones with their reason.

    Args:
        store: the adapter store.
        bases: the base models this server serves, by name.
        ttl: seconds a listing stays fresh.
    """

    def __init__(self, store: AdapterStore, bases: dict[str, BaseInfo], ttl: float = CATALOG_TTL_S) -> None:
        self.store, self.bases, self.ttl = store, bases, ttl
        self.entries: dict[str, ModelEntry] = {}
        self.refused: dict[str, ServeError] = {}
        self.withdrawn: set[str] = set()
        self.aliases: dict[str, str] = {}
        self._read_at = float("-inf")

    def refresh(self, force: bool = False) -> None:
        """Re-read the store if the listing is older than the TTL (or ``force``)."""
        if not force and time.monotonic() - self._read_at <= self.ttl:
            return
        manifests, refused = [], {}
        self.withdrawn = unregistered(self.store)
        for m in self.store.list(heads=True):  # a multi-task entry's heads are served under ids of their own
            if m.adapter_id in self.withdrawn or split_ref(m.adapter_id)[0] in self.withdrawn:
                continue
            try:
                check_compatible(self.store, m, self.bases)
                manifests.append(m)
            except IncompatibleError as exc:
                refused[m.adapter_id] = incompatible(m.adapter_id, exc)
        entries = {k: e for k, e in build_catalog(manifests).items() if e.kind != "base" or k in self.bases}
        self.aliases = aliases(self.store)
        for alias, target in self.aliases.items():
            if target in entries and alias not in entries:
                entries[alias] = dataclasses.replace(entries[target], id=alias, alias_of=target)
        self.entries, self.refused, self._read_at = entries, refused, time.monotonic()

    def resolve(self, model: str) -> ModelEntry:
        """The entry for a requested id, re-reading the store once on a miss.

        Raises:
            ServeError: 404 for an invalid, unknown or withdrawn id; 409/422 for a stored but unservable one.
        """
        self.refresh()
        if model not in self.entries and self._may_exist(model):
            self.refresh(force=True)
        if model in self.refused:
            raise self.refused[model]
        if model in self.withdrawn:
            raise not_found(model, "it was unregistered from this server")
        return resolve(self.entries, model)

    def _may_exist(self, model: str) -> bool:
        """Whether a re-read could find ``model`` (one stat, so floods of bad ids never re-read the store)."""
        try:
            validate_ref(model)
        except StoreError:
            return model in self.bases
        if split_ref(model)[1] is not None:  # a head: its entry's manifest says whether it has one
            return self.store.exists(model)
        return self.store.exists(model) or alias_record(self.store, model) is not None

    def check(self, model_id: str) -> tuple[Manifest, ModelEntry | None]:
        """A stored result's manifest and, if it is servable now, its entry (for the admin routes).

        Raises:
            ServeError: 404 for an invalid or unknown id, 409/422 if it cannot be served on these bases.
        """
        try:
            manifest = self.store.manifest(model_id)
        except StoreError as exc:
            raise not_found(model_id, str(exc)) from None
        try:
            check_compatible(self.store, manifest, self.bases)
        except IncompatibleError as exc:
            raise incompatible(model_id, exc) from None
        self.refresh(force=True)
        return manifest, self.entries.get(model_id)
