"""Turn one terminal Spine run into the archive's Arrow tables, byte-exactly.

Row JSON (`raw_json`, `sources_json`, ...) is *sliced from the text Spine sent*, never
re-serialised: `parse_json` records where every value sits, and a row's text is its span minus
the members deliberately left out. What is left out, and why:

* every `download_url` member, at any depth: pre-signed URLs carry a signature and expire;
  archiving them would store a credential that is useless later anyway;
* string `url` members of blocks that are not external links (artifact node urls are
  pre-signed too); the `url` column keeps them without query string, fragment and userinfo;
* arrays that became rows of their own (DAG `nodes`/`edges`, task `completed`/`not_completed`,
  a task's `children`), so deep trees cost linear space and no row repeats another.

Hostile input never raises: wrong types become nulls (the raw stays in `raw_json`), odd shapes
are flattened best-effort, invalid JSON is kept verbatim and reported in `runs.fetch_errors`,
and trees of any depth are walked with an explicit stack.

Big strings (documents with `RawDoc.bigs`) never become Python strs on the way to Arrow: a
row whose text contains one is built as UTF-8 bytes (a zero-copy view of the response body
when nothing was cut out of it), a big `content` is decoded to bytes chunkwise and hashed from
them, and such values go into their own zero-copy Arrow chunks. Small documents, the common
case, take the ordinary str path (the `big` branches are never entered for them).

The modules, one job each:

* `values`: payload values to typed column values (wrong types and int64 overflow are null);
* `urls`: the signed-URL rules (`strip_url`, redaction of text that is not JSON);
* `slicing`: row JSON sliced from the source text, members cut out (`SourceDoc`);
* `columns`: Arrow arrays from the collected rows, zero-copy for big values;
* `dag`, `tasks`, `runs`: the per-table mappers (blocks, block_sources and edges; tasks;
  runs, run_errors and artifacts);
* `batch`: a run or a batch to the seven tables (`flatten_run`, `flatten_batch_by_dt`).
"""

from spine_pipeline.archive.flatten.batch import (
    flatten_batch,
    flatten_batch_by_dt,
    flatten_run,
    partition_dt,
)
from spine_pipeline.archive.flatten.runs import CANVAS_URL
from spine_pipeline.archive.flatten.urls import EXTERNAL_URL_BLOCK_TYPES, strip_url

__all__ = [
    "CANVAS_URL",
    "EXTERNAL_URL_BLOCK_TYPES",
    "flatten_batch",
    "flatten_batch_by_dt",
    "flatten_run",
    "partition_dt",
    "strip_url",
]
