"""``kiln bulkload upload|download``: a CSV into a kind and a kind into a CSV (see :mod:`deploy.bulkload`)."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import os
import pathlib
import sys
import time
from collections.abc import Callable
from typing import Any

import grpc

from deploy import bulkload
from deploy.bulkload import Mapping, RowError, State
from deploy.cliutil import (
    EXIT_FAILED, EXIT_OK, EXIT_USAGE, Output, add_connection, app_metadata, fail, guarded,
    missing_credentials)
from kiln.pb.datastore.v1 import datastore_pb2 as pb
from kiln.pb.datastore.v1 import datastore_pb2_grpc



@dataclasses.dataclass
class Result:
    """What one run did."""

    state: State
    rows: int  # rows this run handled (loaded + rejected)
    seconds: float
    resumed_at: int


def state_path(csv_path: pathlib.Path, kind: str) -> pathlib.Path:
    return csv_path.with_name(f"{csv_path.name}.kiln-bulkload-{kind}")


def rejects_default(csv_path: pathlib.Path, kind: str) -> pathlib.Path:
    return csv_path.with_name(f"{csv_path.name}.rejects-{kind}.csv")


def upload(stub: Any, meta: Any, csv_path: pathlib.Path, mapping: Mapping, app_id: str, *, namespace: str = "",
           batch_size: int = 100, rejects_path: pathlib.Path | None = None, restart: bool = False,
           progress: Callable[[int], None] | None = None) -> Result:
    """Load ``csv_path`` (see :mod:`deploy.bulkload`); raises grpc.RpcError when the datastore fails (re-run to
    resume)."""
    if not 1 <= batch_size <= bulkload.MAX_BATCH:
        raise ValueError(f"--batch-size: 1 to {bulkload.MAX_BATCH}")
    source = bulkload.fingerprint(csv_path, mapping, app_id, namespace)
    spath = state_path(csv_path, mapping.kind)
    state = None if restart else State.read(spath, source)
    if state is None:
        state = State(source)
    resumed_at = state.done_rows
    rejects_path = rejects_path or rejects_default(csv_path, mapping.kind)
    started, handled = time.perf_counter(), 0
    if state.finished:
        return Result(state, 0, 0.0, resumed_at)
    fresh = resumed_at == 0
    header = None
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        header = next(csv.reader(f), None)
    with open(rejects_path, "w" if fresh else "a", newline="", encoding="utf-8") as rf:
        rejects = csv.writer(rf)
        if fresh:
            rejects.writerow(["row", "error", *(header or [])])
        batch: list[pb.Entity] = []
        batch_rejects: list[list[str]] = []
        last = state.done_rows

        def resuming() -> bool:
            """True while re-doing the batch a crash interrupted (it must end where it ended then)."""
            return state.pending_start >= 0 and state.pending_start == state.done_rows

        def flush() -> None:
            nonlocal batch, batch_rejects, handled
            incomplete = [e for e in batch if not e.key.path[-1].WhichOneof("id_type")]
            if resuming() and state.pending_end == last and len(state.pending_ids) == len(incomplete):
                ids = state.pending_ids  # this batch was interrupted: write it again with the same keys
            elif incomplete:
                key = pb.Key(partition_id=incomplete[0].key.partition_id)
                key.path.add(kind=mapping.kind)
                got = stub.AllocateIds(pb.AllocateIdsRequest(key=key, size=len(incomplete)), metadata=meta)
                ids = list(range(got.start, got.end + 1))
            else:
                ids = []
            state.pending_start, state.pending_end, state.pending_ids = state.done_rows, last, ids
            state.write(spath)  # recorded before the write, so a crash during Put reuses these keys
            for entity, ident in zip(incomplete, ids):
                entity.key.path[-1].id = ident
            if batch:
                stub.Put(pb.PutRequest(entities=batch), metadata=meta)
            rejects.writerows(batch_rejects)
            rf.flush()
            state.loaded += len(batch)
            state.rejected += len(batch_rejects)
            handled += len(batch) + len(batch_rejects)
            state.done_rows = last
            state.pending_start, state.pending_end, state.pending_ids = -1, -1, []
            state.write(spath)
            if progress:
                progress(len(batch) + len(batch_rejects))
            batch, batch_rejects = [], []

        for number, row in bulkload.rows(csv_path, state.done_rows):
            try:
                batch.append(bulkload.to_entity(mapping, row, app_id, namespace))
            except RowError as exc:
                batch_rejects.append([str(number), str(exc), *[v or "" for k, v in row.items() if k is not None]])
            last = number
            if resuming():
                if number == state.pending_end:
                    flush()
            elif len(batch) >= batch_size or len(batch_rejects) >= batch_size:
                flush()
        if batch or batch_rejects:
            flush()
    state.finished = True
    state.write(spath)
    return Result(state, handled, time.perf_counter() - started, resumed_at)


def download(stub: Any, meta: Any, csv_path: pathlib.Path, mapping: Mapping, app_id: str, *, namespace: str = "",
             batch_size: int = 500, progress: Callable[[int], None] | None = None) -> int:
    """Write every entity of the kind to ``csv_path`` (the mapping's columns); returns the count."""
    query = pb.Query(kind=mapping.kind)
    count = 0
    tmp = csv_path.with_name(f".{csv_path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(mapping.headers())
        while True:
            req = pb.RunQueryRequest(query=query, batch_size=batch_size)
            req.partition_id.app_id, req.partition_id.namespace = app_id, namespace
            batch = stub.RunQuery(req, metadata=meta).batch
            for result in batch.entity_results:
                writer.writerow(bulkload.to_row(mapping, result.entity))
            count += len(batch.entity_results)
            if progress:
                progress(len(batch.entity_results))
            if batch.more_results != pb.QueryResultBatch.MORE_RESULTS_TYPE_NOT_FINISHED:
                break
            query.start_cursor = batch.end_cursor
    tmp.replace(csv_path)
    return count


class _Bar:
    def __init__(self, enabled: bool, total: int | None, unit: str) -> None:
        self._bar: Any = None
        if enabled:
            from tqdm import tqdm
            self._bar = tqdm(total=total, unit=unit, file=sys.stderr, leave=False)

    def __call__(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def bulkload_command(args: argparse.Namespace) -> int:
    command = f"bulkload {args.action}"
    refused = missing_credentials(command, args)
    if refused is not None:
        return refused
    out = Output(as_json=args.json)
    csv_path = pathlib.Path(args.csv)

    def body() -> int:
        mapping = bulkload.load_mapping(pathlib.Path(args.mapping), args.kind or "")
        if args.action == "upload" and not csv_path.is_file():
            return fail(command, f"{csv_path}: no such file", EXIT_USAGE)
        tty = sys.stderr.isatty() and not args.json
        with grpc.insecure_channel(args.control_plane) as channel:
            stub = datastore_pb2_grpc.DatastoreServiceStub(channel)
            if args.action == "download":
                bar = _Bar(tty, None, "entities")
                started = time.perf_counter()
                try:
                    count = download(stub, app_metadata(args), csv_path, mapping, args.app, namespace=args.namespace,
                                     progress=bar)
                finally:
                    bar.close()
                seconds = time.perf_counter() - started
                if args.json:
                    out.json({"kind": mapping.kind, "file": str(csv_path), "rows": count, "seconds": seconds})
                else:
                    out.line(f"wrote {count:,} {mapping.kind} entities to {csv_path} ({count / max(seconds, 1e-9):,.0f}"
                             " rows/s)")
                return EXIT_OK
            total = None
            if tty:
                with open(csv_path, encoding="utf-8-sig") as f:
                    total = sum(1 for _ in f) - 1
            bar = _Bar(tty, total, "rows")
            rejects = pathlib.Path(args.rejects) if args.rejects else None
            try:
                result = upload(stub, app_metadata(args), csv_path, mapping, args.app, namespace=args.namespace,
                                batch_size=args.batch_size, rejects_path=rejects, restart=args.restart, progress=bar)
            except grpc.RpcError as exc:
                bar.close()
                done = State.read(state_path(csv_path, mapping.kind), bulkload.fingerprint(
                    csv_path, mapping, args.app, args.namespace))
                at = f" after row {done.done_rows:,}" if done else ""
                return fail(command, f"the datastore failed{at}: {exc.details() if hasattr(exc, 'details') else exc}"
                                     " — run the same command again to resume", EXIT_FAILED)
            finally:
                bar.close()
        s = result.state
        rate = result.rows / result.seconds if result.seconds > 0 else 0.0
        if args.json:
            out.json({"kind": mapping.kind, "loaded": s.loaded, "rejected": s.rejected, "rows_this_run": result.rows,
                      "resumed_at_row": result.resumed_at, "seconds": result.seconds, "rows_per_second": rate})
        elif result.rows == 0 and result.resumed_at:
            out.line(f"{csv_path} was already loaded into {mapping.kind} ({s.loaded:,} rows); --restart loads it again")
        else:
            resumed = f", resumed after row {result.resumed_at:,}" if result.resumed_at else ""
            out.line(f"loaded {s.loaded:,} rows into {mapping.kind}, rejected {s.rejected:,}{resumed} "
                     f"({rate:,.0f} rows/s)")
            if s.rejected:
                out.line(f"  rejected rows and why: {rejects or rejects_default(csv_path, mapping.kind)}")
        return EXIT_OK
    return guarded(command, lambda: args.control_plane, body)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``bulkload`` to the ``kiln`` parser."""
    p = sub.add_parser("bulkload", help="load a CSV into a kind, or a kind into a CSV",
                       description="Bulk load with a YAML or Python mapping of columns to property types "
                                   "(see deploy/bulkload.py). Uploads are batched and resume where they stopped.")
    bsub = p.add_subparsers(dest="action", required=True)
    up = bsub.add_parser("upload", help="CSV rows into entities (resumes an interrupted load)")
    up.add_argument("--batch-size", type=int, default=100, help="entities per Put (1-500, default 100)")
    up.add_argument("--rejects", help="where rejected rows go, with the reason (default: CSV.rejects-KIND.csv)")
    up.add_argument("--restart", action="store_true", help="ignore earlier progress and load the whole file")
    down = bsub.add_parser("download", help="every entity of the kind into a CSV")
    for parser in (up, down):
        parser.add_argument("csv", metavar="CSV")
        parser.add_argument("--mapping", required=True, help="YAML (.yaml) or Python (.py) mapping of columns")
        parser.add_argument("--kind", help="the kind (default: the mapping's)")
        parser.add_argument("--namespace", default="", help="the namespace (default: the empty one)")
        add_connection(parser)
        parser.set_defaults(func=bulkload_command)
