r"""Run state on disk: resume a long spectrum after a kill, and report progress on the way.

A :class:`RunStore` is a folder holding what a run has finished so far:

* ``manifest.json`` -- what identifies the run: sections claimed by the callers
  (:meth:`RunStore.claim`: the command and its options, the operator's shape, dtype and a
  fingerprint, the key, the code version). A second run pointed at the folder must claim the
  same sections with the same content, else :class:`ResumeError` (never a silent mix).
* ``*.state`` -- one file per saved piece (a restart cycle's bases, a finished solve, one SLQ
  probe): a header line ``MFTJSTATE1 <sha256> <length>`` followed by an ``.npz`` payload
  (arrays and a JSON record, no pickle). A truncated or corrupt file fails its length or
  checksum and raises :class:`ResumeError` naming the file, never read as data.

Every file is written atomically: to a temporary file in the same folder, ``fsync``, then
``os.replace``; a kill at any moment leaves either the old file or the new one.

The solvers know the store only through a small protocol: ``checkpoint.stage(kind, **meta)``
returns a :class:`Stage`, with ``load(part)`` (``None`` if not saved yet) and
``save(part, arrays)``. Stages are numbered per kind in call order under a prefix
(:meth:`RunStore.sub`), which is the same in a resumed run because the run is deterministic
given its key; each stage also records ``meta`` (sizes, options) and checks it on load.

Progress: the solvers call ``progress(message)`` with one line per restart cycle or stage;
a ``progress`` object that also has ``update(label, done, total, unit)`` (e.g.
:class:`matfree_tj.app.cli` 's terminal bar) gets the counts too (:func:`tick`).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

__all__ = ["RunStore", "ResumeError", "Stage", "atomic_write", "atomic_path", "tick"]

_MAGIC = b"MFTJSTATE1"
_FORMAT = 1


class ResumeError(RuntimeError):
    """A resume folder cannot be used: it belongs to another run, or a state file is corrupt."""


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open folders; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically
    (fsync, ``os.replace``), on error it is removed and ``path`` is untouched.

    Examples
    --------
    >>> import os, tempfile
    >>> from matfree_tj.linalg import atomic_path
    >>> d = tempfile.mkdtemp()
    >>> with atomic_path(os.path.join(d, "a.txt")) as tmp:
    ...     with open(tmp, "w") as f:
    ...         _ = f.write("done")
    >>> with open(os.path.join(d, "a.txt")) as f:
    ...     f.read(), len(os.listdir(d))
    ('done', 1)
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    stem, ext = os.path.splitext(base)
    fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=f".tmp{ext}", dir=folder)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(folder)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`).

    Examples
    --------
    >>> import os, tempfile
    >>> from matfree_tj.linalg import atomic_write
    >>> p = os.path.join(tempfile.mkdtemp(), "r.json")
    >>> atomic_write(p, '{"a": 1}')
    >>> with open(p) as f:
    ...     f.read()
    '{"a": 1}'
    """
    with atomic_path(path) as tmp:
        with open(tmp, "wb" if isinstance(data, bytes) else "w") as f:
            f.write(data)


def _pack(arrays: Mapping[str, Any], record: Mapping[str, Any]) -> bytes:
    buf = io.BytesIO()
    payload = {k: np.asarray(v) for k, v in arrays.items()}
    payload["__record__"] = np.asarray(json.dumps(record, sort_keys=True))
    np.savez(buf, **payload)
    body = buf.getvalue()
    head = _MAGIC + b" " + hashlib.sha256(body).hexdigest().encode() + b" %d\n" % len(body)
    return head + body


