"""A batch of pipeline prompts as a resumable sweep: :func:`run_prompts` (``attnlens batch``).

The results file is checked before anything runs, and a rerun continues only
what is still valid:

- every prompt has a key: its ``id`` (ids must be unique) or, without one, its
  position (``#3``); every row records the key and ``prompt_sha256``, a hash of
  the prompt;
- the settings that change outputs (the model, ``delta_mid``, ``layers``,
  ``chat``, ``return_full_text``, the influence convention and every keyword of
  the pipeline call, such as ``max_new_tokens``) are kept beside the results in
  ``<output>.run.json``; a rerun with other settings is refused, naming them;
- a prompt whose row is on disk with the same hash is skipped; an edited prompt
  (another hash) and a prompt without a row (new, or its row deleted) are
  generated again, and the stale row is replaced; rows of keys no longer in the
  input stay in the file, after the others, and are not returned;
- the batch size only groups the pending prompts: another batch size never
  doubles a row;
- a line of the results file that is not a JSON object (a hand edit, a write cut
  off by a crash) is an :class:`~attnlens.core.errors.AttnlensError` naming the
  file and its line number; nothing is deleted from the file;
- one run at a time writes a results file: a second run on the same file (another
  process or thread) is refused at once, naming it, while the first holds
  ``.<output>.lock`` beside it (under ``torchrun``, rank 0 holds it for the sweep).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from ..core.errors import AttnlensError
from ..core.records import read_jsonl
from ..core.resumable import RowFile, RunRecord, ShardedRows, changed, exclusive
from ..core.validate import is_int
from ..prompts.prompt import is_chat

logger = logging.getLogger(__name__)

#: the suffix of the identity file kept beside a results file
RUN_SUFFIX = ".run.json"
#: the call keywords whose default the pipeline fills in, so giving the default equals omitting it
_CALL_DEFAULTS = {"max_new_tokens": 64}


def read_prompts(path: str | os.PathLike) -> list[dict[str, Any]]:
    """A JSON Lines file of prompts: ``{"prompt": text or chat, "id": optional}`` per line."""
    records = []
    for where, row in read_jsonl(path, what="prompts"):
        prompt = row.get("prompt")
        if not isinstance(prompt, str) and not is_chat(prompt):
            raise AttnlensError(f"{where}: 'prompt' must be a string or a chat (a list of role/content dicts)")
        records.append(row)
    if not records:
        raise AttnlensError(f"{str(path)!r} has no prompts")
    return records


def prompt_hash(prompt: Any) -> str:
    """The SHA-256 of a prompt (text or chat) in a canonical JSON form."""
    text = json.dumps(prompt, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def prompt_keys(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """Each record's key (its id, else ``#position``); repeated ids are an error naming them."""
    keys: list[str] = []
    first: dict[str, int] = {}
    repeated = []
    for n, record in enumerate(records):
        if not isinstance(record, Mapping):
            raise AttnlensError(f"prompt {n} must be a dict {{'prompt': ..., 'id': ...}}, got {type(record).__name__}")
        if "prompt" not in record:
            raise AttnlensError(f"prompt {n} has no 'prompt'")
        ident = record.get("id")
        if ident is not None and (isinstance(ident, bool) or not isinstance(ident, (str, int))):
            raise AttnlensError(f"prompt {n}: 'id' must be a string or an integer, got {ident!r}")
        key = f"#{n}" if ident is None else str(ident)
        if key in first:
            repeated.append(f"{key!r} (prompts {first[key]} and {n})")
        else:
            first[key] = n
        keys.append(key)
    if repeated:
        raise AttnlensError(
            f"repeated prompt ids: {', '.join(repeated[:10])}"
            + (f" and {len(repeated) - 10} more" if len(repeated) > 10 else "")
            + "; every prompt needs its own id (results are keyed by it)"
        )
    return keys


def _plain(value: Any) -> Any:
    """A setting as JSON (tuples as lists, anything else by its repr)."""
    return json.loads(json.dumps(value, default=repr, sort_keys=True))


