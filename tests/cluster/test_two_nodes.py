"""--ray on a two-node `ray.cluster_utils.Cluster` (the slow tier): a head that runs only the
driver (no CPUs) and two worker nodes. The folder equals the plain run's; a worker node removed
while its worker holds a batch still gives every line once, in input order (the batch runs again
on the other node).

The removal is ordered, not timed: the worker that reaches the gated batch writes its node's id
and waits for the gate; the test removes that node, then opens the gate for the retried batch."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from support.ray_runs import FLAGS, analyses, same, write_lines

ray = pytest.importorskip("ray")

from ray.cluster_utils import Cluster as RayNodes  # noqa: E402
from vrollout.cli.analyze import analyze_lines  # noqa: E402
from vrollout.cli.commands import main  # noqa: E402
from vrollout.cluster.ray import Cluster, Keep, Task, cluster_lines  # noqa: E402
from vrollout.config import Settings  # noqa: E402
from vrollout.inputs.paths import Sources  # noqa: E402

pytestmark = pytest.mark.slow
STORE = 120 * 1024 * 1024  # each node's object store: small, the machine is shared


@pytest.fixture(scope="module")
def two_nodes(request):
    import ray.cloudpickle

    if ray.is_initialized():
        ray.shutdown()
    nodes = RayNodes(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "object_store_memory": STORE, "include_dashboard": False},
    )
    workers = [nodes.add_node(num_cpus=2, object_store_memory=STORE) for _ in range(2)]
    ray.init(address=nodes.address, log_to_driver=False, logging_level="WARNING")
    ray.cloudpickle.register_pickle_by_value(request.module)  # the gated task, by value
    yield nodes, workers
    ray.shutdown()
    nodes.shutdown()


def test_two_nodes_write_the_folder_the_plain_run_writes(two_nodes, tiny_folder, tmp_path, capsys):
    source = write_lines(tmp_path / "runs.jsonl", 20)
    base = ["analyze", str(source), "--student", str(tiny_folder), *FLAGS]
    assert main([*base, "--out", str(tmp_path / "plain")]) == 1
    ray_run = ["--ray", "auto", "--workers", "2", "--batch-size", "3"]
    assert main([*base, "--out", str(tmp_path / "ray"), *ray_run]) == 1
    capsys.readouterr()
    got, want = analyses(tmp_path / "ray" / "analyses.jsonl"), analyses(tmp_path / "plain" / "analyses.jsonl")
    assert (
        [a["job"]["line"] for a in got] == [a["job"]["line"] for a in want] == [*range(1, 11), *range(12, 22)]
    )
    for a, b in zip(got, want, strict=True):
        same(a, b)
    for name in ("headline.md", "headline.csv"):
        assert (tmp_path / "ray" / name).read_text() == (tmp_path / "plain" / name).read_text()


def held_at_the_gate(analyzer, rows, unknown, params):
    """`analyze_lines`; the batch holding line `params["from"]` first says on which node it runs,
    then waits for the gate (its node is removed meanwhile; the batch's retry finds it open)."""
    gate, node = Path(params["gate"]), Path(params["node"])
    if any(n == params["from"] for n, _ in rows) and not gate.exists():
        node.write_text(ray.get_runtime_context().get_node_id())
        deadline = time.monotonic() + 300
        while not gate.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    return analyze_lines(analyzer, rows, unknown, params)


def test_a_node_removed_mid_batch_still_gives_every_line_once(two_nodes, tiny_folder, tmp_path):
    nodes, workers = two_nodes
    source = write_lines(tmp_path / "runs.jsonl", 40, bad_at=5)  # the bad line is line 6
    settings = Settings(
        student_model=str(tiny_folder), device="cpu", dtype="float32", database=tmp_path / "db"
    )
    gate, node = tmp_path / "gate", tmp_path / "node"
    params = {"options": {}, "privileged": None, "job": {"id": None}, "siblings": None,
              "gate": str(gate), "node": str(node), "from": 25}  # fmt: skip
    removed: list[str] = []

    def remove_the_node_then_open_the_gate() -> None:
        deadline = time.monotonic() + 300
        while not node.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)  # the file is whole (a few bytes, written at once)
        held = node.read_text()
        for worker in workers:
            if worker.node_id == held:
                nodes.remove_node(worker)
                removed.append(held)
        gate.write_text("open")

    remover = threading.Thread(target=remove_the_node_then_open_the_gate, daemon=True)
    remover.start()
    unknown: dict[str, list[int]] = {}
    lines = cluster_lines(
        Sources(str(source), settings), Task(held_at_the_gate, params), settings,
        Cluster("auto", workers=1, batch_size=4), keep=Keep(), unknown=unknown,
    )  # fmt: skip
    found = list(lines)
    remover.join(timeout=10)
    assert removed and removed[0] not in {n["NodeID"] for n in ray.nodes() if n["Alive"]}  # it is gone
    assert [n for n, _ in found] == list(range(1, 42))  # every line once, in order
    assert [n for n, r in found if not isinstance(r, dict)] == [6]  # the bad line, once
    assert [r["job"]["line"] for n, r in found if isinstance(r, dict)] == [n for n in range(1, 42) if n != 6]
    assert unknown == {"tag": [n for n in range(1, 42) if n != 6]}