def _unpack(path: str, hint: str) -> tuple[dict, dict]:
    with open(path, "rb") as f:
        data = f.read()
    head, _, body = data.partition(b"\n")
    parts = head.split(b" ")
    bad = None
    if len(parts) != 3 or parts[0] != _MAGIC:
        bad = "it does not start with a state header"
    elif not parts[2].isdigit() or int(parts[2]) != len(body):
        said = parts[2].decode(errors="replace")
        bad = f"it holds {len(body)} bytes of data, its header says {said} (truncated?)"
    elif hashlib.sha256(body).hexdigest().encode() != parts[1]:
        bad = "its checksum does not match (corrupt)"
    if bad is None:
        try:
            with np.load(io.BytesIO(body), allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            record = json.loads(str(arrays.pop("__record__")))
        except (ValueError, OSError, KeyError) as e:
            bad = f"it cannot be read ({e})"
    if bad is not None:
        raise ResumeError(f"The state file {path} cannot be used: {bad}. {hint}")
    return arrays, record


def _canonical(info: Any) -> Any:
    """JSON-normal form (tuples become lists, numbers and strings stay, others become str)."""
    return json.loads(json.dumps(info, sort_keys=True, default=str))


def _diff(a: Any, b: Any, where: str = "", rtol: float = 0.0) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            at = f"{where}.{k}" if where else k
            out += _diff(a.get(k, "<absent>"), b.get(k, "<absent>"), at, rtol)
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        pairs = enumerate(zip(a, b, strict=True))
        return [d for i, (x, y) in pairs for d in _diff(x, y, f"{where}[{i}]", rtol)]
    if rtol and isinstance(a, float) and isinstance(b, float):
        return (
            []
            if abs(a - b) <= rtol * max(abs(a), abs(b))
            else [f"{where}: {a!r} here, {b!r} in the folder"]
        )
    return [] if a == b else [f"{where}: {a!r} here, {b!r} in the folder"]


class Stage:
    """One solve's saved pieces, named ``<prefix><kind>-<n>`` in the store (see
    :meth:`RunStore.stage`)."""

    def __init__(self, store: RunStore, name: str, meta: Mapping[str, Any]):
        self.store = store
        self.name = name
        self.meta = _canonical(dict(meta))

    def _file(self, part: str) -> str:
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{self.name}.{part}")
        return os.path.join(self.store.path, safe + ".state")

    def load(self, part: str) -> dict | None:
        """The arrays saved as ``part`` (``"__meta__"`` holds the record), or ``None``.
        Raises :class:`ResumeError` for a corrupt file or one of a solve with other sizes."""
        path = self._file(part)
        if not os.path.exists(path):
            return None
        arrays, record = _unpack(path, self.store.hint)
        if record.get("stage_meta") != self.meta:
            d = _diff(self.meta, record.get("stage_meta") or {})
            raise ResumeError(
                f"The state file {path} belongs to another run (stage {self.name}: "
                f"{'; '.join(d)}). {self.store.hint}"
            )
        arrays["__meta__"] = record.get("data", {})
        return arrays

    def save(self, part: str, arrays: Mapping[str, Any], **data: Any) -> None:
        """Save ``arrays`` (numpy-convertible) and JSON-able ``data`` as ``part``, atomically."""
        blob = _pack(arrays, {"stage_meta": self.meta, "data": _canonical(data)})
        atomic_write(self._file(part), blob)


class RunStore:
    r"""A folder of run state for resuming a long computation after a kill or Ctrl-C.

    Parameters
    ----------
    path
        The folder (created if missing). An existing folder must be empty or a run-state
        folder (holding ``manifest.json``).
    restart
        Delete this folder's saved state first (the manifest and ``*.state`` files only) and
        start over.

    Pass the store (or a :meth:`sub` view) as ``checkpoint=`` to
    :func:`~matfree_tj.top_singular`, :func:`~matfree_tj.bottom_singular` and
    :func:`~matfree_tj.singular_value_density`; :func:`matfree_tj.analysis.spectrum_summary`
    takes ``resume_dir=``. Cost: each restart cycle writes the bases, ``(2m + b) P`` numbers;
    each SLQ probe ``m^2 + m`` numbers.

    Examples
    --------
    >>> import tempfile, jax, jax.numpy as jnp, matfree_tj as mtj
    >>> from matfree_tj.linalg import RunStore
    >>> A = jnp.diag(jnp.arange(1.0, 61.0))
    >>> op = mtj.LinearOperator(lambda v: A @ v, lambda u: A.T @ u, A.shape, A.dtype)
    >>> d = tempfile.mkdtemp()
    >>> kw = dict(key=jax.random.key(0), verify=False)
    >>> first = mtj.top_singular(op, 2, **kw, checkpoint=RunStore(d))
    >>> again = mtj.top_singular(op, 2, **kw, checkpoint=RunStore(d))  # the saved result
    >>> bool((first.s == again.s).all()), first.num_products == again.num_products
    (True, True)
    """

    def __init__(self, path: str | os.PathLike, *, restart: bool = False, _prefix: str = ""):
        self.path = os.path.abspath(os.fspath(path))
        self.prefix = _prefix
        self._counts: dict[str, int] = {}
        self.hint = (
            f"To start over, delete the folder {self.path} (or pass another folder, or "
            "--restart on the command line)."
        )
        if _prefix:
            return
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise ResumeError(f"The resume folder {self.path} is a file; give a folder path.")
        os.makedirs(self.path, exist_ok=True)
        manifest = os.path.join(self.path, "manifest.json")
        mine = [f for f in os.listdir(self.path) if f.endswith(".state") or f.startswith(".")]
        others = [f for f in os.listdir(self.path) if f != "manifest.json" and f not in mine]
        if not os.path.exists(manifest) and others:
            raise ResumeError(
                f"The resume folder {self.path} holds other files ({', '.join(sorted(others)[:3])}"
                "...) and no manifest.json: it is not a run-state folder. Give an empty or new "
                "folder."
            )
        if restart:
            for f in [*mine, "manifest.json"]:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(self.path, f))
        for f in os.listdir(self.path):  # temporaries of a write that was killed
            if f.startswith(".") and ".tmp" in f:
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(self.path, f))
        self._manifest = {"format": _FORMAT, "identity": {}}
        if os.path.exists(manifest):
            try:
                with open(manifest) as f:
                    self._manifest = json.load(f)
            except (OSError, ValueError) as e:
                raise ResumeError(
                    f"The manifest {manifest} cannot be read ({e}). {self.hint}"
                ) from None
            if self._manifest.get("format") != _FORMAT or "identity" not in self._manifest:
                raise ResumeError(f"The manifest {manifest} is not of this version. {self.hint}")
        self._root = self

    def claim(self, section: str, info: Mapping[str, Any], *, rtol: float = 0.0) -> None:
        """Record ``info`` (JSON-able) as what identifies the run under ``section``; if the
        folder already has that section with other content (floats: beyond a relative
        ``rtol``), raise :class:`ResumeError` listing the differences."""
        root = self._root
        info = _canonical(dict(info))
        ident = root._manifest["identity"]
        if section in ident:
            d = _diff(info, ident[section], rtol=rtol)
            if d:
                raise ResumeError(
                    f"The resume folder {root.path} holds the state of another run "
                    f"({section}: {'; '.join(d[:6])}). {root.hint}"
                )
            return
        ident[section] = info
        text = json.dumps(root._manifest, indent=1, sort_keys=True)
        atomic_write(os.path.join(root.path, "manifest.json"), text)

    def sub(self, name: str) -> RunStore:
        """A view of the same folder whose stages are named under ``name/`` (own numbering)."""
        view = RunStore.__new__(RunStore)
        view.path, view.hint, view._root = self.path, self.hint, self._root
        view.prefix = f"{self.prefix}{name}/"
        view._counts = {}
        return view

    def stage(self, kind: str, **meta: Any) -> Stage:
        """The next stage of ``kind`` under this view's prefix (numbered in call order)."""
        n = self._counts.get(kind, 0)
        self._counts[kind] = n + 1
        return Stage(self._root, f"{self.prefix}{kind}-{n:02d}", meta)