def batch_identity(pipe: Any, call_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The settings of a batch that change its outputs."""
    call = dict(_CALL_DEFAULTS)
    call.update(call_kwargs)
    settings = {
        "delta_mid": pipe.delta_mid,
        "layers": pipe.layers,
        "chat": pipe.chat,
        "return_full_text": pipe.return_full_text,
        "convention": pipe.convention,
    }
    steer = call.pop("steer", None) or getattr(pipe, "steer", None)
    if steer is not None:  # a run without one keeps the identity it always had
        settings["steer"] = steer
    for name in list(settings):  # the call's value wins, as in the pipeline
        if name in call and call[name] is not None:
            settings[name] = call.pop(name)
    cfg = getattr(pipe.model, "cfg", None)
    model = {
        "name": getattr(cfg, "model_name", None),
        "n_layers": getattr(cfg, "n_layers", None),
        "d_model": getattr(cfg, "d_model", None),
        "dtype": str(getattr(cfg, "dtype", "")) or None,
    }
    return _plain({"kind": "attnlens batch", "model": model, **settings, "call": dict(sorted(call.items()))})


def run_file(out: Path) -> Path:
    return out.with_name(out.name + RUN_SUFFIX)


def check_identity(out: Path, identity: Mapping[str, Any], *, has_rows: bool, write: bool) -> None:
    """Refuse a results file made with other settings; record the settings of a new one."""
    record = RunRecord(run_file(out), what=f"the results in {str(out)!r}",
                       advice="restore it, or write the results to another file")
    previous = record.read()
    if previous is not None:
        diff = changed(previous, identity)
        if diff:
            detail = "; ".join(f"{k}: {previous.get(k)!r} there, {identity.get(k)!r} now" for k in diff)
            raise AttnlensError(
                f"{str(out)!r} holds results made with other settings ({detail}); write to another file, "
                f"or delete {str(out)!r} and {str(record.path)!r} to start afresh"
            )
        return
    if has_rows:
        raise AttnlensError(
            f"{str(out)!r} already holds results but no {record.path.name} saying what settings made them; "
            "write to another file, or delete it to start afresh"
        )
    if write:
        record.write(identity, sort_keys=True)


#: the results file's rows (:class:`~attnlens.core.resumable.RowFile` settings): every line a JSON object;
#: a damaged line, a cut-off last one included, is an error and nothing is deleted from the file
ROW_SETTINGS: dict[str, Any] = {
    "damaged": "error",
    "advice": "Fix or remove those lines (their prompts then run again); nothing was changed in the file",
}


def check_result_lines(path: Path) -> int:
    """The number of rows in a results file; a line that is not a JSON object is an error naming it."""
    return len(RowFile(path, **ROW_SETTINGS).read())


def _row_key(row: Mapping[str, Any]) -> str | None:
    key = row.get("key")
    if isinstance(key, str):
        return key
    return None


def run_prompts(
    pipe: Any,
    prompts: Sequence[Mapping[str, Any]] | str | os.PathLike,
    out: str | os.PathLike,
    *,
    batch_size: int | None = None,
    **call_kwargs: Any,
) -> list[dict[str, Any]]:
    """Run the pipeline on a batch of prompts as a resumable sweep; results go to the JSON Lines file ``out``.

    ``prompts`` are ``{"prompt": ..., "id": ...}`` records (or the path of a JSONL file of
    them). Pending prompts run in blocks of ``batch_size``; each block's rows (one per prompt:
    ``index``, ``id``, ``key``, ``prompt_sha256``, ``generated_text``, ``spans``, ``prompt``,
    ``backend``, ``influence`` with its tensor as nested lists) are appended as the block
    finishes. What a rerun skips, redoes and refuses is in this module's docstring. Under
    ``torchrun`` the workers split the blocks, write part files next to ``out`` and rank 0
    merges them in prompt order; every worker returns every row. ``call_kwargs`` go to the
    pipeline call (``max_new_tokens``, ...).
    """
    from ..runtime.distributed import worker_group

    records, keys, size, path = _checked_batch(pipe, prompts, out, batch_size)
    hashes = [prompt_hash(r["prompt"]) for r in records]
    identity = batch_identity(pipe, call_kwargs)
    current = dict(zip(keys, hashes))
    with worker_group() as workers, ExitStack() as hold:
        if workers.is_main:  # one run per results file: a second one would interleave its rows
            path.parent.mkdir(parents=True, exist_ok=True)
            hold.enter_context(exclusive(path.parent, lock_file=f".{path.name}.lock"))
        store = ShardedRows(path, workers, **ROW_SETTINGS)
        done = _resume(store, identity, current)
        pending = [i for i, k in enumerate(keys) if k not in done]
        blocks = [pending[s:s + size] for s in range(0, len(pending), size)]
        mine = workers.mine(blocks)
        logger.info("batch: worker %d/%d runs %d of %d pending prompt(s); %d already in %s", workers.rank,
                    workers.world_size, sum(map(len, mine)), len(pending), len(records) - len(pending), path)
        with store.writer() as write:
            for block in mine:
                results = pipe([records[i]["prompt"] for i in block], batch_size=size, **call_kwargs)
                write([{"index": i, "id": records[i].get("id"), "key": keys[i], "prompt_sha256": hashes[i],
                        **_jsonable(result[0])} for i, result in zip(block, results)])
        merged = _merge(store, keys, current)
    return [r for r in merged if _row_key(r) in current]


def _checked_batch(pipe: Any, prompts: Sequence[Mapping[str, Any]] | str | os.PathLike, out: str | os.PathLike,
                   batch_size: int | None) -> tuple[list[Mapping[str, Any]], list[str], int, Path]:
    """The prompts (read from their file), their keys, the batch size and the results file, all checked."""
    records = read_prompts(prompts) if isinstance(prompts, (str, os.PathLike)) else list(prompts)
    if not records:
        raise AttnlensError("no prompts given")
    keys = prompt_keys(records)
    for n, record in enumerate(records):
        prompt = record["prompt"]
        if not isinstance(prompt, str) and not is_chat(prompt):
            raise AttnlensError(f"prompt {n} ({keys[n]}): 'prompt' must be a string or a chat")
    size = batch_size or pipe.batch_size
    if not is_int(size) or size < 1:
        raise AttnlensError(f"batch_size must be a positive integer, got {size!r}")
    path = Path(out).expanduser()
    if path.is_dir():
        raise AttnlensError(f"output {str(path)!r} is a directory; give a file name (results.jsonl)")
    return records, keys, size, path


def _resume(store: ShardedRows, identity: Mapping[str, Any], current: Mapping[str, str]) -> set[str | None]:
    """Check every results file on disk and the settings they were made with (rank 0 records those of a new
    one); the keys of the prompts whose rows are on disk for the same prompt."""
    workers = store.workers
    on_disk = sum(check_result_lines(p) for p in [store.merged, *store.part_files()])
    # every worker checks (and fails alike) before rank 0 records the settings of a new file
    check_identity(store.merged, identity, has_rows=on_disk > 0, write=False)
    workers.barrier()
    if workers.is_main:
        check_identity(store.merged, identity, has_rows=on_disk > 0, write=True)
    done = {_row_key(r) for r in store.read_all() if current.get(_row_key(r) or "") == r.get("prompt_sha256")}
    workers.barrier()  # every worker has read the same rows before any writes
    return done


def _merge(store: ShardedRows, keys: Sequence[str], current: Mapping[str, str]) -> list[dict[str, Any]]:
    """Every worker's rows in prompt order, a stale row (of an edited prompt) replaced; rows of prompts no
    longer in the input are kept, after the others."""
    position = {k: i for i, k in enumerate(keys)}

    def fix(row: dict[str, Any]) -> dict[str, Any] | None:
        key = _row_key(row)
        if key in current:
            if row.get("prompt_sha256") != current[key]:
                return None  # made from an older version of the prompt: replaced by the new row
            return {**row, "index": position[key]}
        return row

    def order(row: dict[str, Any]) -> tuple[int, int]:
        key = _row_key(row)
        return (0, position[key]) if key in position else (1, 0)

    return store.merge(key=lambda r: (_row_key(r), r.get("prompt_sha256")), order=order, fix=fix)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


__all__ = ["batch_identity", "prompt_hash", "prompt_keys", "read_prompts", "run_prompts"]
