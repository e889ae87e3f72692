"""A terminal run as a scripted Spine (`fixtures.hostile`): run, DAG and task tree routes."""

from __future__ import annotations

from typing import Any

from spine_pipeline_tests.fixtures.hostile import Reply, envelope


def run_doc(run_id: str, **extra: Any) -> dict[str, Any]:
    """A completed run's `data`, with canvas `c-<run_id>` (members in `extra` win)."""
    return {
        "run_id": run_id,
        "status": "completed",
        "canvas_id": f"c-{run_id}",
        "duration_ms": 1500,
        "result": {"final_output": f"output of {run_id}", "artifacts": []},
        "metadata": {"credits_consumed": 3, "template_used": "report"},
        **extra,
    }


def spine_routes(run_id: str, **extra: Any) -> dict[str, Reply]:
    """The three replies the archiver asks for one run, all well-formed."""
    canvas = f"c-{run_id}"
    return {
        f"/v1/run/{run_id}": envelope(run_doc(run_id, **extra)),
        f"/v1/canvas/{canvas}/dag": envelope({"canvas_id": canvas, "nodes": [], "edges": []}),
        f"/v1/canvas/{canvas}/tasks": envelope(
            {"canvas_id": canvas, "completed": [], "not_completed": []}
        ),
    }
