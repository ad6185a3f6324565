"""Real conda packages, offline: `.conda` archives built with conda-package-handling, a
local channel indexed with py-rattler, prefixes created and changed by py-rattler's
installer, which writes `conda-meta/` as conda does.

py-rattler runs in a child process: its runtime may abort while the interpreter exits,
which must not take the test process down with it.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytest.importorskip("rattler", reason="py-rattler (the test extra) is needed for conda tests")
pytest.importorskip("conda_package_handling", reason="conda-package-handling is needed")


@dataclass(frozen=True)
class CondaPkg:
    name: str
    version: str
    build: str = "h0_0"
    depends: tuple[str, ...] = ()
    files: dict[str, bytes] = field(default_factory=dict)
    """Path in the prefix -> content; a share/<name>.txt when empty."""

    @property
    def filename(self) -> str:
        return f"{self.name}-{self.version}-{self.build}.conda"


def build_conda(pkg: CondaPkg, channel: Path) -> Path:
    """A noarch `.conda` archive of `pkg` in `channel/noarch` (conda-package-handling)."""
    from conda_package_handling import api

    out = channel / "noarch"
    out.mkdir(parents=True, exist_ok=True)
    files = pkg.files or {f"share/{pkg.name}.txt": f"{pkg.name} {pkg.version}\n".encode()}
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp)
        (src / "info").mkdir()
        paths = []
        for rel, data in files.items():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            (src / rel).write_bytes(data)
            digest = hashlib.sha256(data).hexdigest()
            paths.append({"_path": rel, "path_type": "hardlink", "sha256": digest,
                          "size_in_bytes": len(data)})  # fmt: skip
        index = {"name": pkg.name, "version": pkg.version, "build": pkg.build, "build_number": 0,
                 "depends": list(pkg.depends), "subdir": "noarch", "license": "MIT"}  # fmt: skip
        (src / "info" / "index.json").write_text(json.dumps(index))
        (src / "info" / "files").write_text("".join(f"{p}\n" for p in files))
        (src / "info" / "paths.json").write_text(json.dumps({"paths": paths, "paths_version": 1}))
        api.create(str(src), None, pkg.filename, out_folder=str(out))
    return out / pkg.filename


_RATTLER = """
import asyncio, json, os, sys
import rattler
from rattler.index import index_fs

args = json.loads(sys.argv[1])

async def main():
    if args["op"] == "index":
        await index_fs(args["channel"], force=True)
        return
    prefix = args["prefix"]
    meta = os.path.join(prefix, "conda-meta")
    names = sorted(os.listdir(meta)) if os.path.isdir(meta) else []
    installed = [rattler.PrefixRecord.from_path(os.path.join(meta, n))
                 for n in names if n.endswith(".json")]
    keep = [r for r in installed if r.name.normalized not in args.get("drop", [])]
    specs = args.get("specs", [])
    records = []
    if specs:
        records = await rattler.solve(sources=args["channels"], specs=specs,
                                      platforms=["linux-64", "noarch"], locked_packages=[
                                          r for r in keep if r.name.normalized not in
                                          {s.split("=")[0].split("::")[-1] for s in specs}])
    wanted = {r.name.normalized for r in records}
    final = records + [r for r in keep if r.name.normalized not in wanted]
    await rattler.install(final, target_prefix=prefix, installed_packages=installed,
                          cache_dir=args["cache"], show_progress=False)

