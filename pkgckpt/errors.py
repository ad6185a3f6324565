"""One error hierarchy. Library code raises these; only the CLI maps them to exit codes."""

from __future__ import annotations


class PkgckptError(Exception):
    """Base of every error pkgckpt reports to a person."""

    exit_code = 1


class UsageError(PkgckptError):
    """A bad flag, setting or config file."""

    exit_code = 2


class ManifestError(PkgckptError):
    """A manifest or baseline that cannot be trusted: corrupt, torn, unknown schema, hostile."""


class UnknownSchema(ManifestError):
    """A manifest or baseline written by a newer pkgckpt (a newer major schema): upgrade.

    Separate from other ManifestErrors because it is not damage: a reader must not fall back
    to an older generation, nor a writer overwrite it with an older schema.
    """


class AlreadyRunning(PkgckptError):
    """`pkgckpt daemon` for a store and key whose daemon already runs in this container:
    a second one would be a second writer of the manifest (exit 4, nothing was done)."""

    exit_code = 4


class Unreachable(PkgckptError):
    """A daemon runs for the store and key (it holds their lock) but cannot be handed a
    change: nothing was changed, since a write behind its back would be undone."""


class HeldByDaemon(PkgckptError):
    """`forget` or `revert`: the running daemon made the change to its record, the store
    did not take it yet (exit 5). The daemon keeps it like a change it saw: pending,
    retried until the store takes it, and at SIGTERM it exits 1 if it never did."""

    exit_code = 5


class StoreError(PkgckptError):
    """The store refused a read or a write (ownership, permissions, layout)."""


class StoreUnavailable(StoreError):
    """The store cannot be reached or written now (EIO, ENOSPC, ESTALE, ...): retry later.

    The caller keeps its state: nothing is lost by this error.
    """


class StoreConflict(StoreUnavailable):
    """Another writer of the key took the generation number this commit picked, or wrote
    a newer generation while this one was written: nothing of this commit replaced theirs.
    The caller folds what the store now holds (`Store.check` or `Store.read` return the
    newest generation, whichever file holds it) and commits again."""


class ScanError(PkgckptError):
    """A library or environment could not be scanned."""


class Uncapturable(PkgckptError):
    """A package that cannot be captured as an artifact (editable, a file gone, over the
    quota): the reason is reported, the package stays recorded as it is."""


class NotInstalled(Uncapturable):
    """The recorded install is not where its capture looked: a restore held it back or
    failed it, or it was uninstalled since. Captured once a scan finds it installed."""


class RestoreError(PkgckptError):
    """Restore could not run at all; nothing was changed."""


class UnknownPackage(PkgckptError):
    """`forget` of a name the record does not hold (the message lists the names it holds)."""


class NotKept(PkgckptError):
    """`revert` to a generation the store does not keep."""


class Declined(PkgckptError):
    """The user answered no to a question: nothing was changed."""