def tick(progress: Any, label: str, done: int, total: int | None, unit: str = "products") -> None:
    """Hand counts to a progress object that takes them (``progress.update(label, done,
    total, unit)``); plain callables (log lines) are left alone."""
    update = getattr(progress, "update", None)
    if update is not None:
        update(label, int(done), None if total is None else int(total), unit)


# -- the solvers' hooks -----------------------------------------------------------------------


def save_triplets(stage: Stage | None, res: Any) -> Any:
    """Save a finished solve's :class:`~matfree_tj.SingularTriplets` as the stage's result
    (a resumed run returns it without products); returns ``res``."""
    if stage is not None:
        arrays = {n: getattr(res, n) for n in ("s", "U", "V", "residuals", "converged")}
        if res.U is None or res.V is None:
            raise ValueError("Only triplets with vectors can be saved.")
        stage.save(
            "result",
            arrays,
            **{n: getattr(res, n) for n in ("num_products", "method", "which", "tol", "atol")},
            status=str(res.status),
            num_restarts=int(res.num_restarts),
            anorm=float(res.anorm),
        )
    return res


def load_triplets(stage: Stage | None) -> Any:
    """The stage's saved :class:`~matfree_tj.SingularTriplets`, or ``None``."""
    from ._results import SingularTriplets

    d = None if stage is None else stage.load("result")
    if d is None:
        return None
    import jax.numpy as jnp

    meta = d.pop("__meta__")
    return SingularTriplets(**{n: jnp.asarray(v) for n, v in d.items()}, **meta)


def save_cycle(stage: Stage | None, Ut: Any, Vt: Any, R: Any, **counters: Any) -> None:
    """Save a restarted Lanczos driver's state at a cycle boundary: the bases, the projected
    matrix and the counters (``start``, ``num_products``, ``anorm``, ``cycle``)."""
    if stage is not None:
        stage.save("cycle", {"Ut": Ut, "Vt": Vt, "R": R}, **counters)


def load_cycle(stage: Stage | None, dtype: Any) -> tuple | None:
    """``(Ut, Vt, R, counters)`` saved by :func:`save_cycle`, or ``None``."""
    d = None if stage is None else stage.load("cycle")
    if d is None:
        return None
    import jax.numpy as jnp

    return tuple(jnp.asarray(d[n], dtype) for n in ("Ut", "Vt", "R")) + (d["__meta__"],)
