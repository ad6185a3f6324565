"""R end to end with artifacts: `pkgckpt snapshot` captures the user's R packages as
binary packages; with the repository gone and no compiler, `pkgckpt restore` puts the
same library back from them alone, and refuses a tampered one, naming its hash."""

from __future__ import annotations

import shutil
from pathlib import Path

import restore_kit
import rpkgs

from pkgckpt.rmatch import minor
from pkgckpt.scan.r import r_info
from pkgckpt.store import init_store

needs_r = rpkgs.needs_r


@needs_r
def test_an_r_library_comes_back_from_its_artifacts_alone(tmp_path: Path) -> None:
    """Repository removed, CC=false and R's make variables pointing at `false`: restore
    installs every package from its artifact; installed.packages() is the same, the C code
    runs, a rerun does nothing; a tampered artifact is refused and named."""
    repo = rpkgs.build_repo(tmp_path / "cran")
    lib = tmp_path / "lib"
    lib.mkdir()
    init_store(tmp_path / "store")
    env = restore_kit.hermetic(tmp_path / "c1")
    # The shared test settings switch the cache off; this test is about the cache.
    env.update(HOME=str(tmp_path), PKGCKPT_DEBUG="1", PKGCKPT_ARTIFACTS="1")
    flags = ["--r-lib", str(lib), "--store", str(tmp_path / "store"), "--key", "k"]
    baseline = tmp_path / "baseline.json"
    made = restore_kit.pkgckpt("baseline", *flags, "--output", str(baseline), env=env)
    assert made.returncode == 0, made.stderr
    flags += ["--baseline", str(baseline)]
    rpkgs.install(lib, repo, ["ckptAfirst", "ckptC"], [repo.tarball("ckptOld", "0.9-1")])
    before = rpkgs.installed(lib)
    snap = restore_kit.pkgckpt("snapshot", *flags, env=env, timeout=300)
    assert snap.returncode == 0, snap.stdout + snap.stderr
    version, platform = r_info()
    where = tmp_path / "store" / "k" / "artifacts" / f"R-{minor(version)}"
    assert sorted(p.name for p in where.iterdir()) == sorted(
        f"{n}_{v}_R_{platform}.tar.gz" for n, v in before.items()
    )

    shutil.rmtree(repo.root)
    makevars = tmp_path / "Makevars"
    makevars.write_text("CC=false\nCXX=false\nFC=false\n")
    env = restore_kit.hermetic(tmp_path / "c2")
    env.update(HOME=str(tmp_path), CC="false", R_MAKEVARS_USER=str(makevars))
    shutil.rmtree(lib)
    lib.mkdir()
    done = restore_kit.pkgckpt("restore", *flags, "--r-repo", repo.url, env=env, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert rpkgs.installed(lib) == before
    out = rpkgs.rscript(".libPaths(commandArgs(TRUE)); cat(ckptC::c_add(2L, 3L))", str(lib))
    assert out == "5"
    again = restore_kit.pkgckpt("restore", *flags, "--r-repo", repo.url, env=env)
    assert again.returncode == 0 and "Nothing to restore" in again.stdout, again.stdout

    tampered = where / f"ckpt.base_1.0.0_R_{platform}.tar.gz"
    data = bytearray(tampered.read_bytes())
    data[len(data) // 2] ^= 1
    tampered.write_bytes(bytes(data))
    shutil.rmtree(lib)
    lib.mkdir()
    env = {**env, "XDG_RUNTIME_DIR": str(tmp_path / "c3" / "run")}
    bad = restore_kit.pkgckpt("restore", *flags, "--r-repo", repo.url, env=env, timeout=300)
    assert bad.returncode == 3, bad.stdout + bad.stderr
    assert "ckpt.base" not in rpkgs.installed(lib)
    assert "sha256" in bad.stdout, bad.stdout


def _captured(
    tmp_path: Path, repo: rpkgs.Repo, packages: list[str], **variables: str
) -> tuple[Path, list[str], dict[str, str]]:
    """An R library `lib` holding `packages` from `repo`, its baseline taken before them
    and a snapshot with artifacts after: the library, restore's flags and the first
    container's environment (plus `variables`)."""
    lib = tmp_path / "lib"
    lib.mkdir()
    init_store(tmp_path / "store")
    env = restore_kit.hermetic(tmp_path / "c1")
    env.update(HOME=str(tmp_path), PKGCKPT_ARTIFACTS="1", **variables)
    flags = ["--r-lib", str(lib), "--store", str(tmp_path / "store"), "--key", "k"]
    baseline = tmp_path / "baseline.json"
    made = restore_kit.pkgckpt("baseline", *flags, "--output", str(baseline), env=env)
    assert made.returncode == 0, made.stderr
    flags += ["--baseline", str(baseline)]
    rpkgs.install(lib, repo, packages)
    snap = restore_kit.pkgckpt("snapshot", *flags, env=env, timeout=300)
    assert snap.returncode == 0, snap.stdout + snap.stderr
    return lib, flags, env


def _tamper(tmp_path: Path, name: str, version: str) -> None:
    """Flip one byte of the R artifact of `name` `version` in the store."""
    r, platform = r_info()
    artifact = tmp_path / "store" / "k" / "artifacts" / f"R-{minor(r)}"
    artifact /= f"{name}_{version}_R_{platform}.tar.gz"
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 1
    artifact.write_bytes(bytes(data))


@needs_r
def test_no_index_leaves_an_r_package_whose_artifact_is_refused_to_its_repository(
    tmp_path: Path,
) -> None:
    """`--no-index` (pip's and uv's: "use --find-links only") does not stop R's repository:
    an R package whose artifact is tampered comes from `--r-repo`, as one captured without
    an artifact does, and the report says why its artifact was not used."""
    repo = rpkgs.build_repo(tmp_path / "cran")
    lib, flags, env = _captured(tmp_path, repo, ["ckpt.base"])
    _tamper(tmp_path, "ckpt.base", "1.0.0")

    shutil.rmtree(lib)
    lib.mkdir()
    env = restore_kit.hermetic(tmp_path / "c2")
    env.update(HOME=str(tmp_path))
    no_index = ["--no-index", "--r-repo", repo.url]
    done = restore_kit.pkgckpt("restore", *flags, *no_index, env=env, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert rpkgs.installed(lib) == {"ckpt.base": "1.0.0"}
    assert "artifact refused" in done.stdout and "installed from its source" in done.stdout


@needs_r
def test_an_r_library_comes_back_from_its_artifacts_without_any_repository(
    tmp_path: Path,
) -> None:
    """No --r-repo and R's `repos` only `@CRAN@`: every package has an artifact that fits,
    so restore needs no repository and installs them (a usage error before, exit 2 and
    nothing restored); with one artifact tampered, that package alone fails (exit 3),
    saying there is no repository to fall back to."""
    repo = rpkgs.build_repo(tmp_path / "cran")
    rprofile = tmp_path / "Rprofile.site"
    rprofile.write_text("")  # R's own default: repos = c(CRAN = "@CRAN@")
    lib, flags, env = _captured(tmp_path, repo, ["ckptImports"], R_PROFILE=str(rprofile))
    before = rpkgs.installed(lib)

    for run, tamper in enumerate((False, True)):
        shutil.rmtree(lib)
        lib.mkdir()
        if tamper:
            _tamper(tmp_path, "ckpt.base", "1.0.0")
        env = {**env, "XDG_RUNTIME_DIR": str(tmp_path / f"c{run + 2}" / "run")}
        done = restore_kit.pkgckpt("restore", *flags, env=env, timeout=300)
        if not tamper:
            assert done.returncode == 0, done.stdout + done.stderr
            assert rpkgs.installed(lib) == before
        else:
            assert done.returncode == 3, done.stdout + done.stderr
            assert "ckpt.base" not in rpkgs.installed(lib)
            assert "artifact refused" in done.stdout
            assert "no R repository to restore from" in done.stdout, done.stdout
