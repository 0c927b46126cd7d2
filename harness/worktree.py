"""Other commits' code, side by side with this one: temporary git worktrees and their import roots.

History backfill and the A/B gate measure an older commit in a subprocess that imports *that*
commit's ``harness``. A ``git worktree`` gives the files (the main checkout, and any uncommitted
work in it, is left alone); an *import root* makes them importable: the project maps four top-level
folders into one package (``harness``, ``harness.candidates`` <- ``candidates/``, ...; see
``[tool.setuptools] package-dir`` in pyproject.toml), which a plain PYTHONPATH entry cannot express,
so the import root is a small tree of symlinks that mirrors the installed layout. Putting it first
on PYTHONPATH makes it win over the editable install of the current checkout (setuptools' editable
finder sits after the normal path finder in ``sys.meta_path``).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from harness.errors import CommandFailed


class GitError(CommandFailed, RuntimeError):
    """A git command failed; the message carries git's own error."""


def git(repo: Path, *args: str, timeout: float = 120) -> str:
    try:
        out = subprocess.run(
            ["git", *args], cwd=repo, capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise GitError(f"git {' '.join(args)}: {e}") from e
    if out.returncode != 0:
        raise GitError(f"git {' '.join(args)} failed in {repo}: {out.stderr.strip() or out.stdout.strip()}")
    return out.stdout.strip()


def rev_parse(repo: Path, ref: str) -> str:
    """Full sha of a commit-ish; a clear error for an unknown one."""
    try:
        return git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    except GitError:
        raise GitError(f"unknown git revision {ref!r} in {repo}") from None


def revisions(repo: Path, spec: str) -> list[str]:
    """Commits of ``A..B`` (oldest first), ``A^!``, or a single commit-ish."""
    if ".." in spec or spec.endswith("^!") or spec.startswith("^"):
        out = git(repo, "rev-list", "--reverse", spec)
        shas = out.split()
        if not shas:
            raise GitError(f"revision range {spec!r} selects no commits")
        return shas
    return [rev_parse(repo, spec)]


def is_dirty(repo: Path) -> bool:
    """Tracked files modified (untracked files do not change what a commit's code does)."""
    return bool(git(repo, "status", "--porcelain", "--untracked-files=no"))


def package_dirs(tree: Path) -> dict[str, str]:
    """``[tool.setuptools] package-dir`` of the tree's pyproject.toml ({} when absent)."""
    pyproject = tree / "pyproject.toml"
    if not pyproject.exists():
        return {}
    text = pyproject.read_text()
    try:
        import tomllib  # Python 3.11+
    except ModuleNotFoundError:  # Python 3.10: the inline table, read by a pattern
        m = re.search(r"^package-dir\s*=\s*\{([^}]*)\}", text, re.MULTILINE)
        pairs = re.findall(r'"([^"]*)"\s*=\s*"([^"]*)"', m.group(1)) if m else []
        return dict(pairs)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return {}
    return dict(data.get("tool", {}).get("setuptools", {}).get("package-dir", {}) or {})


def build_import_root(tree: Path, dest: Path) -> Path:
    """A directory that, first on PYTHONPATH, imports the packages of ``tree`` as installed.

    With no package-dir mapping the tree itself is the import root; ``{"": "src"}`` gives ``src``.
    Otherwise every mapped package becomes a symlink to its folder, or, when other mapped packages
    live inside it, a directory holding symlinks to its files plus those sub-packages.
    """
    mapping = package_dirs(tree)
    if not mapping:
        return tree
    if "" in mapping:
        return tree / mapping[""]
    dest.mkdir(parents=True, exist_ok=True)
    names = sorted(mapping, key=lambda n: n.count("."))
    for pkg in names:
        src = tree / mapping[pkg]
        target = dest.joinpath(*pkg.split("."))
        children = [n for n in names if n.startswith(pkg + ".") and n.count(".") == pkg.count(".") + 1]
        if not children:
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                target.symlink_to(src, target_is_directory=True)
            continue
        target.mkdir(parents=True, exist_ok=True)
        child_names = {c.rsplit(".", 1)[1] for c in children}
        for entry in src.iterdir():
            if entry.name in child_names or entry.name == "__pycache__":
                continue
            link = target / entry.name
            if not link.exists():
                link.symlink_to(entry, target_is_directory=entry.is_dir())
    return dest


def pythonpath_env(import_root: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """A copy of the environment with ``import_root`` first on PYTHONPATH."""
    env = dict(os.environ if base is None else base)
    prev = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(import_root) + (os.pathsep + prev if prev else "")
    return env


@dataclass(frozen=True)
class Checkout:
    sha: str
    tree: Path  # the worktree's files
    import_root: Path  # put first on PYTHONPATH to import this commit's packages


@contextlib.contextmanager
def checkout(repo: Path, ref: str) -> Iterator[Checkout]:
    """``ref`` checked out (detached) in a temporary worktree, removed afterwards."""
    sha = rev_parse(repo, ref)
    tmp = Path(tempfile.mkdtemp(prefix=f"harness-{sha[:8]}-"))
    tree = tmp / "tree"
    git(repo, "worktree", "add", "--detach", str(tree), sha)
    try:
        yield Checkout(sha, tree, build_import_root(tree, tmp / "import"))
    finally:
        with contextlib.suppress(GitError):
            git(repo, "worktree", "remove", "--force", str(tree))
        shutil.rmtree(tmp, ignore_errors=True)
        with contextlib.suppress(GitError):
            git(repo, "worktree", "prune")