asyncio.run(main())
sys.stdout.flush()
os._exit(0)
"""


def rattler(**args: object) -> None:
    """Run one py-rattler operation in a child (see the module docstring)."""
    proc = subprocess.run(
        [sys.executable, "-c", _RATTLER, json.dumps(args)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise AssertionError(f"rattler {args.get('op')} failed:\n{proc.stdout}\n{proc.stderr}")


def index(channel: Path) -> None:
    rattler(op="index", channel=str(channel))


def conda_install(prefix: Path, channel: Path, *specs: str, cache: Path) -> None:
    """Solve `specs` against the local channel and link them into `prefix` (py-rattler)."""
    rattler(op="install", prefix=str(prefix), channels=[f"file://{channel}"], specs=list(specs),
            cache=str(cache))  # fmt: skip


def conda_remove(prefix: Path, *names: str, cache: Path) -> None:
    """Unlink `names` from `prefix` (py-rattler), leaving the rest as it is."""
    rattler(op="install", prefix=str(prefix), channels=[], drop=list(names), cache=str(cache))


def add_history(prefix: Path, verb: str, *specs: str) -> None:
    """Append a transaction to conda-meta/history as conda writes it (rattler leaves it
    empty)."""
    with (prefix / "conda-meta" / "history").open("a") as f:
        f.write(
            f"==> 2026-01-01 00:00:00 <==\n# cmd: conda {verb}\n# {verb} specs: {list(specs)}\n"
        )


# -- a conda client for restore tests -------------------------------------------------------

_SHIM = '''#!{python}
"""A thin conda client over py-rattler, for tests only: no mamba, micromamba or conda can
be installed on the test machine. It accepts exactly the command lines pkgckpt's conda back
end speaks, and refuses every other (exit 2), so a test fails when that line changes."""
import asyncio, json, os, sys
import rattler

argv = sys.argv[1:]
with open({log!r}, "a") as f:
    f.write(json.dumps([os.path.basename(sys.argv[0]), *argv]) + "\\n")

def refuse():
    print("shim: unexpected command line:", argv, file=sys.stderr)
    sys.exit(2)

if "--" not in argv:
    refuse()
cut = argv.index("--")
opts, args = argv[:cut], argv[cut + 1:]
if len(opts) < 4 or opts[1] != "--prefix" or opts[3] != "--yes" or not args:
    refuse()
verb, prefix, rest = opts[0], opts[2], opts[4:]
meta = os.path.join(prefix, "conda-meta")
installed = [rattler.PrefixRecord.from_path(os.path.join(meta, n))
             for n in sorted(os.listdir(meta)) if n.endswith(".json")]

async def install(channels, specs):
    names = [s.split("::", 1)[1].split("=")[0] for s in specs]
    for s in specs:
        if s.split("::", 1)[0] not in channels:
            print(f"shim: {{s}}: channel not given with --channel", file=sys.stderr)
            sys.exit(1)
    # conda's name=version=build, in the "name ==version build" form py-rattler parses.
    exact = ["{{}} =={{}} {{}}".format(*s.split("::", 1)[1].split("=")) for s in specs]
    records = await rattler.solve(sources=channels, specs=exact,
                                  platforms=["linux-64", "noarch"])
    # --no-deps: only the packages named, the rest left as it is.
    records = [r for r in records if r.name.normalized in names]
    keep = [r for r in installed if r.name.normalized not in names]
    await rattler.install(records + keep, target_prefix=prefix, installed_packages=installed,
                          cache_dir=os.path.join(prefix, ".shim-cache"), show_progress=False)

if verb == "install":
    channels = []
    if not rest or rest[0] != "--override-channels":
        refuse()
    i = 1
    while i + 1 < len(rest) and rest[i] == "--channel":
        channels.append(rest[i + 1])
        i += 2
    tail = rest[i:]
    if not channels or tail not in (["--no-deps"], ["--no-deps", "--force-reinstall"]):
        refuse()
    asyncio.run(install(channels, args))
elif verb == "remove" and rest == ["--force"]:
    keep = [r for r in installed if r.name.normalized not in args]
    asyncio.run(rattler.install(keep, target_prefix=prefix, installed_packages=installed,
                                show_progress=False))
else:
    refuse()
sys.stdout.flush()
os._exit(0)
'''


def conda_client(bindir: Path, name: str, log: Path) -> Path:
    """Put the test client on `bindir` as `name` (mamba, micromamba or conda)."""
    bindir.mkdir(parents=True, exist_ok=True)
    path = bindir / name
    path.write_text(_SHIM.format(python=sys.executable, log=str(log)))
    path.chmod(0o755)
    return path


def client_calls(log: Path) -> list[list[str]]:
    """Every command line the test client received, in order."""
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]
