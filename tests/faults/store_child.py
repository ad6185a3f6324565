"""A store writer/reader run as its own process by the store's fault and crash tests.

    store_child.py steps ROOT KEY STEP...   STEP: commit:LABEL | read | ls; one JSON line each
    store_child.py loop ROOT KEY START      commit bodies START+1, START+2, ... until killed

Bodies come from `make_body`, which the tests import too, so they can check that what a
reader sees is exactly one of the bodies written.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pkgckpt import manifest
from pkgckpt.errors import PkgckptError, StoreConflict
from pkgckpt.store import SYNCED, Store


def make_body(label: str, packages: int = 20) -> manifest.Body:
    """A body named by `label` (its environment path is /env/<label>)."""
    env = manifest.Environment(kind="python", path=f"/env/{label}", interpreter="3.11.7")
    added = tuple(
        manifest.Package(
            name=f"package-{label}-{i}",
            version=f"1.{i}.0",
            installer="pip",
            source=manifest.UrlSource(
                url=f"https://example.org/package-{i}-1.{i}.0-py3-none-any.whl",
                hashes={"sha256": f"{i:064x}"},
            ),
        )
        for i in range(packages)
    )
    return manifest.Body(environments=(manifest.Delta(env=env, added=added),))


def label(m: manifest.Manifest) -> str:
    return m.body.environments[0].env.path.removeprefix("/env/")


def step(store: Store, what: str) -> dict[str, object]:
    try:
        if what.startswith("commit:"):
            done = store.commit(make_body(what.partition(":")[2]))
            return {"step": what, "generation": done.generation if done else None}
        if what == "read":
            reader = Store(store.root, store.key)
            found = reader.read()
            return {
                "step": what,
                "generation": found.generation if found else None,
                "label": label(found) if found else None,
                "warning": reader.last_read_warning,
            }
        return {
            "step": what,
            "names": sorted(p.name for p in store.path.iterdir() if not p.name.startswith(SYNCED)),
        }
    except PkgckptError as e:
        return {"step": what, "error": type(e).__name__, "message": str(e)}


def main(argv: list[str]) -> None:
    mode, root, key = argv[:3]
    store = Store(Path(root), key)
    if mode == "steps":
        for what in argv[3:]:
            print(json.dumps(step(store, what)), flush=True)
        return
    counter = int(argv[3])
    print("ready", flush=True)
    while True:
        counter += 1
        try:
            store.commit(make_body(str(counter), counter % 40))
        except StoreConflict:
            # A writer killed between claiming its number and renaming manifest.json left
            # the newest generation: learn it, as `checkpoint.commit` does, and go on.
            store.check()


if __name__ == "__main__":
    main(sys.argv[1:])
